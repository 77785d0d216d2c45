"""The CLI's flow runtime: user errors reach Prefect's console without a traceback, bugs keep theirs."""

import io
import logging

from flows.cli.runtime import _QuietUserErrors
from pipeline.errors import InputError


def _render(exc: BaseException) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_QuietUserErrors())
    logger = logging.getLogger(f"test-runtime-{id(exc)}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise exc
    except BaseException:
        logger.error("Task run failed with exception", exc_info=True)
    return stream.getvalue()


def test_user_errors_and_interrupts_lose_their_traceback_on_the_console():
    for exc in (InputError("input.path 'x' does not exist; fix: ..."), KeyboardInterrupt()):
        out = _render(exc)
        assert "Task run failed with exception" in out and "Traceback" not in out


def test_a_user_error_wrapped_by_another_exception_is_recognised():
    try:
        try:
            raise InputError("bad row; fix: ...")
        except InputError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        assert "Traceback" not in _render(outer)


def test_bugs_keep_their_traceback():
    out = _render(ZeroDivisionError("division by zero"))
    assert "Traceback (most recent call last)" in out and "ZeroDivisionError" in out


def test_the_console_filter_is_in_place_before_any_flow_module_is_imported():
    """`import prefect` configures logging lazily: the filter must reach the console handler Prefect creates then
    (else a user error raised in a stage printed Prefect's traceback of the flow run)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, cli_env

    code = ("import logging\nfrom flows.cli.runtime import quiet_prefect_console\nquiet_prefect_console()\n"
            "from prefect.logging.handlers import PrefectConsoleHandler\n"
            "hs = [h for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()] "
            "for h in getattr(lg, 'handlers', []) if isinstance(h, PrefectConsoleHandler)]\n"
            "assert hs and all(any(type(f).__name__ == '_QuietUserErrors' for f in h.filters) for h in hs), hs\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(shared_api=False), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
