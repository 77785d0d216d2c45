"""CHES stage: likelihood-displacement scores and reference log-probs for every pair.

Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization" (ICLR 2025), Def. 2 and Eq. 6. With h_t the policy's last hidden state (the LM
head's input) at the position that predicts response token t (last prompt token through the
second-to-last response token):
    S+ = sum_t h_t(x, y+),   S- = sum_t h_t(x, y-)
    CHES    = <S+, S-> - ||S+||^2
    LN-CHES = <S+/|y+|, S-/|y-|> - ||S+/|y+|||^2
A high (LN-)CHES means chosen and rejected look alike to the model, and DPO on the pair tends to
push probability mass off the chosen response; the filter drops the highest-LN-CHES pairs.

The same forward passes give the reference log-probs sum_t log p(y_t | x, y_<t) of chosen and
rejected under the policy (`ref_chosen_logp`, `ref_rejected_logp`), so the trainer never has to
run a reference model. Token ids come from pipeline/core/encoding.py, the trainer's own rule.

Batching: sequences are sorted by length and padded; positions come from the attention mask and
padded positions are zeroed with masked_fill (not multiplied, as a masked row may hold NaN), so
padding side and batch composition do not change a score. The LM head runs only on response
positions, in chunks, so no sequence x vocab tensor is ever materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.backends.model_ref import resolve
from pipeline.config import CHESConfig, RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.encoding import encode_pair
from pipeline.core.funnel import step
from pipeline.core.runner import Chunked, Read, Stage, StageRun
from pipeline.errors import BackendError

VERSION = "2"


@dataclass(frozen=True)
class SequenceStats:
    hidden_sum: torch.Tensor  # S, float64, shape (d,)
    n_tokens: int  # |y|
    logp: float  # sum of response-token log-probs


@torch.inference_mode()
def sequence_stats(
    model,
    sequences: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 8,
    padding_side: str = "right",
    logit_chunk: int = 1024,
    pad_id: int = 0,
    progress=None,
) -> list[SequenceStats]:
    """Per (prompt_ids, response_ids): hidden-state sum over the predicting positions and log-prob."""
    device = model.device
    head = model.get_output_embeddings()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    out: list[SequenceStats | None] = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = [sequences[i][0] + sequences[i][1] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        sel = torch.zeros((len(rows), width), dtype=torch.bool)  # positions that predict a response token
        for b, (i, row) in enumerate(zip(idx, rows)):
            off = width - len(row) if padding_side == "left" else 0
            ids[b, off : off + len(row)] = torch.tensor(row)
            mask[b, off : off + len(row)] = 1
            p, n = len(sequences[i][0]), len(sequences[i][1])
            sel[b, off + p - 1 : off + p + n - 1] = True
        ids, mask, sel = ids.to(device), mask.to(device), sel.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        sums = hidden.float().masked_fill(~sel.unsqueeze(-1), 0.0).sum(dim=1).double()
        # log p of each response token from the hidden states at the selected positions only
        b_idx, t_idx = sel.nonzero(as_tuple=True)
        targets = ids[b_idx, t_idx + 1]
        token_logp = torch.empty(len(b_idx), dtype=torch.float32, device=device)
        for c in range(0, len(b_idx), logit_chunk):
            logits = head(hidden[b_idx[c : c + logit_chunk], t_idx[c : c + logit_chunk]]).float()
            token_logp[c : c + logit_chunk] = (
                torch.log_softmax(logits, dim=-1).gather(1, targets[c : c + logit_chunk].unsqueeze(1)).squeeze(1)
            )
        logps = torch.zeros(len(rows), dtype=torch.float64, device=device).index_add_(0, b_idx, token_logp.double())
        for b, i in enumerate(idx):
            out[i] = SequenceStats(sums[b].cpu(), len(sequences[i][1]), float(logps[b]))
        if progress is not None:
            progress(len(idx), int(mask.sum()))
    return out  # type: ignore[return-value]


def ches_from_stats(chosen: SequenceStats, rejected: SequenceStats) -> tuple[float, float]:
    """(CHES, LN-CHES) of one pair (Razin et al., Eq. 6 and its length-normalised form)."""
    sp, sm = chosen.hidden_sum, rejected.hidden_sum
    ches = float(sp @ sm - sp @ sp)
    np_, nm = sp / chosen.n_tokens, sm / rejected.n_tokens
    return ches, float(np_ @ nm - np_ @ np_)


def score_pairs(
    pairs: pa.Table, model, tokenizer, *, batch_size: int, padding_side: str = "right", progress=None
) -> pa.Table:
    """Pure core: the pairs table with ches, ln_ches, ref_chosen_logp, ref_rejected_logp filled."""
    rows = pairs.select(["prompt", "chosen", "rejected"]).to_pylist()
    # a candidate in several pairs (all_above_margin, top_k_vs_bottom_k) is one sequence: S and log p
    # depend on (prompt, response) only, so each distinct sequence goes through the model once
    index: dict[tuple, int] = {}
    seqs, slots = [], []
    for r in rows:
        for side in ("chosen", "rejected"):
            seq = encode_pair(tokenizer, r["prompt"], r[side][0]["content"])
            key = (tuple(seq[0]), tuple(seq[1]))
            if key not in index:
                index[key] = len(seqs)
                seqs.append(seq)
            slots.append(index[key])
    unique = sequence_stats(
        model,
        seqs,
        batch_size=batch_size,
        padding_side=padding_side,
        pad_id=tokenizer.pad_token_id or 0,
        progress=progress,
    )
    stats = [unique[i] for i in slots]
    if progress is not None and len(slots) > len(seqs):
        progress(len(slots) - len(seqs), 0)  # the shared sequences count as done for the stage's bar
    cols: dict[str, list] = {"ches": [], "ln_ches": [], "ref_chosen_logp": [], "ref_rejected_logp": []}
    for k in range(len(rows)):
        c, r = stats[2 * k], stats[2 * k + 1]
        ches, ln = ches_from_stats(c, r)
        for name, value in zip(cols, (ches, ln, c.logp, r.logp)):
            cols[name].append(value)
    for name, values in cols.items():
        pairs = pairs.set_column(
            pairs.schema.get_field_index(name), schemas.PAIRS.field(name), pa.array(values, pa.float64())
        )
    return pairs


def apply_filter(pairs: pa.Table, cfg: CHESConfig) -> tuple[pa.Table, dict]:
    """Drop the highest-LN-CHES pairs by quantile or threshold; return (kept, funnel entry)."""
    df = pl.from_arrow(pairs)
    cut = None
    if cfg.filter == "quantile" and df.height:
        cut = float(df["ln_ches"].quantile(cfg.quantile, interpolation="linear"))
    elif cfg.filter == "threshold":
        cut = cfg.threshold
    kept = df if cut is None else df.filter(pl.col("ln_ches") <= cut)
    how = {
        "quantile": f"LN-CHES above its {cfg.quantile} quantile ({cut:.6g})" if cut is not None else "",
        "threshold": f"LN-CHES above curate.ches.threshold={cut}",
        "none": "no CHES filter",
    }[cfg.filter]
    entry = {**step("ches", f"ches_{cfg.filter}", df.height, kept.height, how or "no pairs", unit="pairs"), "cut": cut}
    return kept.to_arrow().cast(schemas.PAIRS), entry


def scored_path(run_dir) -> Path:
    return Path(run_dir) / "tables" / "ches.scored.parquet"


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output."""
    return {"model": cfg.ches_model, **cfg.curate.ches.fingerprinted(exclude={"model"})}


