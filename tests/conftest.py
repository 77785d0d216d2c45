"""Shared fixtures. Tests run on CPU with the real bundled model on tiny configs (DESIGN rule 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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


def cli_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `prefsynth` console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def model():
    """(model, tokenizer, label) of the bundled SmolLM2-135M-Instruct, loaded once."""
    from pipeline.backends.hf import load_causal_lm

    return load_causal_lm("bundled:smollm2-135m-instruct")


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
