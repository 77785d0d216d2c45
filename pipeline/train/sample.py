"""On-policy sampling inside training (online DPO/IPO, pipeline/train/online.py): k answers per prompt from the
policy being trained, optionally from the Nash-MD geometric mixture of the policy and the reference.

The mixture (Munos et al. 2023, "Nash Learning from Human Feedback"; Calandriello et al. 2024, "Human Alignment of
Large Language Models through Online Preference Optimisation", IPO-MD) is taken token by token, as both papers do in
practice: at every position the next token is drawn from

    p(y_t | x, y_<t)  proportional to  exp( ((1 - b) * log pi(y_t | .) + b * log pi_ref(y_t | .)) / T )

with b = train.online.mixture and T = train.online.temperature; b = 0 samples the policy itself (online DPO / online
IPO), b = 1 the reference. `next_token_logprobs` is that formula; `sample` draws from it with a seeded generator, so a
step's answers are a pure function of (weights, prompt, seed) and a resumed run draws the same ones.

Generation runs the models' own forwards with their KV caches (transformers, CPU or one GPU, in this process: the
policy's weights are the live ones, so nothing has to be moved between trainer and sampler).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Answer:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (an end-of-turn token) or "length" (max_new_tokens reached)
    token_ids: tuple[int, ...]  # the tokens drawn, up to and including the end-of-turn token


def next_token_logprobs(policy_logits: torch.Tensor, ref_logits: torch.Tensor | None, *, mixture: float,
                        temperature: float) -> torch.Tensor:
    """Log-probabilities of the next token under the geometric mixture (module docstring), over the last dim."""
    mixed = torch.log_softmax(policy_logits.float(), dim=-1)
    if mixture > 0:
        if ref_logits is None:
            raise ValueError("a mixture > 0 needs the reference's logits")
        mixed = (1.0 - mixture) * mixed + mixture * torch.log_softmax(ref_logits.float(), dim=-1)
    return torch.log_softmax(mixed / temperature, dim=-1)


def stop_ids(model, tokenizer) -> set[int]:
    """The end-of-turn tokens: the tokenizer's eos and the model's generation config's (an int or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else ({extra} if extra is not None else set())
    return ids


def _forward_kwargs(model) -> tuple[str, dict]:
    """(the cache argument's name, extra kwargs) of a causal LM's forward: transformers 5 calls the KV cache `cache`,
    4.x `past_key_values`; `logits_to_keep=1` spares the LM head on every prompt position where it exists."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft LoRA wrapper
    params = inspect.signature(type(base).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), ({"logits_to_keep": 1} if "logits_to_keep" in
                                                                   params else {})


def prompt_ids(tokenizer, messages: list[dict], max_prompt_tokens: int) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)[-max_prompt_tokens:]


def left_pad(rows: list[list[int]], pad: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, position ids) of token rows left-padded to the longest: each row's real tokens
    sit at positions 0.. whatever its padding, as they would alone."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def sample(policy, ref, tokenizer, messages: list[dict], *, k: int, max_new_tokens: int, temperature: float,
           mixture: float, seed: int, max_prompt_tokens: int = 256, stops: set[int] | None = None) -> list[Answer]:
    """`k` answers to one conversation (`sample_many` with one prompt). `ref` may be None when `mixture` is 0."""
    return sample_many(policy, ref, tokenizer, [messages], k=k, max_new_tokens=max_new_tokens,
                       temperature=temperature, mixture=mixture, seeds=[seed], max_prompt_tokens=max_prompt_tokens,
                       stops=stops)[0]


@torch.no_grad()
def sample_many(policy, ref, tokenizer, conversations: list[list[dict]], *, k: int, max_new_tokens: int,
                temperature: float, mixture: float, seeds: list[int], max_prompt_tokens: int = 256,
                stops: set[int] | None = None) -> list[list[Answer]]:
    """`k` answers to each conversation, all drawn in one batch (prompts left-padded, with their attention mask and
    positions); each conversation's draws come from its own generator seeded by its entry of `seeds`, so they do not
    depend on which other prompts share the batch."""
    was = policy.training
    policy.eval()
    try:
        return _sample(policy, ref, tokenizer, conversations, k=k, max_new_tokens=max_new_tokens,
                       temperature=temperature, mixture=mixture, seeds=seeds, max_prompt_tokens=max_prompt_tokens,
                       stops=stop_ids(policy, tokenizer) if stops is None else stops)
    finally:
        policy.train(was)


def _sample(policy, ref, tokenizer, conversations, *, k, max_new_tokens, temperature, mixture, seeds,
            max_prompt_tokens, stops) -> list[list[Answer]]:
    device = next(policy.parameters()).device
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    prompts = [prompt_ids(tokenizer, m, max_prompt_tokens) for m in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = [ids for ids in prompts for _ in range(k)]  # k copies of each prompt, left-padded to one width
    step_in, mask, pos = left_pad(rows, pad, device)
    models = [policy] + ([ref] if mixture > 0 else [])
    caches: list = [None] * len(models)
    kwargs = [_forward_kwargs(m) for m in models]
    n = len(rows)
    out = torch.zeros((n, 0), dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    stop = torch.tensor(sorted(stops), dtype=torch.long)
    for _ in range(max_new_tokens):
        logits = []
        for i, m in enumerate(models):
            name, extra = kwargs[i]
            res = m(input_ids=step_in, attention_mask=mask, position_ids=pos, use_cache=True, **{name: caches[i]},
                    **extra)
            caches[i] = getattr(res, name)
            logits.append(res.logits[:, -1, :].cpu())
        probs = next_token_logprobs(logits[0], logits[1] if mixture > 0 else None, mixture=mixture,
                                    temperature=temperature).exp()
        tok = torch.cat([torch.multinomial(probs[j * k:(j + 1) * k], 1, generator=g).squeeze(1)
                         for j, g in enumerate(gens)])
        if len(stop):
            tok = torch.where(done, stop[0], tok)  # a finished answer keeps feeding an end token, never read
            done |= torch.isin(tok, stop)
        out = torch.cat([out, tok[:, None]], dim=1)
        if bool(done.all()):
            break
        step_in = tok[:, None].to(device)
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos[:, -1:] + 1
    answers = []
    for row in out.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), None)
        body = row if end is None else row[:end]
        answers.append(Answer(tokenizer.decode(body, skip_special_tokens=True), len(body),
                              "length" if end is None else "stop", tuple(row if end is None else row[: end + 1])))
    return [answers[j * k:(j + 1) * k] for j in range(len(conversations))]
