"""Rationale stage: the judge model explains, in a sentence or two, why chosen beat rejected.

Reads `pairs` (no rationale) and fills its `rationale` column; decoding is greedy so a rerun
writes the same text. The template id (judges/templates.py) and the judge model are in the
stage fingerprint and the manifest. With `rationale.enabled: false` the column stays null.
On judge.backend 'openai' the judge endpoint writes them: requests go through
RUN/requests/rationale.jsonl (a resumed stage re-sends nothing answered) and the stage's ledger
(tokens per part, the budget: pipeline/core/accounting.py).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from judges.templates import PAIR_RATIONALE_V2, RationaleTemplate, special_strings
from pipeline.backends import factory
from pipeline.backends.base import GeneratorBackend, Request, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.backends.openai_backend import served_label
from pipeline.config import RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.runner import Chunked, Read, Stage, StageRun
from pipeline.stages.judge import backend_field, batch_mode, model_revision

VERSION = "3"
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


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output."""
    return {"model": cfg.judge_model, **backend_field(cfg), **cfg.rationale.fingerprinted()}


def stage_fingerprint(cfg: RunConfig, pairs_fp: str) -> str:
    revision = model_revision(cfg.judge_model, cfg.judge.backend, "judge.model")
    return fingerprint("rationale", VERSION, TEMPLATE.id, fields(cfg), pairs_fp, revision)


def _skip(run: StageRun):
    pairs = run.read("ches")
    if not run.cfg.rationale.enabled or pairs.num_rows == 0:
        return pairs, {"seconds": 0.0, "template": None, "funnel": []}
    return None


def _make_work(run: StageRun):  # the judge model loads only when a chunk is left to do
    cfg = run.cfg
    backend = factory.judge_generator(cfg, cfg.rationale.batch_size, run=run)
    specials = special_strings(backend.tokenizer)
    return lambda subset: (
        add_rationales(
            subset,
            backend,
            max_new_tokens=cfg.rationale.max_new_tokens,
            max_prompt_tokens=cfg.judge.max_input_tokens,
            specials=specials,
            progress=run.pbar.advance,
        ),
        {},
    )


def _one_chunk(cfg: RunConfig) -> bool:  # an endpoint in batch mode: one batch file for the stage
    return cfg.judge.backend == "openai" and batch_mode(cfg)


def _summarise(run: StageRun, table: pa.Table, extras: list[dict]):
    table = table.take(
        pc.sort_indices(table, [("prompt_id", "ascending"), ("chosen_id", "ascending"), ("rejected_id", "ascending")])
    )
    missing = table.column("rationale").null_count
    run.log(f"rationale: {table.num_rows - missing} of {table.num_rows} pairs have a rationale")
    cfg = run.cfg
    label = served_label(cfg.judge_model) if cfg.judge.backend == "openai" else resolve(cfg.judge_model).label
    return table, {
        "template": TEMPLATE.id,
        "model": label,
        "missing": missing,
        "funnel": [],
    }


STAGE = Stage(
    name="rationale",
    reads=(Read("ches", "pairs", ("prompt_id", "prompt", "chosen", "rejected", "rationale")),),
    writes="pairs",
    after=("ches",),
    fields=fields,
    fingerprint=stage_fingerprint,
    chunked=Chunked(
        rows="ches",
        make_work=_make_work,
        summarise=_summarise,
        unit="pair",
        one_chunk=_one_chunk,
        skip=_skip,
        before=factory.opens_request_log(lambda cfg: cfg.judge.backend == "openai"),
    ),
    shardable=True,
)
run = STAGE.run
