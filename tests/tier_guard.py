"""The fast tier's guard (a pytest plugin, loaded by tests/conftest.py): a test without a heavy marker
(slow, vllm, browser, gpu) fails if it loads model weights or starts a heavy process.

`make test-fast` runs `-m "not slow and not vllm and not browser and not gpu"` and promises no model, no
Prefect server, no vLLM and no browser. Markers drift as tests grow, so the promise is checked, not trusted.
While an unmarked test runs (its fixtures' set-up and teardown included):
- `from_pretrained` of every transformers model class and Auto class (sentence-transformers and the GGUF
  conversion go through them) refuses to load weights;
- a subprocess whose command line names the CLI, a Prefect or vLLM server, torchrun, playwright or chromium is
  refused.
Each refusal is recorded as well as raised, so a test that swallows the exception still fails at its report.
Tokenizers and models built from a config in memory are allowed: they load no weights. What a subprocess of
another kind loads (`python -c ...`) is not seen here; such a test should carry the `slow` mark itself.
"""

from __future__ import annotations

import os
import subprocess

import pytest

HEAVY_MARKS = ("slow", "vllm", "browser", "gpu")
# programs and `python -m` modules that start a model, a server or a browser (prefect's own ephemeral API runs
# as `python -m uvicorn ... prefect.server...`)
HEAVY_PROGRAMS = ("prefsynth", "torchrun", "vllm", "prefect", "chromium", "node")
HEAVY_MODULES = ("flows.cli", "flows.cli.api_server", "torch.distributed.run", "vllm", "prefect", "uvicorn")
FIX = "mark it @pytest.mark.slow (or vllm / browser), or make it work without the load"


class TierViolation(AssertionError):
    """Raised inside an unmarked test that loads a model or starts a heavy process."""


class _Guard:
    def __init__(self):
        self.active: str | None = None  # the node id of the unmarked test now running
        self.hits: list[str] = []

    def refuse(self, what: str) -> None:
        if self.active is None:
            return
        msg = f"{self.active} has no slow/vllm/browser mark but {what}; fix: {FIX}"
        self.hits.append(msg)
        raise TierViolation(msg)


GUARD = _Guard()


def _guard_loader(owner) -> None:
    original = owner.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        GUARD.refuse(f"loads model weights ({cls.__name__}.from_pretrained({args[0] if args else ''!s:.80}))")
        return original(cls, *args, **kwargs)

    owner.from_pretrained = classmethod(from_pretrained)


def _heavy(args) -> bool:
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    if not argv:
        return False
    if os.path.basename(argv[0]) in HEAVY_PROGRAMS:
        return True
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    return any(module == m or module.startswith(m + ".") for m in HEAVY_MODULES)


def _install() -> None:
    from transformers import PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    for owner in (PreTrainedModel, _BaseAutoModelClass):  # an Auto class reads the config before the model class
        _guard_loader(owner)

    popen_init = subprocess.Popen.__init__

    def guarded_init(self, args, *a, **kw):
        if GUARD.active is not None and _heavy(args):
            line = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
            GUARD.refuse(f"starts a heavy process ({line[:120]})")
        popen_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = guarded_init


def pytest_configure(config):
    _install()


def _fast(item) -> bool:
    return not any(item.get_closest_marker(m) for m in HEAVY_MARKS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    GUARD.active = item.nodeid if _fast(item) else None
    GUARD.hits = []
    try:
        yield
    finally:
        GUARD.active = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if GUARD.hits and report.when in ("setup", "call") and report.passed:
        report.outcome = "failed"
        report.longrepr = "\n".join(GUARD.hits)
        GUARD.hits = []  # reported once
