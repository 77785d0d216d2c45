"""Checks a run's inputs before Prefect starts or any model loads: a bad value fails in a second.

`prefsynth run` and `serve` call `check_run`: the output folder (writable, and of the kind the mode
needs: see pipeline/core/rundir.py), every model the config names (bundled, a folder with intact
weights, or a Hub id that exists or is cached), decontamination benchmark files, and the prompt
input itself (every row validated), and every OpenAI-compatible endpoint the run uses (generation,
judges, reward models, rationales: set, answering, serving the model, priced when `budget.usd` is
set). `prefsynth train` calls `check_model`. Each failure is a
`PrefsynthError` whose message names the config key, the value and the fix.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.backends.model_ref import check_hub, resolve, uses_hub
from pipeline.config import InputConfig, RunConfig
from pipeline.core.accounting import price_of
from pipeline.core.rundir import check_kind, check_out_dir
from pipeline.errors import ConfigError, InputError

BENCHMARK_SUFFIXES = {".jsonl", ".json", ".parquet", ".txt"}


def offline_unless_hub(refs: list[str], *, datasets: bool = False) -> None:
    """Put the Hugging Face libraries offline unless a reference needs the Hub (no calls home, and a
    missing file fails at once instead of after network retries). Must run before they are imported."""
    if not any(uses_hub(r) for r in refs) and not datasets:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def check_model(ref: str, *, field: str) -> None:
    resolve(ref, field=field)
    if uses_hub(ref):
        check_hub(ref, field=field)


def check_benchmarks(cfg: RunConfig) -> None:
    for i, path in enumerate(cfg.curate.decontaminate.benchmarks):
        p = Path(path).expanduser()
        key = f"curate.decontaminate.benchmarks[{i}]"
        if not p.exists():
            raise ConfigError(f"{key}: benchmark file {path!r} does not exist; fix: give an existing .jsonl, .parquet "
                              "or .txt file")
        if not p.is_file() or p.suffix not in BENCHMARK_SUFFIXES:
            raise ConfigError(f"{key}: {path!r} is not a .jsonl, .json, .parquet or .txt file; fix: give one")


def check_endpoint(openai_cfg, *, field: str, model: str) -> None:
    """An OpenAI-compatible server must answer GET /models and serve the model asked for (a wrong base_url
    fails here in a second instead of after the stage's retries)."""
    url = openai_cfg.base_url.rstrip("/") + "/models"
    key = os.environ.get(openai_cfg.api_key_env) or "EMPTY"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=min(openai_cfg.timeout_s, 15)) as resp:
            listed = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(
                f"{field}.base_url {openai_cfg.base_url!r} refused the API key (HTTP {exc.code}); fix: put "
                f"a valid key in the environment variable {openai_cfg.api_key_env!r} "
                f"({field}.api_key_env)"
            ) from None
        if exc.code >= 500:  # a proxy's 502/503 page: the server behind it is down; failing now beats the retries
            raise ConfigError(
                f"{field}.base_url {openai_cfg.base_url!r} answered HTTP {exc.code} ({exc.reason}) to GET /models; "
                f"fix: start the server behind it (e.g. `vllm serve MODEL`) or correct {field}.base_url"
            ) from None
        return  # a server without /models (some proxies): the stage's own requests will tell
    except (OSError, ValueError) as exc:  # refused, DNS, timeout, TLS, a URL urllib cannot send; or not JSON
        reason = getattr(exc, "reason", None) or (f"not JSON: {exc}" if isinstance(exc, ValueError) else exc)
        raise ConfigError(
            f"{field}.base_url {openai_cfg.base_url!r} does not answer ({reason}); fix: start the server "
            f"(e.g. `vllm serve MODEL`) or correct {field}.base_url"
        ) from None
    ids = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)] if isinstance(listed, dict) else []
    wanted = openai_cfg.served_model or model
    if ids and wanted not in ids:
        raise ConfigError(
            f"{field}: the server at {openai_cfg.base_url!r} serves {ids[:5]}, not {wanted!r}; fix: set "
            f"{field}.served_model to one of them"
        )


