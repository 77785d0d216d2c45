"""A real run with enough pairs to train on: the tiny config over 12 prompts (about a minute)."""

from pathlib import Path

import pytest

from tests.conftest import TINY, built_once, run_cli


@pytest.fixture(scope="session")
def pairs_run(tmp_path_factory) -> Path:
    def build(out: Path) -> None:
        proc = run_cli("run", "--config", str(TINY), "--out", str(out), "--set", "input.limit=12", "--quiet")
        assert proc.returncode == 0, proc.stderr[-4000:]

    return built_once(tmp_path_factory, "pairs-run", build)
