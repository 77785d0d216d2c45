"""Real `vllm serve` processes for tests and benches, and a proxy that injects faults in front of them.

`.venv-vllm` is its own venv whose editable install may point at another checkout, so every
subprocess run with it gets PYTHONPATH set to the root of the checkout these helpers live in
(`vllm_env`): the code under test is always this tree's.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.backends.model_ref import resolve

ROOT = Path(__file__).resolve().parents[2]
VPY = ROOT / ".venv-vllm" / "bin" / "python"
MODEL = "bundled:smollm2-135m-instruct"


def vllm_env(**extra: str) -> dict:
    """The environment of a .venv-vllm subprocess: this checkout first on the import path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def need_venv():
    if not VPY.exists():
        pytest.fail(f"{VPY} missing; fix: make setup-vllm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `vllm serve` on 127.0.0.1 from .venv-vllm; start()/stop() so fault tests can kill it. float32, so its
    log-probs are comparable with the transformers judge's."""

    def __init__(self, log_path: Path, *, folder: str | None = None, name: str = MODEL, extra: tuple[str, ...] = (),
                 memory: float = 0.3):
        self.port, self.proc, self.log_path = free_port(), None, log_path
        self.folder, self.name, self.extra, self.memory = folder or resolve(MODEL).path, name, extra, memory

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600) -> None:
        cmd = [str(VPY), "-m", "vllm.entrypoints.openai.api_server", "--model", self.folder, "--served-model-name",
               self.name, "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--max-model-len", "512",
               "--gpu-memory-utilization", str(self.memory), "--seed", "0", "--dtype", "float32", *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=vllm_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"vllm serve not healthy after {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the engine core child dies too
            self.proc.wait()


def strip_logprobs(path: str, data: bytes) -> bytes:
    """A response with its log-probs removed: what a server without log-probs answers."""
    if not path.endswith("/chat/completions"):
        return data
    body = json.loads(data)
    for choice in body.get("choices", []):
        choice["logprobs"] = None
    return json.dumps(body).encode()


def space_verdicts(path: str, data: bytes) -> bytes:
    """A response whose log-prob entries all carry a leading space (" 5" for "5"): a tokenizer that emits the
    verdict after a space. The served judge must read it as the same verdict (judges/parsing.py verdict_logprobs)."""
    if not path.endswith("/chat/completions"):
        return data
    body = json.loads(data)
    for choice in body.get("choices", []):
        for position in (choice.get("logprobs") or {}).get("content") or []:
            for entry in [position, *(position.get("top_logprobs") or [])]:
                entry["token"] = " " + entry["token"]
    return json.dumps(body).encode()


class FaultProxy:
    """HTTP proxy in front of the real server, for faults the real server cannot show on demand: answers the first
    chat requests with the given statuses, rewrites responses (`transform(path, body) -> body`), or holds every
    request after the first `hold_after` forwarded ones (a stalled server) until `release()`; held requests are
    then refused without being forwarded (their client is gone). Counts requests and keeps each forwarded body."""

    def __init__(self, target: str, faults: list[int], *, transform=None, hold_after: int | None = None):
        self.faults, self.chat_requests, self.lock = list(faults), 0, threading.Lock()
        self.in_flight = self.max_in_flight = 0  # requests forwarded to the server and not yet answered
        self.starts: list[float] = []  # when each forwarded request arrived (monotonic seconds)
        self.forwarded: list[dict] = []  # the JSON body of every request forwarded to the server
        self.transform, self.hold_after = transform, hold_after
        self.held, self.released = 0, threading.Event()
        self.authorization: set[str] = set()  # Authorization headers seen (a key must reach the server, nowhere else)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # /v1/models (preflight), /health
                try:
                    with urllib.request.urlopen(target + self.path, timeout=30) as r:
                        self._answer(r.status, r.read())
                except urllib.error.HTTPError as exc:
                    self._answer(exc.code, exc.read())

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.authorization.add(self.headers.get("Authorization", ""))
                    proxy.chat_requests += 1
                    fault = proxy.faults.pop(0) if proxy.faults else None
                    hold = proxy.hold_after is not None and len(proxy.forwarded) >= proxy.hold_after
                    if hold:
                        proxy.held += 1
                if fault is not None:
                    error = {"error": {"message": f"injected {fault}", "code": fault}}
                    return self._answer(fault, json.dumps(error).encode())
                if hold:
                    proxy.released.wait()
                    return self._answer(503, b'{"error": {"message": "held by the proxy, not forwarded"}}')
                req = urllib.request.Request(target + self.path, data=body,
                                             headers={"Content-Type": "application/json"})
                with proxy.lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    proxy.starts.append(time.monotonic())
                    proxy.forwarded.append(json.loads(body or b"{}"))
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1
                if proxy.transform is not None and status == 200:
                    data = proxy.transform(self.path, data)
                self._answer(status, data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self) -> None:
        """Stop holding: requests held so far are refused unforwarded; later ones are forwarded."""
        with self.lock:
            self.hold_after = None
        self.released.set()

    def bodies(self, **match) -> list[str]:
        """Digests of the forwarded bodies whose top-level keys equal `match` (e.g. logprobs=True)."""
        return [hashlib.sha256(json.dumps(b, sort_keys=True).encode()).hexdigest() for b in self.forwarded
                if all(b.get(k) == v for k, v in match.items())]

    def close(self):
        self.release()
        self.httpd.shutdown()