def stage_fingerprint(cfg: RunConfig, pairs_fp: str) -> str:
    model = resolve(cfg.ches_model, field="curate.ches.model")
    return fingerprint("ches", VERSION, fields(cfg), pairs_fp, model.revision)


def _skip(run: StageRun):
    if not run.cfg.curate.ches.enabled:
        return run.read("pair"), {"seconds": 0.0, "model": None, "funnel": []}
    return None


def _make_work(run: StageRun):  # checkpointed by prompt, as generate/judge; the policy loads only if work is left
    from pipeline.backends.hf import load_causal_lm

    cfg = run.cfg
    model, tokenizer, _ = load_causal_lm(cfg.ches_model, cfg.generate.dtype, "curate.ches.model")
    dtype = str(model.dtype).removeprefix("torch.")  # the trainer reuses ref log-probs only at its own dtype
    return lambda subset: (
        score_pairs(subset, model, tokenizer, batch_size=cfg.curate.ches.batch_size, progress=run.pbar.advance),
        {"dtype": dtype},
    )


def _summarise(run: StageRun, scored: pa.Table, extras: list[dict]):
    dtypes = {info["dtype"] for info in extras if "dtype" in info}
    if len(dtypes) > 1:  # shards on unlike devices: the reference log-probs would not be comparable
        raise BackendError(
            f"curate.ches: parts were scored in several dtypes {sorted(dtypes)}; fix: set "
            "generate.dtype explicitly (float32 or bfloat16) and rerun with a fresh --out"
        )
    cfg = run.cfg
    scored = scored.take(
        pc.sort_indices(scored, [("prompt_id", "ascending"), ("chosen_id", "ascending"), ("rejected_id", "ascending")])
    )
    kept, entry = apply_filter(scored, cfg.curate.ches)
    # every scored pair, before the filter, for the card's CHES distribution (written before the meta commit)
    schemas.write_table(scored, scored_path(run.run_dir), "pairs")
    values = [v for v in scored.column("ln_ches").to_pylist() if not math.isnan(v)]
    run.log(f"ches: scored {scored.num_rows} pairs, kept {kept.num_rows} ({entry['reason']})")
    return kept, {
        "model": resolve(cfg.ches_model).label,
        "filter": cfg.curate.ches.filter,
        "dtype": next(iter(dtypes), None),
        "cut": entry.pop("cut"),
        "ln_ches_min": min(values, default=None),
        "ln_ches_max": max(values, default=None),
        "funnel": [entry],
    }


STAGE = Stage(
    name="ches",
    reads=(Read("pair", "pairs", ("prompt_id", "chosen_id", "rejected_id", "prompt", "chosen", "rejected")),),
    writes="pairs",
    after=("pair",),
    fields=fields,
    fingerprint=stage_fingerprint,
    chunked=Chunked(
        rows="pair", make_work=_make_work, summarise=_summarise, unit="seq", weight=lambda cfg: 2, skip=_skip
    ),
    shardable=True,
)
run = STAGE.run
