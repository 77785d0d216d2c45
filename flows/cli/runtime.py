"""How a CLI command runs a flow: its own guarded Prefect API, clean interrupts, one-line errors.

- `signals()` wraps every command: SIGTERM becomes an exception like Ctrl-C's.
- `flow_session()` wraps every command that runs a flow (`run`, `train`): a Prefect API that dies
  with the command (flows/cli/api_server.py), and on the way out Prefect's log and event workers drained
  while the API still answers (otherwise Prefect retries its log shipping against a stopped server for minutes).
  If that server dies first, the command says so in one line and exits 2 at once (`_watch_server`).
- Interrupts: the first Ctrl-C or SIGTERM raises in the main thread, where the stage work runs;
  Prefect records the flow run as crashed, finished stage parts stay on disk (they were written
  atomically), and the CLI exits 130 (143 for SIGTERM) saying how to resume. A second Ctrl-C
  while that happens exits at once.
- Prefect's console handler prints tracebacks of every exception a task raises. An error the user
  caused (a `PrefsynthError`) or an interrupt is already reported by the CLI in one line, so for
  those the console record loses its traceback (the API still stores it). Bugs keep theirs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from pipeline.errors import BackendError, PrefsynthError, disk_full


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (not an Exception: nothing may swallow it)."""


QUIET = (PrefsynthError, KeyboardInterrupt, Terminated)
API_POLL_S = 0.5


def _user_caused(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:  # Prefect may wrap the stage's error
        if isinstance(exc, QUIET) or disk_full(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class _QuietUserErrors(logging.Filter):
    """Drop the traceback of user-caused errors and interrupts from Prefect's console output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _user_caused(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        msg = record.getMessage()
        if msg.startswith("View at http://127.0.0.1:") and os.environ.get("PREFSYNTH_EPHEMERAL_API"):
            return False  # our ephemeral API serves no UI: the link would lead nowhere
        return True


def quiet_prefect_console() -> None:
    """Attach the filter to every Prefect console handler (Prefect configures logging at import)."""
    import prefect.main  # noqa: F401  (sets up Prefect's logging config; `import prefect` alone defers it)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _QuietUserErrors) for f in handler.filters
            ):
                handler.addFilter(_QuietUserErrors())


def _drain_prefect() -> None:
    """Ship Prefect's queued logs and events while the API still answers."""
    try:
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=5)
    except Exception:  # draining is best effort: the command's own result is already decided
        pass


@contextlib.contextmanager
def signals():
    """First Ctrl-C raises KeyboardInterrupt, first SIGTERM raises Terminated; a second one of either
    (while Prefect records the crash and the server stops) exits at once."""
    hits = []

    def handler(signum, frame):
        code = 130 if signum == signal.SIGINT else 143
        if hits:
            os._exit(hits[0])
        hits.append(code)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _api_lost(url: str, why: str, *, ours: bool = False) -> str:
    fix = ("rerun the same command to resume (it starts a new one)" if ours else
           "restart that server (or unset PREFECT_API_URL) and rerun the same command to resume")
    return f"the Prefect API at {url} stopped answering during the run ({why}); finished stages are kept; fix: {fix}"


def _watch_server(server, done: threading.Event) -> None:
    """Runs beside the command: if the command's own Prefect API server dies under it (killed, out of memory),
    nothing more of the run can be recorded and Prefect's client would retry every call for minutes, printing
    tracebacks. Say so in one line and exit 2 at once, as a SIGKILL would stop it: every finished stage and
    stage part is already on disk (written atomically), so rerunning the same command resumes."""
    while not done.wait(API_POLL_S):
        code = server.proc.poll()
        if code is not None and not done.is_set():
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            why = f"its server exited with status {code}"
            sys.stderr.write(f"prefsynth: error: {_api_lost(server.api_url, why, ours=True)}\n")
            sys.stderr.flush()
            os._exit(2)


@contextlib.contextmanager
def flow_session():
    """Run the block (which calls flows) with a guarded Prefect API and quiet user errors."""
    from flows.cli.api_server import answers, prefect_api

    with prefect_api() as server:
        done = threading.Event()
        if server is not None:
            os.environ["PREFSYNTH_EPHEMERAL_API"] = "1"
            threading.Thread(target=_watch_server, args=(server, done), daemon=True, name="api-watch").start()
        quiet_prefect_console()
        try:
            yield
        except Exception as exc:
            url = os.environ.get("PREFECT_API_URL")
            if isinstance(exc, PrefsynthError) or not url or answers(url):
                raise
            # the API died under the run (killed, its machine gone): Prefect's client fails wherever it was
            raise BackendError(_api_lost(url, f"{type(exc).__name__}: {str(exc)[:120]}")) from None
        finally:
            _drain_prefect()
            done.set()  # before prefect_api() stops the server: its exit is expected from here on
