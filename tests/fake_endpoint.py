"""A broken OpenAI-compatible endpoint on 127.0.0.1, for hostile-input tests of the openai backend.

Faults a real server cannot show on demand: a proxy's HTML error page where JSON was expected, a 200 whose body
is not JSON, a chat completion whose `logprobs` has the wrong shape. `/models` answers as a server would (listing
the model) unless the mode breaks every route, so a run gets past the preflight to the stage's own requests.

    with FakeEndpoint("garbage") as url:   # url ends in /v1
        ...
Modes: html502 (every route: 502 with an HTML page), html200 (every route: 200 text/html), garbage (chat and
completions: 200 application/json that is not JSON), badlogprobs (chat: a valid reply, whose top_logprobs, where
the request asks for log-probs, is a number instead of a list).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
MODES = ("html502", "html200", "garbage", "badlogprobs")


def _completion(model: str, logprobs: bool) -> dict:
    content = [{"token": "4", "logprob": -0.1, "bytes": None, "top_logprobs": 7}]  # top_logprobs must be a list
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4"},
                         "logprobs": {"content": content} if logprobs else None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


class FakeEndpoint:
    def __init__(self, mode: str, *, model: str = "served"):
        assert mode in MODES, mode
        self.mode, self.model, self.requests = mode, model, 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer(self) -> None:
                fake.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if fake.mode == "html502":
                    return self._send(502, HTML, "text/html")
                if fake.mode == "html200":
                    return self._send(200, HTML, "text/html")
                if self.path.endswith("/models"):
                    body = {"object": "list", "data": [{"id": fake.model, "object": "model"}]}
                    return self._send(200, json.dumps(body).encode(), "application/json")
                if fake.mode == "garbage":
                    return self._send(200, b'{"choices": [ {"mess', "application/json")
                asked = bool(json.loads(body or b"{}").get("logprobs"))  # wrong log-probs only where asked for
                return self._send(200, json.dumps(_completion(fake.model, asked)).encode(), "application/json")

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True, name="fake-endpoint").start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
