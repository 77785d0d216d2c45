"""Durable request log: every completed generation request is appended as it arrives.

Keyed by a hash of (backend, generator label, messages, sampling, seeds), never of batch size, concurrency
or endpoint URL, so a killed run resumes without re-requesting what completed, and a config
change that alters outputs misses the log while an operational one does not. One JSON line per
request, flushed and fsynced before the next is written; a torn last line (a kill mid-write) is
ignored on load. API keys never enter a key or a record. Distributed shards write at once, so
each appends to its own file beside the main one (`generate.<writer>.jsonl`); every reader loads
them all, so a resume with another shard count still finds every completed request.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

from pipeline.backends.base import Completion, Request, Result, SamplingParams, Skipped
from pipeline.config import fingerprint


def request_key(label: str, req: Request, sampling: SamplingParams) -> str:
    return fingerprint("request", label, req.messages, list(req.seeds), sampling.temperature, sampling.top_p,
                       sampling.max_new_tokens)


class RequestLog:
    def __init__(self, path: str | Path, *, writer: str | None = None):
        """Loads `path` and its writers' files; appends to `path`, or to its `writer` file."""
        base = Path(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        self.path = base if writer is None else base.with_name(f"{base.stem}.{writer}{base.suffix}")
        self.entries: dict[str, Result] = {}
        self._lock = threading.Lock()
        for file in [base, *sorted(base.parent.glob(f"{base.stem}.*{base.suffix}"))]:
            if not file.exists():
                continue
            for line in file.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn final line of a killed run
                self.entries[rec["key"]] = self._decode(rec)
        self._fh = open(self.path, "a", encoding="utf-8")

    @staticmethod
    def _decode(rec: dict) -> Result:
        if "skipped" in rec:
            return Skipped(rec["skipped"])
        return [Completion(c["text"], c["n_tokens"], c["finish_reason"]) for c in rec["completions"]]

    def append(self, key: str, result: Result) -> None:
        if isinstance(result, Skipped):
            rec = {"key": key, "skipped": result.reason}
        else:
            rec = {"key": key, "completions": [{"text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}
                                               for c in result]}
        with self._lock:
            self._fh.write(json.dumps(rec) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.entries[key] = result

    def close(self) -> None:
        self._fh.close()


class LoggedBackend:
    """Wraps a backend: answers logged requests from the log, sends the rest, logs each as it completes."""

    def __init__(self, backend, log: RequestLog, *, backend_name: str):
        self.backend, self.log = backend, log
        self.label = backend.label
        self.key_label = f"{backend_name}:{backend.label}"  # backends sample differently: never share answers
        self.hits = 0

    def __getattr__(self, name):  # encode(), tokenizer, ... of the wrapped backend
        return getattr(self.backend, name)

    def generate(self, requests: Sequence[Request], *, sampling: SamplingParams, max_prompt_tokens: int,
                 progress=None) -> list[Result]:
        keys = [request_key(self.key_label, r, sampling) for r in requests]
        results: list[Result | None] = [self.log.entries.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        self.hits += len(requests) - len(todo)
        if progress is not None and len(todo) < len(requests):
            progress(len(requests) - len(todo), 0)
        if todo:
            sub = [requests[i] for i in todo]

            def on_result(j: int, result: Result) -> None:
                self.log.append(keys[todo[j]], result)

            fresh = self.backend.generate(sub, sampling=sampling, max_prompt_tokens=max_prompt_tokens,
                                          progress=progress, on_result=on_result)
            for j, result in zip(todo, fresh):
                if keys[j] not in self.log.entries:
                    self.log.append(keys[j], result)
                results[j] = result
        return results  # type: ignore[return-value]
