"""Issue 39, through the real CLI: faults that only a stage's own requests or writes meet (no preflight sees them)
end the run with one error line naming the fix, exit 2, no traceback, and the stages finished before stay on disk.

The endpoint is tests/fake_endpoint.py on 127.0.0.1 (a body that is not JSON, log-probs of the wrong shape: faults a
real server cannot show on demand); the full disk is a fault injection (the parquet writer raises ENOSPC for one
stage's table), which needs the CLI's entry function in this process."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pipeline.core import schemas
from tests.conftest import TINY, cli_in_process, run_cli
from tests.fake_endpoint import FakeEndpoint

pytestmark = pytest.mark.slow  # the tiny run's prompt filter loads the embedding model


def _served(url: str, *, judge: bool) -> list[str]:
    keys = ["generate.backend=openai", "generate.openai.served_model=served", f"generate.openai.base_url={url}",
            "generate.openai.max_retries=0"]
    if judge:
        keys += ["judge.backend=openai", "judge.openai.served_model=served", f"judge.openai.base_url={url}",
                 "judge.score_mode=logprobs", "judge.openai.max_retries=0"]
    return [x for kv in keys for x in ("--set", kv)]


def _one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("prefsynth: error: ") and "fix: " in last, last
    for n in needles:
        assert n in last, last
    return last


@pytest.mark.parametrize("mode, judge, said, kept", [
    ("garbage", False, "generate.openai.base_url", ["prompts", "prompt_filter"]),
    ("badlogprobs", True, "judge.score_mode=sampled", ["prompts", "prompt_filter", "generate"]),
])
def test_a_broken_reply_mid_run_is_one_line_and_keeps_the_finished_stages(tmp_path, mode, judge, said, kept):
    out = tmp_path / "run"
    with FakeEndpoint(mode) as url:
        res = run_cli("run", "--config", str(TINY), "--out", str(out), *_served(url, judge=judge))
    assert res.returncode == 2, res.stderr[-3000:]
    _one_error_line(res.stderr, said, "not an OpenAI-compatible reply")
    for stage in kept:
        assert (out / "tables" / f"{stage}.parquet").is_file() and (out / "tables" / f"{stage}.json").is_file()
    assert not (out / "pairs").exists() and not (out / "manifest.json").exists()


def test_a_full_disk_mid_run_is_one_line_saying_how_to_resume(tmp_path, monkeypatch):
    """Fault injection: the judge table's parquet write raises ENOSPC as a full disk would."""
    real = schemas.pq.write_table

    def full_for_judge(table, where, *args, **kwargs):
        if "judge" in Path(str(where)).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(schemas.pq, "write_table", full_for_judge)
    out = tmp_path / "run"
    with FakeEndpoint("canned") as url:
        res = cli_in_process("run", "--config", str(TINY), "--out", str(out), *_served(url, judge=True))
    assert res.returncode == 2, res.stderr[-3000:]
    _one_error_line(res.stderr, "no space left", "rerun the same command")
    assert (out / "tables" / "generate.parquet").is_file()
    assert not list((out / "tables").glob("judge*.parquet")) and not list(out.rglob("*.tmp*"))
