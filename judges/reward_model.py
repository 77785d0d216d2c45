"""Reward-model judges: a sequence-classification model with one output (a scalar reward), in three places.

- transformers (`RewardModelJudge`): `AutoModelForSequenceClassification` from a local folder or Hub
  id (the same path any user's reward model takes), run on the chat-templated conversation plus the
  candidate as the assistant turn, batched with right padding, pooled at each row's last real token.
- vLLM in process (`VllmRewardJudge`): the same token ids through `LLM(runner="pooling",
  convert="classify")` and `classify(..., PoolingParams(use_activation=False))`: the raw score,
  not its sigmoid.
- served (`ServedRewardJudge`): a `vllm serve --runner pooling --convert classify` endpoint's
  /classify route with the conversation as `messages` (the server applies the same chat template,
  no generation prompt) and `use_activation: false`; through the request log and the ledger.
Scores are unbounded; ensembles standardise them per judge (judges/agreement.py). A judge's id is
`model@revision#reward` wherever it runs, so one reward model gives one judge column.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Sequence

import torch

from judges.absolute import Judgment
from pipeline.backends.base import Skipped
from pipeline.backends.model_ref import resolve
from pipeline.backends.openai_backend import endpoint_backend, served_label
from pipeline.backends.request_log import call_key, logged_calls
from pipeline.errors import BackendError, ConfigError


@lru_cache(maxsize=2)
def _load(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if model.config.num_labels != 1:
        raise BackendError(
            f"judge.reward_models: {path} has {model.config.num_labels} labels; a reward model has exactly 1"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def reward_judge_id(ref: str, backend: str = "transformers") -> str:
    """A reward-model judge's id, known without loading the model."""
    return f"{served_label(ref) if backend == 'openai' else resolve(ref, field='judge.reward_models').label}#reward"


def reward_judge(spec, cfg, *, log=None, meter=None):
    """The judge for one reward-model spec (pipeline/config/judging.py RewardModelConfig) of a run config."""
    j = cfg.judge
    if spec.backend == "openai":
        if spec.openai.mode == "batch":
            raise ConfigError(
                "judge.reward_models: a served reward model has no batch mode (OpenAI batch files carry "
                "chat completions, not /classify); fix: set its openai.mode to 'online'"
            )
        return ServedRewardJudge(
            endpoint_backend(spec.model, spec.openai, field="judge.openai", meter=meter),
            log,
            max_input_tokens=j.max_input_tokens,
        )
    if spec.backend == "vllm":
        return VllmRewardJudge(
            spec.model,
            dtype=cfg.generate.dtype,
            engine=cfg.generate.vllm.model_dump(),
            max_input_tokens=j.max_input_tokens,
        )
    return RewardModelJudge(spec.model, batch_size=j.batch_size, max_input_tokens=j.max_input_tokens)


def _conversations(items) -> list[list[dict]]:
    return [[*conv, {"role": "assistant", "content": resp}] for conv, resp in items]


