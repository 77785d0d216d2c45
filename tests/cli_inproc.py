"""`flows.cli.main(argv)` in the test's own process, judged as the console script would be.

A CLI subprocess costs a fresh interpreter (torch, transformers, Prefect imports: seconds each). Tests of argument
handling and error messages run the same entry function here instead: the given environment, the working
directory at the repository root, stdout and stderr captured, SystemExit turned into its status and an escaping
exception into the traceback Python would print (status 1). `allow_flows=False` fails a command that reaches a
Prefect flow, for callers that promise every case stops in the preflight (what Prefect would log there could
otherwise escape the captured streams). A few true subprocess tests keep the console script itself covered.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ReachedFlow(Exception):
    pass


@contextlib.contextmanager
def _no_flow():
    raise ReachedFlow("the command reached a Prefect flow; it was expected to fail in the preflight")
    yield  # pragma: no cover


def run_main(argv: list[str], *, env: dict | None = None, allow_flows: bool = True) -> subprocess.CompletedProcess:
    import flows.cli.runtime
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_session = dict(os.environ), os.getcwd(), flows.cli.runtime.flow_session
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.chdir(ROOT)
    if not allow_flows:
        flows.cli.runtime.flow_session = _no_flow
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # what the interpreter would print for an escaping exception
                traceback.print_exc()
                rc = 1
    finally:
        flows.cli.runtime.flow_session = saved_session
        os.chdir(saved_cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
    return subprocess.CompletedProcess(["prefsynth", *argv], rc, out.getvalue(), err.getvalue())
