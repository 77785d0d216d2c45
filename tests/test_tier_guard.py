"""The fast tier's guard (tests/tier_guard.py) in a pytest of its own: an unmarked test that loads model weights
or starts the CLI fails, even when it swallows the refusal; a marked one and a plain one pass."""

import os

from tests.conftest import ROOT

INNER = '''
import subprocess
import sys

import pytest


def test_loads_weights():
    from transformers import AutoModelForCausalLM

    try:
        AutoModelForCausalLM.from_pretrained("/nonexistent-model-dir")
    except BaseException:
        pass  # swallowed: the guard still fails the test at its report


def test_starts_the_cli():
    subprocess.run([sys.executable, "-m", "flows.cli", "--version"], capture_output=True)


@pytest.mark.slow
def test_marked_may_load():
    from transformers import AutoModelForCausalLM

    with pytest.raises(Exception) as exc:
        AutoModelForCausalLM.from_pretrained("/nonexistent-model-dir")
    assert "slow/vllm/browser" not in str(exc.value)


def test_plain_work_passes():
    assert sum(range(4)) == 6
'''


def test_unmarked_model_loads_and_heavy_processes_fail_the_test(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nmarkers =\n    slow: heavy\n")
    result = pytester.runpytest_subprocess("-p", "tests.tier_guard", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert "test_loads_weights has no slow/vllm/browser mark but loads model weights" in out
    assert "test_starts_the_cli has no slow/vllm/browser mark but starts a heavy process" in out
    assert "FAILED test_inner.py::test_marked_may_load" not in out and "fix: mark it @pytest.mark.slow" in out
