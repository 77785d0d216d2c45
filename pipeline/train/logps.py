"""Sequence log-probs for training: chosen, rejected (and rationales) in one forward pass.

A batch is a list of (prompt_ids, response_ids) sequences. Two layouts give the same numbers:
- packed (default): all sequences concatenated into one row with no padding; position_ids restart
  at 0 for each sequence and no attention mask is passed, which transformers turns into per-sequence
  attention (varlen flash attention when the model uses flash_attention_2, a block-diagonal causal
  mask for sdpa/eager). No compute is spent on padding.
- padded: one row per sequence, right-padded, with an attention mask.
Only the positions that predict a response token go through the LM head, in chunks of
`logit_chunk` positions; each chunk is checkpointed, so backward recomputes its logits instead of
keeping them, and no (tokens x vocab) tensor ever exists. Per-token weights (LD-DPO) multiply the
token log-probs before they are summed per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint


@dataclass
class Batch:
    input_ids: torch.Tensor  # (rows, width)
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # None when packed
    rows: torch.Tensor  # (n_pred,) row of each predicting position
    cols: torch.Tensor  # (n_pred,) column of each predicting position
    seq: torch.Tensor  # (n_pred,) which sequence each predicting position belongs to
    targets: torch.Tensor  # (n_pred,) the response token it predicts
    weights: torch.Tensor  # (n_pred,) per-token weight (1, or LD-DPO's alpha on tails)
    n_seqs: int
    n_tokens: int  # real (non-pad) tokens


def build_batch(seqs: Sequence[tuple[list[int], list[int]]], *, packed: bool, pad_id: int = 0,
                token_weights: Sequence[list[float] | None] | None = None, device="cpu") -> Batch:
    rows, cols, seq_idx, targets, weights = [], [], [], [], []
    if packed:
        flat, pos = [], []
        for s, (p, r) in enumerate(seqs):
            off = len(flat)
            flat += p + r
            pos += range(len(p) + len(r))
            rows += [0] * len(r)
            cols += range(off + len(p) - 1, off + len(p) + len(r) - 1)
        ids = torch.tensor([flat], dtype=torch.long)
        position_ids = torch.tensor([pos], dtype=torch.long)
        mask = None
    else:
        width = max(len(p) + len(r) for p, r in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for s, (p, r) in enumerate(seqs):
            ids[s, : len(p) + len(r)] = torch.tensor(p + r)
            mask[s, : len(p) + len(r)] = 1
            rows += [s] * len(r)
            cols += range(len(p) - 1, len(p) + len(r) - 1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    for s, (p, r) in enumerate(seqs):
        seq_idx += [s] * len(r)
        targets += r
        w = token_weights[s] if token_weights is not None and token_weights[s] is not None else None
        weights += w if w is not None else [1.0] * len(r)
    t = lambda x, dt=torch.long: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    return Batch(ids.to(device), position_ids.to(device), None if mask is None else mask.to(device), t(rows), t(cols),
                 t(seq_idx), t(targets), t(weights, torch.float32), len(seqs), sum(len(p) + len(r) for p, r in seqs))


def ld_weights(chosen_len: int, rejected_len: int, alpha: float) -> tuple[list[float], list[float]]:
    """LD-DPO (Liu et al. 2024): tokens past the shorter response's length count with weight alpha."""
    shared = min(chosen_len, rejected_len)
    w = lambda n: [1.0] * shared + [alpha] * (n - shared)  # noqa: E731
    return w(chosen_len), w(rejected_len)


def _token_logp(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def parts(model):
    """(decoder, lm_head) of a causal LM, looking through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def forward_logps(model, batch: Batch, *, logit_chunk: int = 1024, top_k: int = 0) -> dict[str, torch.Tensor]:
    """Per sequence: `logp` (weighted sum of response-token log-probs), `tokens`; with top_k > 0
    (no grad), also `topk_entropy` and `topk_mass` summed over the sequence's response tokens."""
    decoder, head = parts(model)
    hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                     use_cache=False).last_hidden_state
    picked = hidden[batch.rows, batch.cols]
    chunks = []
    for c in range(0, picked.shape[0], logit_chunk):
        h, tgt = picked[c : c + logit_chunk], batch.targets[c : c + logit_chunk]
        if torch.is_grad_enabled():
            chunks.append(checkpoint(_token_logp, head, h, tgt, use_reentrant=False))
        else:
            chunks.append(_token_logp(head, h, tgt))
    token_logp = torch.cat(chunks) if chunks else picked.new_zeros(0, dtype=torch.float32)
    n = batch.n_seqs
    out = {
        "logp": token_logp.new_zeros(n).index_add(0, batch.seq, token_logp * batch.weights),
        "tokens": token_logp.new_zeros(n).index_add(0, batch.seq, torch.ones_like(token_logp)),
    }
    if top_k:
        with torch.no_grad():
            ent, mass = [], []
            for c in range(0, picked.shape[0], logit_chunk):
                logits = head(picked[c : c + logit_chunk]).float()
                top = logits.topk(top_k, dim=-1).values
                mass.append(torch.exp(top - torch.logsumexp(logits, -1, keepdim=True)).sum(-1))
                p = torch.softmax(top, dim=-1)  # the top-k distribution, renormalised
                ent.append(-(p * torch.log(p.clamp_min(1e-30))).sum(-1))
            for name, vals in (("topk_entropy", ent), ("topk_mass", mass)):
                v = torch.cat(vals) if vals else token_logp.new_zeros(0)
                out[name] = v.new_zeros(n).index_add(0, batch.seq, v)
    return out
