"""Rationale stage: the judge model explains, in a sentence or two, why chosen beat rejected.

Reads `pairs` (no rationale) and fills its `rationale` column; decoding is greedy so a rerun
writes the same text. The template id (judges/templates.py) and the judge model are in the
stage fingerprint and the manifest. With `rationale.enabled: false` the column stays null.
On judge.backend 'openai' the judge endpoint writes them: requests go through
RUN/requests/rationale.jsonl (a resumed stage re-sends nothing answered) and the stage's ledger
(tokens per part, the budget: pipeline/accounting.py).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from judges.templates import PAIR_RATIONALE_V2, RationaleTemplate, special_strings
from pipeline import accounting, schemas
from pipeline.backends.base import GeneratorBackend, Request, SamplingParams, Skipped
from pipeline.backends.openai_backend import served_label
from pipeline.config import RunConfig, fingerprint
from pipeline.judge import batch_mode, judge_generator, model_revision
from pipeline.models import resolve
from pipeline.progress import bar
from pipeline.request_log import RequestLog
from pipeline.store import StageStore, done_rows, run_in_parts

VERSION = "3"
READS = ("pairs.prompt", "pairs.chosen", "pairs.rejected")
WRITES = ("pairs.rationale",)
TEMPLATE: RationaleTemplate = PAIR_RATIONALE_V2


def add_rationales(pairs: pa.Table, backend: GeneratorBackend, *, max_new_tokens: int, max_prompt_tokens: int,
                   specials: tuple[str, ...] = (), progress=None) -> pa.Table:
    """Pure core: the same pairs with `rationale` filled where it is null (a pair source such as
    self-critique brings its own); null stays where the input was too long.
    `specials` are the judge tokenizer's special-token strings, neutralised in untrusted text."""
    texts = pairs.column("rationale").to_pylist()
    todo = [i for i, t in enumerate(texts) if t is None]
    cols = [pairs.column(c).to_pylist() for c in ("prompt", "chosen", "rejected")]
    requests = [
        Request(TEMPLATE.messages(cols[0][i], cols[1][i][0]["content"], cols[2][i][0]["content"], specials), (0,))
        for i in todo
    ]
    results = backend.generate(
        requests,
        sampling=SamplingParams(0.0, 1.0, max_new_tokens),
        max_prompt_tokens=max_prompt_tokens,
        progress=progress,
    )
    for i, r in zip(todo, results):
        texts[i] = None if isinstance(r, Skipped) or not r[0].text else f"{TEMPLATE.prefix} {r[0].text}"
    index = pairs.schema.get_field_index("rationale")
    return pairs.set_column(index, schemas.PAIRS.field("rationale"), pa.array(texts, pa.string()))


def stage_fingerprint(cfg: RunConfig, pairs_fp: str) -> str:
    revision = model_revision(cfg.judge_model, cfg.judge.backend, "judge.model")
    return fingerprint("rationale", VERSION, TEMPLATE.id, cfg.stage_fields("rationale"), pairs_fp, revision)


def run(run_dir, cfg: RunConfig, pairs_fp: str, *, log=print, shard: tuple[int, int] | None = None) -> dict:
    """Run, resume or skip the stage; `shard=(i, k)`: only that shard's chunks, nothing committed."""
    store = StageStore(run_dir, "rationale", "pairs", stage_fingerprint(cfg, pairs_fp))
    if (meta := store.reuse(log)) is not None:
        return meta
    pairs = schemas.read_table(f"{run_dir}/tables/ches.parquet", "pairs")
    started = time.perf_counter()
    if not cfg.rationale.enabled or pairs.num_rows == 0:
        if shard is not None:
            return store.shard_meta(shard)
        return store.finish(pairs, {"seconds": 0.0, "template": None, "funnel": []})
    served = cfg.judge.backend == "openai"
    writer = None if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
    request_log = RequestLog(f"{run_dir}/requests/rationale.jsonl", writer=writer) if served else None
    ledger = accounting.Ledger.for_stage(run_dir, cfg, "rationale", store.part_infos())
    with bar(total=pairs.num_rows, initial=done_rows(store, pairs), desc="rationale", unit="pair") as pbar:

        def make_work():  # the judge model loads only when a chunk is left to do
            backend = judge_generator(
                cfg, cfg.rationale.batch_size, log=request_log, meter=ledger, batch_dir=f"{run_dir}/requests/batches"
            )
            return lambda subset: (
                add_rationales(
                    subset,
                    backend,
                    max_new_tokens=cfg.rationale.max_new_tokens,
                    max_prompt_tokens=cfg.judge.max_input_tokens,
                    specials=special_strings(backend.tokenizer),
                    progress=pbar.advance,
                ),
                {"usage": ledger.take()},
            )

        chunk = pairs.num_rows if served and batch_mode(cfg) else cfg.publish.chunk_prompts  # one batch file
        parts = run_in_parts(store, pairs, max(chunk, 1), make_work, log, shard=shard)
    if request_log is not None:
        request_log.close()
    if shard is not None:
        return store.shard_meta(shard)
    table = schemas.concat([t for t, _ in parts], "pairs")
    table = table.take(
        pc.sort_indices(table, [("prompt_id", "ascending"), ("chosen_id", "ascending"), ("rejected_id", "ascending")])
    )
    missing = table.column("rationale").null_count
    log(f"rationale: {table.num_rows - missing} of {table.num_rows} pairs have a rationale")
    label = served_label(cfg.judge_model) if served else resolve(cfg.judge_model).label
    return store.finish(
        table,
        {
            "seconds": round(time.perf_counter() - started, 2),
            "template": TEMPLATE.id,
            "model": label,
            "missing": missing,
            "funnel": [],
            "usage": accounting.merge(*(info.get("usage") for _, info in parts)),
        },
    )
