"""Shared fixtures. Tests run on CPU with the real bundled model on tiny configs (DESIGN rule 9)."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cli_inproc import run_main

# tier_guard: an unmarked test that loads a model fails (make test-fast); pytester: tests/test_tier_guard.py
pytest_plugins = ["tests.tier_guard", "pytester"]

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "configs" / "tiny.yaml"

# Prefect state and results go to a throwaway home; no telemetry; no progress bars in test logs.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefsynth-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.path.join(_PREFECT_HOME, "results"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFSYNTH_PROGRESS"] = "0"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# a drop funnel that does not chain is a bug: fail the run (pipeline/funnel.py), also in CLI subprocesses
os.environ["PREFSYNTH_STRICT_FUNNEL"] = "1"


_SHARED_API = None


def shared_prefect_api() -> str:
    """The URL of one Prefect API server for the whole pytest session, started on first use.

    Every `prefsynth` command that runs a flow otherwise starts its own ephemeral API server (about 20 s here);
    a command given PREFECT_API_URL uses that server instead (flows/api_server.py), as it would a user's
    `prefect server start`. The server is flows/api_server.py's guarded one, so it stops with pytest whatever
    ends the session. Tests of the command's own server (interrupts, leftover processes) pass `shared_api=False`."""
    global _SHARED_API
    if _SHARED_API is None:
        from flows.api_server import ApiServer

        server = ApiServer().start()
        server.wait()
        atexit.register(server.stop)
        _SHARED_API = server
    return _SHARED_API.api_url


def use_shared_prefect_api() -> str:
    """Point this process's Prefect clients (in-process flows) at the shared API server."""
    url = shared_prefect_api()
    if os.environ.get("PREFECT_API_URL") != url:
        os.environ["PREFECT_API_URL"] = url
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return url


def cli_env(*, shared_api: bool = True) -> dict:
    """A subprocess's environment: the session's shared Prefect API, or none (a flow then starts its own server)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    if shared_api:
        env["PREFECT_API_URL"] = shared_prefect_api()
    return env


def run_cli(*args: str, timeout: int = 600, shared_api: bool = True) -> subprocess.CompletedProcess:
    """Run the real `prefsynth` console entry point in a subprocess (on the shared Prefect API unless told not to)."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=cli_env(shared_api=shared_api),
                          capture_output=True, text=True, timeout=timeout)


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's `main(argv)` in this process, output captured (tests/cli_inproc.py): for argument handling and
    error messages, where a subprocess would only add an interpreter start."""
    return run_main(list(args))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def model():
    """(model, tokenizer, label) of the bundled SmolLM2-135M-Instruct, loaded once."""
    from pipeline.backends.hf import load_causal_lm

    return load_causal_lm("bundled:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled model's tokenizer (its chat template included), loaded once: from the converted folder when it
    exists, else straight from the GGUF file, the tokenizer the conversion saves, without loading the weights
    (so tokenizer-only tests stay in the fast tier on a machine that never converted the model)."""
    from transformers import AutoTokenizer

    from pipeline.models import GGUF_FILE, bundled_smollm2_paths

    gguf_dir, converted = bundled_smollm2_paths()
    if (converted / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(converted)
    return AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)


@pytest.fixture(scope="session")
def seeded_rm(tmp_path_factory) -> str:
    """The bundled model with a seeded score head (judges.reward_model.build_seeded_reward_model, seed 3), built once
    for every test that needs a reward model folder; tests only read it."""
    from judges.reward_model import build_seeded_reward_model

    out = tmp_path_factory.mktemp("seeded-rm")
    return build_seeded_reward_model("bundled:smollm2-135m-instruct", str(out), seed=3)


@pytest.fixture(scope="session")
def perturbed_model(model, tmp_path_factory):
    """A copy of the bundled model with seeded noise on its final norm: answers differ from the original's."""
    import torch

    m, tokenizer, _ = model
    out = tmp_path_factory.mktemp("perturbed")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm = m.model.norm.weight
        norm.add_(torch.randn(norm.shape, generator=gen).to(norm) * 0.5)
        m.save_pretrained(out)
        m.load_state_dict(state)  # the shared fixture is left as it was
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete CLI run of the tiny config; several tests read its outputs."""
    out = tmp_path_factory.mktemp("tiny-run")
    proc = run_cli("run", "--config", str(TINY), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (out / "cli-stdout.txt").write_text(proc.stdout)
    (out / "cli-stderr.txt").write_text(proc.stderr)
    return out