def _too_long(n: int, limit: int) -> Judgment:
    return Judgment(None, False, json.dumps({"error": f"{n} tokens > judge.max_input_tokens={limit}"}))


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
        encoded = [
            self.tokenizer.apply_chat_template(c, tokenize=True, return_dict=False) for c in _conversations(items)
        ]
        out: list = [None] * len(items)
        todo = []
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_input_tokens:
                out[i] = _too_long(len(ids), self.max_input_tokens)
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(encoded[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor(
                [encoded[i] + [pad] * (width - len(encoded[i])) for i in batch], device=self.model.device
            )
            mask = torch.tensor(
                [[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in batch], device=self.model.device
            )
            # pool at each row's last real token ourselves: pad == eos here, so id-based pooling would be wrong
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(batch)), mask.sum(-1) - 1]
            rewards = self.model.score(last).float().squeeze(-1).tolist()
            for i, r in zip(batch, rewards):
                out[i] = Judgment(r, True, json.dumps({"reward": r}))
            if progress is not None:
                progress(len(batch))
        return out


_POOLING: dict[tuple, object] = {}


class VllmRewardJudge:
    """A reward model on an in-process vLLM pooling runner (one engine per model and options per process)."""

    kind = "reward_model"
    aspect = "reward"

    def __init__(self, ref: str, *, dtype: str = "auto", engine: dict | None = None, max_input_tokens: int = 2048):
        from vllm import LLM

        resolved = resolve(ref, field="judge.reward_models")
        options = {k: v for k, v in (engine or {}).items() if v is not None}
        key = (resolved.path, dtype, tuple(sorted(options.items())))
        if key not in _POOLING:
            try:
                _POOLING[key] = LLM(
                    model=resolved.path, runner="pooling", convert="classify", dtype=dtype, seed=0, **options
                )
            except Exception as exc:  # engine start errors come as many types; keep the cause
                raise BackendError(
                    f"judge.reward_models: vLLM could not start the pooling runner for {ref!r} with "
                    f"engine options {options}: {exc}; fix: adjust generate.vllm"
                ) from exc
        self.llm = _POOLING[key]
        self.tokenizer = self.llm.get_tokenizer()
        self.id = f"{resolved.label}#reward"
        self.max_input_tokens = max_input_tokens

    def score(self, items: Sequence[tuple[list[dict], str]], progress=None, references=None) -> list[Judgment]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        encoded = [
            list(self.tokenizer.apply_chat_template(c, tokenize=True, return_dict=False))
            for c in _conversations(items)
        ]
        out: list = [
            _too_long(len(ids), self.max_input_tokens) if len(ids) > self.max_input_tokens else None for ids in encoded
        ]
        todo = [i for i, o in enumerate(out) if o is None]
        results = (
            self.llm.classify(
                [TokensPrompt(prompt_token_ids=encoded[i]) for i in todo],
                pooling_params=PoolingParams(use_activation=False),
                use_tqdm=False,
            )
            if todo
            else []
        )
        for i, res in zip(todo, results):
            r = float(res.outputs.probs[0])
            out[i] = Judgment(r, True, json.dumps({"reward": r}))
        if progress is not None:
            progress(len(todo))
        return out


class ServedRewardJudge:
    """A reward model behind `vllm serve --runner pooling --convert classify` (its /classify route)."""

    kind = "reward_model"
    aspect = "reward"

    def __init__(self, backend, log=None, *, max_input_tokens: int = 2048):
        self.backend, self.log = backend, log
        self.id = f"{backend.label}#reward"
        self.max_input_tokens = max_input_tokens
        self.hits = 0

    def score(self, items: Sequence[tuple[list[dict], str]], progress=None, references=None) -> list[Judgment]:
        convs = _conversations(items)
        out: list = [None] * len(items)
        tok = self.backend.tokenizer
        if tok is not None:  # the same limit as in process, where the tokenizer is known here
            for i, c in enumerate(convs):
                if (n := len(tok.apply_chat_template(c, tokenize=True, return_dict=False))) > self.max_input_tokens:
                    out[i] = _too_long(n, self.max_input_tokens)
        todo = [i for i, o in enumerate(out) if o is None]
        keys = [call_key(self.backend.label, "classify", {"messages": convs[i]}) for i in todo]
        replies, hits = logged_calls(
            self.log,
            self.backend,
            keys,
            lambda idx, on_result: self.backend.classify([convs[todo[k]] for k in idx], on_result=on_result),
        )
        self.hits += hits
        for i, reply in zip(todo, replies):
            if isinstance(reply.result, Skipped):
                out[i] = Judgment(None, False, json.dumps({"error": reply.result.reason}))
            else:
                r = reply.payload["reward"]
                out[i] = Judgment(r, True, json.dumps({"reward": r}))
        if progress is not None:
            progress(len(todo))
        return out


def build_seeded_reward_model(base: str, out_dir: str, *, seed: int = 0) -> str:
    """A small reward model for tests and demos: `base`'s weights plus a seeded linear score head.
    It is not a trained reward model; it exercises the exact loading path of a real one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve(base, field="base").path
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
