"""transformers backend: batched, left-padded `model.generate` with per-sample seeded sampling.

Why a custom sampler: `generate(do_sample=True)` draws every row from one global RNG, so a
candidate would change with batch size, batch order or a resumed run. `SeededSampler` draws each
row's token from that row's own Philox stream (seeded per candidate) by inverse-CDF over the
temperature-scaled, top-p-truncated distribution, and hands `generate` a one-hot score so greedy
search picks it. The work per step is the same sort + cumsum that HF's top-p warper does.
Prompts are sorted by length before batching to cut padding; results return in request order.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from pipeline.backends.base import Completion, Request, Result, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.errors import BackendError


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def load_causal_lm(model_ref: str, dtype: str = "auto", field: str = "model"):
    """(model, tokenizer, label) for a model reference; `field` names the config key in errors."""
    resolved = resolve(model_ref, field=field)
    try:
        model, tokenizer = _load(resolved.path, dtype)
    except OSError as exc:
        raise BackendError(f"{field}: cannot load model {model_ref!r} from {resolved.path}: {exc}") from exc
    if not tokenizer.chat_template:
        raise BackendError(f"{field}: model {model_ref!r} has no chat template; fix: use an instruct/chat model")
    return model, tokenizer, resolved.label


@lru_cache(maxsize=4)
def _load(path: str, dtype: str):
    """Cached so the stages of one process (generate, judge, rationale) share one copy."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device))
    model.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class SeededSampler(LogitsProcessor):
    """Per-row seeded temperature + top-p sampling expressed as a one-hot score (see module doc)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.rngs = [np.random.Generator(np.random.Philox(key=seed)) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float()
        if self.temperature == 0:
            picked = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always survives)
            keep = (sorted_p.cumsum(dim=-1) - sorted_p) < self.top_p
            cdf = (sorted_p * keep).cumsum(dim=-1)
            u = torch.tensor([rng.random() for rng in self.rngs], dtype=cdf.dtype, device=cdf.device)
            pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
            pos = torch.minimum(pos, keep.sum(dim=-1) - 1)
            picked = order.gather(1, pos.unsqueeze(1)).squeeze(1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, picked.unsqueeze(1), 0.0)
        return out


class TransformersBackend:
    def __init__(self, model_ref: str, *, dtype: str = "auto", batch_size: int = 16, field: str = "generate.model"):
        self.model, self.tokenizer, self.label = load_causal_lm(model_ref, dtype, field)
        self.batch_size = batch_size

    def encode(self, messages: list[dict]) -> list[int]:
        """Chat-template ids; a final assistant message is a prefix for the model to continue."""
        prefix = messages[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=not prefix, continue_final_message=prefix, tokenize=True, return_dict=False
        )

    def generate(
        self,
        requests: Sequence[Request],
        *,
        sampling: SamplingParams,
        max_prompt_tokens: int,
        progress=None,
        on_result=None,
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        encoded = []
        for i, req in enumerate(requests):
            ids = (
                self.tokenizer.encode(req.prefix, add_special_tokens=False)
                if req.prefix is not None
                else list(self.encode(req.messages))
            )
            if len(ids) > max_prompt_tokens:
                results[i] = Skipped(f"prompt has {len(ids)} tokens > generate.max_prompt_tokens={max_prompt_tokens}")
            else:
                encoded.append((i, ids))
        encoded.sort(key=lambda item: len(item[1]))
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            outputs = self._generate_batch([ids for _, ids in batch], [requests[i].seeds for i, _ in batch], sampling)
            for (i, _), completions in zip(batch, outputs):
                results[i] = completions
                if on_result is not None:  # e.g. the request log, durable as each batch lands
                    on_result(i, completions)
            if progress is not None:
                progress(len(batch), sum(c.n_tokens for cs in outputs for c in cs))
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], seeds: list[tuple[int, ...]], sampling: SamplingParams
    ) -> list[list[Completion]]:
        tok = self.tokenizer
        rows = [ids for ids, row_seeds in zip(prompts, seeds) for _ in row_seeds]
        flat_seeds = [s for row_seeds in seeds for s in row_seeds]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.model.device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.model.device)
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=LogitsProcessorList([SeededSampler(flat_seeds, sampling.temperature, sampling.top_p)]),
        )
        new = out[:, width:].tolist()
        completions = []
        for ids in new:
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
                reason = "stop"
            else:
                reason = "length"
            completions.append(Completion(tok.decode(ids, skip_special_tokens=True).strip(), len(ids), reason))
        grouped, k = [], 0
        for row_seeds in seeds:
            grouped.append(completions[k : k + len(row_seeds)])
            k += len(row_seeds)
        return grouped
