"""Reward-model judge: a Hugging Face sequence-classification model with one output (a scalar reward).

Loaded with `AutoModelForSequenceClassification` from a local folder or Hub id (the same path any
user's reward model takes), run on the chat-templated conversation plus the candidate as the
assistant turn, batched with right padding (the model pools the last non-pad token, which needs
`pad_token_id` in its config; we set it from the tokenizer when missing). Scores are unbounded;
ensembles standardise them per judge (judges/agreement.py).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Sequence

import torch

from judges.absolute import Judgment
from pipeline.errors import BackendError
from pipeline.models import resolve


@lru_cache(maxsize=2)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if model.config.num_labels != 1:
        raise BackendError(f"judge.reward_models: {path} has {model.config.num_labels} labels; a reward model has exactly 1")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def reward_judge_id(ref: str) -> str:
    """A reward-model judge's id, known without loading the model."""
    return f"{resolve(ref, field='judge.reward_models').label}#reward"


class RewardModelJudge:
    kind = "reward_model"
    aspect = "reward"

    def __init__(self, ref: str, *, batch_size: int = 8, max_input_tokens: int = 2048):
        resolved = resolve(ref, field="judge.reward_models")
        try:
            self.model, self.tokenizer = _load(resolved.path)
        except OSError as exc:
            raise BackendError(f"judge.reward_models: cannot load {ref!r}: {exc}") from exc
        self.id = reward_judge_id(ref)
        self.batch_size, self.max_input_tokens = batch_size, max_input_tokens

    @torch.inference_mode()
    def score(self, items: Sequence[tuple[list[dict], str]], progress=None, references=None) -> list[Judgment]:
        """One Judgment (score = reward) per (conversation, response), same order (references are unused)."""
        encoded = [self.tokenizer.apply_chat_template([*conv, {"role": "assistant", "content": resp}], tokenize=True,
                                                      return_dict=False) for conv, resp in items]
        out: list = [None] * len(items)
        todo = []
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_input_tokens:
                out[i] = Judgment(None, False, json.dumps({"error": f"{len(ids)} tokens > judge.max_input_tokens={self.max_input_tokens}"}))
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(encoded[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in batch], device=self.model.device)
            mask = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in batch], device=self.model.device)
            # pool at each row's last real token ourselves: pad == eos here, so id-based pooling would be wrong
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(batch)), mask.sum(-1) - 1]
            rewards = self.model.score(last).float().squeeze(-1).tolist()
            for i, r in zip(batch, rewards):
                out[i] = Judgment(r, True, json.dumps({"reward": r}))
            if progress is not None:
                progress(len(batch))
        return out


def build_seeded_reward_model(base: str, out_dir: str, *, seed: int = 0) -> str:
    """A small reward model for tests and demos: `base`'s weights plus a seeded linear score head.
    It is not a trained reward model; it exercises the exact loading path of a real one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve(base, field="base").path
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
