"""Reference log-probs for the trainer: from the shards when valid, else one cached pre-pass.

The training loop never runs a reference model. Before it starts, every pair gets
(ref_chosen_logp, ref_rejected_logp):
- from the shards, when the run's CHES stage computed them with the same model revision and
  dtype as training and the pair was not truncated (CHES scores full responses) and LD-DPO is off
  (LD-DPO weights tail tokens, so the reference must be weighted the same way);
- otherwise from a pre-pass with the policy at step 0 (or train.reference, a separate model), in
  eval mode and without gradients, through the very forward the trainer uses. The pre-pass result is
  cached beside the shards in `ref_logps/<key>.parquet`, keyed by the reference's revision, chat
  template, dtype, truncation limits, LD-DPO alpha and the data's fingerprint; a second `prefsynth train`
  on the same data reuses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch

from pipeline.config import fingerprint
from pipeline.core import schemas
from pipeline.train.data import DataSource, Example
from pipeline.train.logps import build_batch, forward_logps, ld_weights
from pipeline.train.parallel import reshard

ENCODING_VERSION = "2"  # bump when pipeline/core/encoding.py or the truncation rule changes


def cache_path(source: DataSource, *, model_label: str, template: str, dtype: str, max_prompt_tokens: int,
               max_length: int, ld_alpha: float | None) -> Path:
    template_hash = hashlib.sha256((template or "").encode()).hexdigest()[:12]
    key = fingerprint("ref-logps", ENCODING_VERSION, model_label, template_hash, dtype, max_prompt_tokens, max_length,
                      ld_alpha, source.fingerprint)
    return source.cache_dir / "ref_logps" / f"{key}.parquet"


def shard_refs_usable(source: DataSource, *, model_label: str, dtype: str, ld_alpha: float | None) -> bool:
    """True when the shards' reference log-probs were computed like the trainer would."""
    m = source.manifest or {}
    ches = m.get("ches") or {}
    return (ld_alpha is None and (m.get("models") or {}).get("ches") == model_label
            and ches.get("dtype") == dtype)


def pair_sequences(chunk: list[Example], ld_alpha: float | None) -> tuple[list, list]:
    """Chosen and rejected of each pair in turn, and their LD-DPO token weights (None when LD-DPO
    is off): the layout both the pre-pass and the training forward use."""
    seqs, weights = [], []
    for ex in chunk:
        seqs += [(ex.prompt, ex.chosen), (ex.prompt, ex.rejected)]
        weights += ld_weights(len(ex.chosen), len(ex.rejected), ld_alpha) if ld_alpha is not None else [None, None]
    return seqs, weights


@torch.no_grad()
def compute(model, todo: list[Example], *, ld_alpha: float | None, packed: bool, micro_batch: int, logit_chunk: int,
            autocast, pad_id: int, progress=None, fwd=None) -> dict[str, tuple[float, float]]:
    was_training = model.training
    model.eval()
    out = {}
    try:
        for start in range(0, len(todo), micro_batch):
            chunk = todo[start : start + micro_batch]
            seqs, weights = pair_sequences(chunk, ld_alpha)
            batch = build_batch(seqs, packed=packed, pad_id=pad_id, token_weights=weights, device=model.device)
            with autocast():
                res = forward_logps(model, batch, logit_chunk=logit_chunk) if fwd is None else fwd(batch, logit_chunk)
                logp = res["logp"].double().cpu()
            for k, ex in enumerate(chunk):
                out[ex.key] = (float(logp[2 * k]), float(logp[2 * k + 1]))
            if progress:
                progress(len(chunk), batch.n_tokens)
    finally:
        model.train(was_training)
    return out


def reference_logps(model, source: DataSource, stream: Iterable[Example], *, path: Path, use_shards: bool,
                    micro_batch: int, log=print, progress=None, dist=None,
                    **forward) -> dict[str, tuple[float, float]]:
    """{example key: (ref_chosen_logp, ref_rejected_logp)} for every example of `stream`, cached at
    `path`. Streams: only the keys and two floats per pair are held, never the examples. Under several ranks
    (`dist`, pipeline/train/parallel.py) the pre-pass chunks go round-robin, the results are gathered on every
    rank and rank 0 writes the cache (after the gather, so no rank reads a cache another is writing)."""
    cached: dict[str, tuple[float, float]] = {}
    if path.exists():
        table = schemas.read_table(path, "ref_logps")
        cached = dict(zip(table["key"].to_pylist(), zip(table["ref_chosen_logp"].to_pylist(),
                                                           table["ref_rejected_logp"].to_pylist())))
    refs: dict[str, tuple[float, float]] = {}
    pending: list[Example] = []
    round_: list[list[Example]] = []  # chunks of one round: one per rank
    from_shards = computed = 0
    world = dist.world if dist is not None else 1

    def run_round():
        for i, keep in dist.rounds(len(round_)) if dist is not None else [(0, True)]:
            if not keep and forward.get("fwd") is None:  # only FSDP needs the filler forward
                continue
            got = compute(model, round_[i], micro_batch=micro_batch, progress=progress, **forward)
            if keep:
                refs.update(got)
        round_.clear()

    def flush():
        nonlocal computed
        round_.append(list(pending))
        computed += len(pending)
        pending.clear()
        if len(round_) == world:
            run_round()

    for ex in stream:
        if ex.key in cached:
            refs[ex.key] = cached[ex.key]
        elif use_shards and ex.shard_ref is not None and not ex.truncated:
            refs[ex.key] = ex.shard_ref
            from_shards += 1
        else:
            pending.append(ex)
            if len(pending) >= micro_batch:
                flush()
    if pending:
        flush()
    if round_:
        run_round()
    reshard(forward.get("fwd"))  # FSDP: the root's gathered weights back to shards
    if dist is not None and dist.on:
        for part in dist.gather(refs):
            refs.update(part)
    if len(refs) - from_shards - computed:
        log(f"train: reference log-probs of {len(refs) - from_shards - computed} pairs from the cache {path}")
    if (from_shards or computed) and (dist is None or dist.main):
        log(f"train: reference log-probs: {from_shards} from the shards, {computed} computed in a pre-pass")
        keys = sorted(refs)
        schemas.write_table(
            schemas.from_rows(
                [{"key": k, "ref_chosen_logp": refs[k][0], "ref_rejected_logp": refs[k][1]} for k in keys], "ref_logps"
            ),
            path,
            "ref_logps",
        )
    return refs
