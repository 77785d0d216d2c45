"""The documentation's runnable examples run (issue 33).

Every fenced ```bash or ```python block that comes right after a `<!-- runnable -->` line in README.md or a page
under docs/ is executed here, page by page, in order, in a fresh working directory, on the tiny config
(data/configs/tiny.yaml) so that the whole set costs about a minute of CI. Each command is the documented one with
only these substitutions, which keep the examples honest without re-running set-up or the default-sized job:

- `make run` (the quick start: set-up, then `prefsynth run` on the default config) is the session's `tiny_run`
  (`prefsynth run --config data/configs/tiny.yaml`, built once for the suite) copied to
  `runs/smollm2-seed-default`, the default run's folder, so the commands after it find the run where the docs say.
  The set-up itself (`make setup`) cannot be re-run inside the suite.
- `make test` is `make -n test`: the target exists and would run pytest (the suite cannot run itself).
- `prefsynth ARGS` is `python -m flows.cli ARGS` (the console script's entry point) plus, per command, the
  tiny-config arguments in TINY_ARGS (a smaller config, fewer training steps, fewer eval prompts).
- A ```python block runs as a script in that directory.

A block that fails names the page, the line and the command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, cli_env

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable -->"
DEFAULT_RUN = "runs/smollm2-seed-default"

# what each command gets on top of the documented arguments, to run on the tiny config in seconds
TINY_ARGS = {
    "run": ["--config", str(TINY)],
    "train": ["--set", "steps=1", "--set", "batch_size=2"],
    "eval": ["--config", str(TINY), "--set", "eval.limit=2"],
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def runnable_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, body) of every fenced block right after a runnable marker."""
    blocks = []
    for m in re.finditer(rf"{re.escape(MARK)}\n```(\w+)\n(.*?)```", text, re.S):
        blocks.append((text[: m.start()].count("\n") + 2, m.group(1), m.group(2)))
    if text.count(MARK) != len(blocks):
        raise AssertionError(f"a {MARK} line is not followed by a fenced block")
    return blocks


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _commands(body: str) -> list[list[str]]:
    joined = body.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def _run(words: list[str], cwd: Path, tiny_run: Path, where: str) -> None:
    env = {**cli_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if words == ["make", "run"]:
        shutil.copytree(tiny_run, cwd / DEFAULT_RUN)
        return
    if words == ["make", "test"]:
        argv = ["make", "-n", "-C", str(ROOT), "test"]
    elif words[0] == "prefsynth":
        argv = [sys.executable, "-m", "flows.cli", *words[1:], *TINY_ARGS.get(words[1], [])]
    else:
        raise AssertionError(f"{where}: no tiny-config mapping for {shlex.join(words)}; add one to TINY_ARGS")
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=540)
    print(f"{where}: {shlex.join(words)}: {time.monotonic() - start:.1f} s")  # the added CI time, shown with -rP
    assert proc.returncode == 0, f"{where}: {shlex.join(words)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if words == ["make", "test"]:
        assert "pytest" in proc.stdout and "ruff check" in proc.stdout, proc.stdout[-2000:]


def test_the_marked_examples_cover_the_quick_start_and_the_tutorial():
    found = {p.relative_to(ROOT).as_posix(): runnable_blocks(p.read_text()) for p in pages()}
    assert any("make run" in body for _, _, body in found["README.md"])
    tutorial = " ".join(body for _, _, body in found["docs/tutorial.md"])
    for step in ("make run", "prefsynth inspect", "prefsynth train", "prefsynth eval"):
        assert step in tutorial, step


@pytest.mark.parametrize("page", [p.relative_to(ROOT).as_posix() for p in pages()
                                  if MARK in p.read_text()])
def test_runnable_examples(page, tiny_run, tmp_path):
    for line, lang, body in runnable_blocks((ROOT / page).read_text()):
        where = f"{page}:{line}"
        if lang == "python":
            proc = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            assert proc.returncode == 0, f"{where}\n{proc.stderr[-3000:]}"
        elif lang == "bash":
            for words in _commands(body):
                _run(words, tmp_path, tiny_run, where)
        else:
            raise AssertionError(f"{where}: a runnable block must be bash or python, not {lang}")
