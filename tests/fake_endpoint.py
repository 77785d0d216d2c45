"""A broken OpenAI-compatible endpoint on 127.0.0.1, for hostile-input tests of the openai backend.

Faults a real server cannot show on demand: a proxy's HTML error page where JSON was expected, a 200 whose body
is not JSON, a chat completion whose `logprobs` has the wrong shape. `/models` answers as a server would (listing
the model) unless the mode breaks every route, so a run gets past the preflight to the stage's own requests.

    with FakeEndpoint("garbage") as url:   # url ends in /v1
        ...
Modes: html502 (every route: 502 with an HTML page), html200 (every route: 200 text/html), garbage (chat and
completions: 200 application/json that is not JSON), badlogprobs (chat: a valid reply, whose top_logprobs, where
the request asks for log-probs, is a number instead of a list), canned (no fault: a server that answers at once,
for benchmarks of prefsynth's own overhead: chat and completions with `n` choices of text drawn from a hash of the
request body, top log-probs over the score tokens 1-5 and the verdicts A/B, /classify rewards; keep-alive).
`python tests/fake_endpoint.py canned [--port P]` serves one from its own process and prints its URL.
scripted (a model whose answers a test chooses: `answers` maps a text found in the request's last user message to
the answers generation requests get, each in turn across requests; a judge's verdict request (log-probs, one token)
is scored by `verdict(request text) -> score token`): what a real model cannot be made to write on demand, such as
hostile programs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
MODES = ("html502", "html200", "garbage", "badlogprobs", "canned", "scripted")
WORDS = ("the model answer data prompt reason first then because value step result check simple way each "
         "every small large time work idea plan note fact case point list part good better best clear").split()
VERDICTS = ("1", "2", "3", "4", "5", "A", "B")  # the absolute templates' score tokens and the pairwise verdicts


def _completion(model: str, logprobs: bool) -> dict:
    content = [{"token": "4", "logprob": -0.1, "bytes": None, "top_logprobs": 7}]  # top_logprobs must be a list
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4"},
                         "logprobs": {"content": content} if logprobs else None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def _canned(path: str, body: bytes, model: str) -> dict:
    """An instant, well-formed answer that is a function of the request alone (its JSON with sorted keys: a client
    that orders the keys otherwise gets the same answer)."""
    req = json.loads(body or b"{}")
    rnd = random.Random(hashlib.blake2b(json.dumps(req, sort_keys=True).encode(), digest_size=8).digest())
    usage = {"prompt_tokens": len(body) // 4, "completion_tokens": 0, "total_tokens": 0}
    if path.endswith("/classify"):
        return {"id": "x", "object": "list", "data": [{"index": 0, "probs": [rnd.gauss(0, 1)]}], "usage": usage}
    choices = []
    for i in range(int(req.get("n") or 1)):
        top = None
        if req.get("logprobs") and req.get("max_tokens") == 1:  # a judge's verdict: log-probs over the verdicts
            logits = [rnd.gauss(0, 1.5) for _ in VERDICTS]
            norm = math.log(sum(math.exp(x) for x in logits))
            top = [{"token": t, "logprob": x - norm, "bytes": None} for t, x in zip(VERDICTS, logits)]
            text = max(top, key=lambda e: e["logprob"])["token"]
        else:
            text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, min(60, req.get("max_tokens") or 60))))
        n_tokens = len(text.split())
        usage["completion_tokens"] += n_tokens
        logprobs = {"content": [{"token": text.split()[0], "logprob": -0.1, "bytes": None, "top_logprobs": top}]} \
            if req.get("logprobs") else None
        choices.append({"index": i, "finish_reason": "stop", "logprobs": logprobs,
                        **({"text": text} if path.endswith("/completions") and "/chat/" not in path else
                           {"message": {"role": "assistant", "content": text}})})
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": choices, "usage": usage}


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default 5 drops the SYNs of a client opening 32 connections: 1 s retransmits


class FakeEndpoint:
    def __init__(self, mode: str, *, model: str = "served", port: int = 0, answers: dict[str, list[str]] | None = None,
                 verdict=None):
        assert mode in MODES, mode
        self.mode, self.model, self.requests = mode, model, 0
        self.answers, self.verdict = answers or {}, verdict
        self._turns: dict[str, int] = {}  # scripted: the next answer of each prompt, across requests
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if mode == "canned" else "HTTP/1.0"  # canned: keep-alive, as a real server
            disable_nagle_algorithm = True  # else headers and body as two writes wait out a delayed ACK (40 ms)

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
                if fake.mode == "scripted":
                    return self._send(200, json.dumps(fake.scripted(json.loads(body or b"{}"))).encode(),
                                      "application/json")
                if fake.mode == "canned":
                    return self._send(200, json.dumps(_canned(self.path, body, fake.model)).encode(),
                                      "application/json")
                if fake.mode == "garbage":
                    return self._send(200, b'{"choices": [ {"mess', "application/json")
                asked = bool(json.loads(body or b"{}").get("logprobs"))  # wrong log-probs only where asked for
                return self._send(200, json.dumps(_completion(fake.model, asked)).encode(), "application/json")

            do_GET = do_POST = _answer

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def scripted(self, req: dict) -> dict:
        """A chat completion: the test's verdict for a judge's request, else the answers of the prompt it names."""
        last = next((m["content"] for m in reversed(req.get("messages") or []) if m.get("role") == "user"), "")
        usage = {"prompt_tokens": len(json.dumps(req)) // 4, "completion_tokens": 1, "total_tokens": 0}
        if req.get("logprobs") and req.get("max_tokens") == 1:
            token = self.verdict(last)
            top = [{"token": t, "logprob": 0.0 if t == token else -20.0, "bytes": None} for t in VERDICTS]
            entry = {"token": token, "logprob": 0.0, "bytes": None, "top_logprobs": top}
            choices = [{"index": i, "finish_reason": "length", "message": {"role": "assistant", "content": token},
                        "logprobs": {"content": [entry]}} for i in range(int(req.get("n") or 1))]
        else:
            key = next((k for k in self.answers if k in last), None)
            texts = self.answers.get(key, ["no script for this prompt"])
            with self._lock:  # one request of n, or n requests of one: each answer in turn
                first = self._turns.get(key, 0)
                self._turns[key] = first + int(req.get("n") or 1)
            choices = [{"index": i, "finish_reason": "stop", "logprobs": None,
                        "message": {"role": "assistant", "content": texts[(first + i) % len(texts)]}}
                       for i in range(int(req.get("n") or 1))]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": self.model, "choices": choices,
                "usage": {**usage, "total_tokens": usage["prompt_tokens"] + 1}}

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True, name="fake-endpoint").start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description="serve a FakeEndpoint from this process until killed")
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="served")
    args = ap.parse_args()
    fake = FakeEndpoint(args.mode, model=args.model, port=args.port)
    print(fake.url, flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