def check_run(cfg: RunConfig, out_dir: str, *, incremental: bool) -> None:
    """Everything a run needs, in the order that fails cheapest first."""
    from pipeline.stages.prompts import load_prompts

    check_out_dir(out_dir)
    check_kind(out_dir, incremental=incremental)
    refs = cfg.model_refs()
    offline_unless_hub(list(refs.values()), datasets=cfg.input.path.startswith("hf:"))
    check_benchmarks(cfg)
    for key, ref in refs.items():
        check_model(ref, field=key)
    check_served(cfg)
    if incremental and (cfg.generate.turns != "last" or cfg.sources.conversation.enabled):
        raise ConfigError(  # an increment re-reads its prompts from parquet, which would branch or grow them again
            f"generate.turns={cfg.generate.turns} / sources.conversation cannot grow a dataset (--incremental / "
            "serve); fix: leave generate.turns at 'last' and sources.conversation off, or make a plain run"
        )
    if not cfg.input.synthesised:
        # simulated conversations are branched after they are grown; their seeds only need to be prompts
        simulated = cfg.sources.conversation.enabled
        table, _ = load_prompts(cfg.input, seed=cfg.seed, turns="last" if simulated else cfg.generate.turns)
        check_sandbox(cfg, table)
    elif incremental:
        raise ConfigError(
            "input.path 'synth:' cannot grow a dataset (--incremental / serve): synthesis has no "
            "'new prompts'; fix: synthesise once with a plain run, then grow from its prompts table"
        )
    elif cfg.input.synth.mode == "evol":
        try:
            load_prompts(InputConfig(path=cfg.input.synth.seeds), seed=cfg.seed)
        except InputError as exc:
            raise InputError(f"input.synth.seeds: {exc}") from None


def check_sandbox(cfg: RunConfig, prompts) -> None:
    """Prompts with code tests (`verify` kind 'tests') need the code verifier's sandbox (judges/sandbox.py): a machine
    without a working one fails here, before any answer is generated, rather than at the judge stage."""
    if cfg.judge.verifiers == "off":
        return
    if any(v and json.loads(v).get("kind") == "tests" for v in prompts.column("verify").to_pylist()):
        from judges.sandbox import require

        require()


def check_served(cfg: RunConfig) -> None:
    """Every endpoint the run sends requests to: set, answering, serving the model; priced when a budget is set."""
    seen = set()
    for field, model, opts in cfg.served_models():
        if opts.mode == "batch":  # answered by batch_command or by hand, not by a server this run reaches
            if cfg.budget.usd is not None and price_of(cfg.prices, model, opts.served_model) is None:
                raise ConfigError(
                    f"prices: no price for {model!r} (batch at {field}), but budget.usd="
                    f"{cfg.budget.usd:g} needs one; fix: set prices.{model}.input and .output"
                )
            continue
        if not opts.base_url:
            raise ConfigError(
                f"{field}.base_url: not set, but {model!r} is to be reached over it (backend 'openai'); "
                f"fix: set it to the server's URL including /v1, e.g. "
                f"--set {field}.base_url=http://HOST:8000/v1"
            )
        if cfg.budget.usd is not None and price_of(cfg.prices, model, opts.served_model) is None:
            raise ConfigError(
                f"prices: no price for {model!r} (served at {field}), but budget.usd={cfg.budget.usd:g} "
                f"needs one to count its cost; fix: set prices.{model}.input and prices.{model}.output "
                "(USD per million tokens), or unset budget.usd"
            )
        if (opts.base_url, opts.served_model or model) not in seen:
            seen.add((opts.base_url, opts.served_model or model))
            check_endpoint(opts, field=field, model=model)
