"""The run's preflight refuses prompts with code tests where the code verifier has no sandbox (issue 31), before any
answer is generated. The machine's real bwrap is hidden by an empty PATH: a real missing-program condition, not a
stand-in."""

from __future__ import annotations

import pytest

import judges.sandbox as sandbox
from pipeline.config import InputConfig, RunConfig
from pipeline.errors import SandboxUnavailable
from pipeline.stages.preflight import check_sandbox
from pipeline.stages.prompts import load_prompts
from tests.conftest import ROOT, cli_in_process

CODE = str(ROOT / "data" / "prompts" / "verifiable.jsonl")


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    sandbox._probe.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    yield
    sandbox._probe.cache_clear()


def test_a_run_with_code_tests_stops_in_preflight_without_a_sandbox(no_bwrap, tmp_path):
    out = tmp_path / "out"
    res = cli_in_process("run", "--config", str(ROOT / "data" / "configs" / "tiny.yaml"), "--set",
                         f"input.path={CODE}", "--out", str(out))
    assert res.returncode != 0
    assert "refuses to run code without its sandbox" in res.stderr and "bwrap" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (out / "tables").exists()


def test_the_check_passes_with_verifiers_off_or_without_code_prompts(no_bwrap):
    table, _ = load_prompts(InputConfig(path=CODE))
    with pytest.raises(SandboxUnavailable):
        check_sandbox(RunConfig(), table)
    check_sandbox(RunConfig(judge={"verifiers": "off"}), table)
    plain, _ = load_prompts(InputConfig(path=str(ROOT / "data" / "prompts" / "seed.jsonl")))
    check_sandbox(RunConfig(), plain)
