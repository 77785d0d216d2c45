"""One training step's forwards and the evaluation, alone or as one rank of several (pipeline/train/parallel.py).

`accumulate` runs a step's pairs in micro batches, each loss divided by the step's *global* counts, so the summed
gradients are those of the whole batch (and, scaled by the world size before DDP/FSDP average them, those of the
one-process run). `evaluate` computes the eval means with their bootstrap noise (pipeline/train/metrics.py); under
several ranks each runs its round-robin share of the eval chunks and the per-pair values are gathered back into the
one-process order, so the bootstrap draws and the figures do not depend on the world size.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from pipeline.train.config import TrainConfig
from pipeline.train.logps import build_batch, forward_logps
from pipeline.train.losses import PairLogps, combined_loss, reward_metrics
from pipeline.train.metrics import INDICATORS, bootstrap
from pipeline.train.parallel import no_sync, reshard
from pipeline.train.ref import pair_sequences


def pair_forward(model, chunk, refs, cfg: TrainConfig, pad_id: int, *, rationales: bool, top_k: int = 0, fwd=None):
    """PairLogps of a chunk of pairs (and its rationales), the raw forward output and its token count. `fwd`: the
    DDP/FSDP-wrapped forward (parallel.PairForward) when the call must go through it."""
    seqs, weights = pair_sequences(chunk, cfg.ld_alpha)
    with_rat = [ex for ex in chunk if rationales and ex.rationale is not None]
    seqs += [ex.rationale for ex in with_rat]
    weights += [None] * len(with_rat)
    batch = build_batch(seqs, packed=cfg.packing, pad_id=pad_id, token_weights=weights, device=model.device)
    if fwd is None:
        out = forward_logps(model, batch, logit_chunk=cfg.logit_chunk, top_k=top_k)
    else:
        out = fwd(batch, logit_chunk=cfg.logit_chunk, top_k=top_k)
    n = len(chunk)
    ref = torch.tensor([refs[ex.key] for ex in chunk], dtype=torch.float32, device=model.device)
    lp = PairLogps(
        out["logp"][0 : 2 * n : 2],
        out["logp"][1 : 2 * n : 2],
        ref[:, 0],
        ref[:, 1],
        out["tokens"][0 : 2 * n : 2],
        out["tokens"][1 : 2 * n : 2],
        out["logp"][2 * n :] if with_rat else None,
        torch.tensor([1.0 if ex.confidence is None else ex.confidence for ex in chunk], device=model.device),
    )
    return lp, out, batch.n_tokens


def accumulate(
    model, batch, refs, cfg: TrainConfig, pad_id: int, autocast, *, n_rationales: int, n_pairs: int | None = None,
    fwd=None, dist=None,
):
    """Forward + backward of one step's pairs in micro batches; gradients add up to those of the
    whole batch (each micro loss is divided by the step's counts). Returns (loss sums, metrics, tokens).
    Under several ranks `batch` is this rank's share, `n_pairs` the global batch size and `fwd` the wrapped
    forward: losses are scaled by the world size, which DDP/FSDP's gradient averaging divides out again."""
    sums: dict[str, float] = {}
    vals: dict[str, list] = {}
    tokens = 0
    starts = range(0, len(batch), cfg.micro_batch_size)
    scale = dist.world if dist is not None and dist.on else 1
    for i, s in enumerate(starts):
        chunk = batch[s : s + cfg.micro_batch_size]
        sync = no_sync(fwd, dist, last=i == len(starts) - 1) if fwd is not None else contextlib.nullcontext()
        with sync:
            with autocast():
                lp, _, n_tok = pair_forward(
                    model, chunk, refs, cfg, pad_id, rationales=bool(n_rationales), fwd=fwd
                )
                loss, part = combined_loss(
                    lp,
                    cfg.losses,
                    beta=cfg.beta,
                    label_smoothing=cfg.label_smoothing,
                    ipo_length_average=cfg.ipo_length_average,
                    n_pairs=n_pairs or len(batch),
                    n_rationales=n_rationales,
                )
            (loss * scale if scale != 1 else loss).backward()
        tokens += n_tok
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + v
        for k, v in reward_metrics(lp, cfg.beta).items():
            vals.setdefault(k, []).append(v.cpu())
    return sums, vals, tokens


def mean(values: dict[str, list]) -> dict[str, float]:
    return {k: float(torch.cat(v).float().mean()) for k, v in values.items() if v}


@torch.no_grad()
def evaluate(
    model, eval_set, refs, cfg: TrainConfig, pad_id: int, autocast, *, step: int = 0, dist=None, fwd=None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Eval metrics (means over the eval pairs, each with its bootstrap `_se`; the indicators also with a
    95% interval) and, for the over-optimisation watch, the indicators' per-pair sums and tokens."""
    if not eval_set:
        return {}, {}
    was = model.training
    model.eval()
    chunks = [eval_set[s : s + cfg.micro_batch_size] for s in range(0, len(eval_set), cfg.micro_batch_size)]
    mine = []
    for c, keep in dist.rounds(len(chunks)) if dist is not None else [(c, True) for c in range(len(chunks))]:
        if not keep and fwd is None:  # a round's filler forward keeps FSDP's collectives in step; DDP needs none
            continue
        chunk = chunks[c]
        n = len(chunk)
        with autocast():
            lp, out, _ = pair_forward(model, chunk, refs, cfg, pad_id, rationales=False, top_k=cfg.top_k, fwd=fwd)
        loss = float(
            combined_loss(
                lp,
                {k: w for k, w in cfg.losses.items() if k != "rationale"},
                beta=cfg.beta,
                label_smoothing=cfg.label_smoothing,
                ipo_length_average=cfg.ipo_length_average,
                n_pairs=len(eval_set),
                n_rationales=0,
            )[0]
        )
        vals = {k: v.float().cpu() for k, v in reward_metrics(lp, cfg.beta).items()}
        # chosen + rejected of each pair: the pair is the bootstrap's unit
        pp = {k: (out[k].float()[0 : 2 * n : 2] + out[k].float()[1 : 2 * n : 2]).cpu()
              for k in ("topk_entropy", "topk_mass", "tokens")}
        if keep:
            mine.append((c, loss, vals, pp))
    reshard(fwd)
    if dist is not None and dist.on:
        mine = sorted((r for part in dist.gather(mine) for r in part), key=lambda r: r[0])
    model.train(was)
    boot = dict(resamples=cfg.overopt.resamples, seed=boot_seed(cfg, step))
    loss = 0.0
    for r in mine:
        loss += r[1]
    sums = {k: torch.cat([r[3][k] for r in mine]).double().numpy() for k in ("topk_entropy", "topk_mass", "tokens")}
    record = {"loss": loss, "pairs": len(eval_set)}
    for k in mine[0][2]:
        e = bootstrap(torch.cat([r[2][k] for r in mine]).numpy(), **boot)
        record.update({k: e.value, **noise(k, se=e.se)})
    for k in INDICATORS:
        e = bootstrap(sums[k], sums["tokens"], **boot)
        record.update({k: e.value, **noise(k, se=e.se, lo=e.lo, hi=e.hi)})
    return record, sums


def noise(name: str, *, se: float, **interval: float) -> dict[str, float]:
    """`name_se` (and `_lo`, `_hi`); none for a single eval pair, which has no spread to resample (its NaN would
    make metrics.jsonl invalid JSON)."""
    return {f"{name}_{k}": v for k, v in {"se": se, **interval}.items()} if math.isfinite(se) else {}


def boot_seed(cfg: TrainConfig, step: int) -> int:
    return cfg.seed * 1_000_003 + step  # reproducible, and the same after a resume
