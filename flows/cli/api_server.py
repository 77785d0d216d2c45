"""The Prefect API of one `prefsynth` command, started so that it can never outlive the command.

Without PREFECT_API_URL, Prefect starts a temporary API server (uvicorn) on first use and stops it
at interpreter exit. That server sits in the command's process group, so a terminal's Ctrl-C kills
it while the flow still needs it to record its final state (Prefect then retries its logging for
minutes), and a SIGKILL or SIGTERM of the command leaves it running for good.

So the CLI starts the server itself, before Prefect is imported:
- in its own session: Ctrl-C at the terminal reaches the command only, which marks its flow run
  crashed and stops the server on the way out;
- with a parent-death watch: the server process polls its parent pid and shuts down (SIGTERM to
  itself, a hard exit 5 s later) when the command is gone, whatever killed it;
- Prefect's global settings are refreshed (`refresh_global_settings_context`) to point at it, so
  every client in the process, its background log and event workers included, uses this server.
The server itself is Prefect's own app (`prefect.server.api.server:create_app`) in ephemeral mode,
as Prefect runs it; `python -m flows.cli.api_server PARENT_PID PORT` is the entry of that process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import BackendError

POLL_S = 0.5
START_TIMEOUT_S = 180.0


def _watch_parent(parent: int) -> None:
    """Runs in the server process: stop it once the command that started it is gone."""
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(5)
    os._exit(1)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class ApiServer:
    """A guarded ephemeral Prefect API: `start()` returns at once, `wait()` until it answers."""

    def __init__(self):
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._log = Path(tempfile.mkdtemp(prefix="prefsynth-api-")) / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ApiServer":
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        root = str(Path(__file__).resolve().parents[2])  # the repository (flows/cli/ is two below)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(self._log, "wb") as log:
            cmd = [sys.executable, "-m", "flows.cli.api_server", str(os.getpid()), str(self.port)]
            self.proc = subprocess.Popen(cmd,
                                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy(self.api_url):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self._log.read_text(errors="replace").strip().splitlines()[-1:] if self._log.exists() else []
        self.stop()
        raise BackendError(f"the local Prefect API server did not start ({' '.join(tail) or 'no output'}); "
                           "fix: start one with `prefect server start` and set PREFECT_API_URL")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def answers(url: str) -> bool:
    """Whether anything answers HTTP at the API `url` (any status: Prefect Cloud's /health may want a key)."""
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def check_given_api(url: str, where: str) -> None:
    """A Prefect API the user named must answer before a flow starts (else Prefect's client fails with a
    traceback). Any HTTP answer will do (Prefect Cloud's /health may want a key); no answer at all fails."""
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BackendError(f"{where} {url!r} does not answer ({reason}); fix: start that server (`prefect server "
                           "start`), correct the URL, or unset PREFECT_API_URL to let prefsynth run its own") from None


@contextlib.contextmanager
def prefect_api():
    """Use PREFECT_API_URL (env or profile) when set and answering; else run a guarded ephemeral server for the
    block."""
    if os.environ.get("PREFECT_API_URL"):
        check_given_api(os.environ["PREFECT_API_URL"], "PREFECT_API_URL")
        yield None
        return
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:  # the active Prefect profile names a server (or Prefect Cloud)
        check_given_api(str(get_current_settings().api.url), "the Prefect profile's PREFECT_API_URL")
        yield None
        return
    server = ApiServer().start()
    try:
        server.wait()
        os.environ["PREFECT_API_URL"] = server.api_url
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
        yield server
    finally:
        server.stop()
        if os.environ.get("PREFECT_API_URL") == server.api_url:
            del os.environ["PREFECT_API_URL"]
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()


def _serve(parent: int, port: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
