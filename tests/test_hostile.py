"""The hostile-input script (tests/hostile.py) in the suite: every case handled, at least 40 of them.

Cases run through the CLI's `main(argv)` in this process (no model, no Prefect: the fast tier); the few that set a
variable read at import run as `python -m flows.cli`, and a sample runs through the installed `prefsynth` console
script to show the in-process driver judges what a user's shell would see."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile import ROOT, _env, needs_subprocess, run_all, run_case
from tests.hostile import cases as base_cases
from tests.hostile_faults import fault_cases


def cases():
    return base_cases() + fault_cases()


def test_every_hostile_input_is_handled_in_process():
    in_process = [c for c in cases() if not needs_subprocess(c)]
    assert len(in_process) >= 40
    handled, total, failures = run_all(in_process, echo=lambda line: None)
    assert failures == [], "\n".join(failures)
    assert handled == total >= 40


@pytest.mark.slow  # CLI subprocesses
def test_hostile_inputs_read_at_import_are_handled_in_a_fresh_process():
    apart = [c for c in cases() if needs_subprocess(c)]
    assert len(apart) >= 3  # the HF_ENDPOINT cases
    handled, total, failures = run_all(apart, echo=lambda line: None)
    assert failures == [], "\n".join(failures)


SAMPLE = ("config unknown key", "--set value out of range", "train: bad --set")


@pytest.mark.slow  # console-script subprocesses
def test_the_console_script_ends_as_the_in_process_driver_says(tmp_path):
    """The installed `prefsynth` script, in a subprocess: same status and the same last line as `main(argv)`."""
    script = Path(sys.executable).parent / "prefsynth"
    assert script.exists(), "the console script is installed by `make setup` (pip install -e .)"
    picked = [c for c in cases() if c.name in SAMPLE]
    assert len(picked) == len(SAMPLE)
    for case in picked:
        ok, last = run_case(case, tmp_path / "in-process")
        assert ok, f"{case.name}: {last}"
        d = tmp_path / "script" / case.name.replace(" ", "_")
        d.mkdir(parents=True)
        proc = subprocess.run([str(script), *case.argv(d)], cwd=ROOT, env=_env(case.env), capture_output=True,
                              text=True, timeout=300)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode == case.rc and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        # the paths differ (each run has its own scratch folder): compare with them taken out
        assert lines[-1].replace(str(d), "D") == last.replace(str(tmp_path / "in-process" / case.name.replace(
            " ", "_")), "D")
