"""Durable request log: every completed request is appended as it arrives; a resume reads back only
the requests it asks for.

Keys hash (backend, generator label, messages, sampling, seeds), never batch size, concurrency or
endpoint URL, so a killed run resumes without re-requesting what completed, and a config change
that alters outputs misses the log while an operational one does not. API keys never enter a key
or a record.

Records: one JSON line per request, `{"key", "completions": [...]}` or `{"key", "skipped": reason}`,
plus an optional `"usage"` object (input/output tokens, for accounting) and an optional `"payload"`
(what a judge reads beyond the text: top log-probs at the verdict position, a reward), flushed to the
OS before the next (a killed process loses none) and fsynced by the first append `SYNC_EVERY_S` after the
last fsync, and on close: a group commit, since one fsync per request, on the event loop that sends them all,
capped a stage near 450 requests/s (issue 37); a power loss can drop the answers since the last fsync, which a
resume sends again. Each writer appends to its own file (`generate.jsonl`, or `generate.<writer>.jsonl` for
a distributed shard), so concurrent writers (processes, Ray tasks, machines sharing the folder)
never share a file. A kill mid-write leaves a torn last line: it is never indexed, and the file's
next writer ends it with a newline before appending, so it cannot swallow the next record.

Index (`generate.index.sqlite`): key -> (file, byte offset, length) of each line, and how many
bytes of each file it covers. It is a cache of the JSONL files, never a second truth: each lookup
first indexes the bytes appended since (by any writer); an index that is missing, unreadable or
of another version is rebuilt from the files; a file replaced behind it is indexed afresh. So a
run directory of an earlier version is indexed once, by its first lookup, and a lookup reads only
the lines of the keys asked for: opening a log costs memory for the current chunk's requests, not
for the whole log (bench/request_log.py). Indexing reads only the key at each line's start (keys
need no JSON escaping); a lookup parses the line, and where a key has several lines the last
one that parses wins (main file, then writers' files by name, as the old load-everything reader).
Index updates are serialised across processes by a file lock beside it (filelock, as the run lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from filelock import FileLock

from pipeline.backends.base import Completion, Reply, Request, Result, SamplingParams, Skipped
from pipeline.config import fingerprint

INDEX_VERSION = 1  # PRAGMA user_version of the index; any other value means rebuild it
PREFIX = b'{"key": "'  # every record's first bytes (json.dumps of a dict whose first item is the key)
END = ord("}")  # and its last before the newline
SCAN_BLOCK = 8 << 20  # bytes read at a time while indexing
HEAD = 4096  # bytes of a file's start whose hash tells the index it is still the file it indexed
SQL_BATCH = 500  # keys per `IN (...)` query (SQLite caps bound parameters)
SYNC_EVERY_S = 0.05  # group commit: an append fsyncs (all flushed records) once this long has passed since the last


def request_key(label: str, req: Request, sampling: SamplingParams) -> str:
    raw = () if req.prefix is None else (req.prefix,)  # chat requests keep the keys of earlier versions
    return fingerprint("request", label, req.messages, list(req.seeds), sampling.temperature, sampling.top_p,
                       sampling.max_new_tokens, *raw)


@dataclass(frozen=True)
class LogEntry:
    result: Result
    usage: dict | None = None  # whatever the writer attached (input/output tokens), else None
    payload: dict | None = None  # a judge's extra reply data (top log-probs, reward), else None


def encode(key: str, result: Result, usage: dict | None = None, payload: dict | None = None) -> bytes:
    """One record as its JSON line (the layout of every version: the key first)."""
    if not (key.isascii() and key.isprintable() and '"' not in key and "\\" not in key):
        raise ValueError(f"request log key {key!r} needs JSON escaping, so the index could not read it; "
                         "fix: use printable ASCII keys without quotes or backslashes (request_key's hex digests)")
    if isinstance(result, Skipped):
        rec: dict = {"key": key, "skipped": result.reason}
    else:
        rec = {"key": key, "completions": [{"text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}
                                           for c in result]}
    if usage is not None:
        rec["usage"] = usage
    if payload is not None:
        rec["payload"] = payload
    return (json.dumps(rec) + "\n").encode()


def decode(line: bytes) -> tuple[str, LogEntry] | None:
    """(key, entry) of a complete line, or None for a torn or foreign one (skipped, as the old reader did)."""
    try:
        rec = json.loads(line)
        if "skipped" in rec:
            return rec["key"], LogEntry(Skipped(rec["skipped"]), rec.get("usage"), rec.get("payload"))
        return rec["key"], LogEntry([Completion(c["text"], c["n_tokens"], c["finish_reason"])
                                     for c in rec["completions"]], rec.get("usage"), rec.get("payload"))
    except (ValueError, TypeError, KeyError):
        return None


def scan(path: Path, start: int, end: int, file_id: int, done: list[int]) -> Iterator[tuple[str, int, int, int]]:
    """(key, file_id, offset, length) of each line wholly inside bytes [start, end) of `path` that starts
    and ends like a record (`{"key": "...` to `}`); `done[0]` ends after the last complete line (a torn
    tail awaits its newline). Lines are parsed when looked up, not here: a first index of GBs stays cheap."""
    done[0] = start
    with open(path, "rb") as fh:
        fh.seek(start)
        pos, carry = start, b""  # pos: file offset of carry[0]
        while pos + len(carry) < end:
            block = fh.read(min(SCAN_BLOCK, end - pos - len(carry)))
            if not block:
                break
            buf, i = carry + block, 0
            while (j := buf.find(b"\n", i)) != -1:
                if buf.startswith(PREFIX, i) and buf[j - 1] == END and (q := buf.find(b'"', i + len(PREFIX), j)) != -1:
                    yield buf[i + len(PREFIX):q].decode("ascii", "replace"), file_id, pos + i, j + 1 - i
                i = j + 1
            done[0] = pos + i
            pos, carry = pos + i, buf[i:]


def _head(path: Path, covered: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read(min(covered, HEAD))).hexdigest()


class RequestLog:
    def __init__(self, path: str | os.PathLike, *, writer: str | None = None):
        """Reads nothing yet; appends to `path`, or to its `writer` file. Lookups see every writer's file."""
        base = Path(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.path = base if writer is None else base.with_name(f"{base.stem}.{writer}{base.suffix}")
        self.index_path = base.with_name(f"{base.stem}.index.sqlite")
        self._file_lock = FileLock(str(base.with_name(f"{base.stem}.index.lock")))
        self._write_mutex, self._index_mutex = threading.Lock(), threading.Lock()
        self.stats = {"indexed_bytes": 0, "read_bytes": 0, "lookups": 0}  # this object's I/O, for tests and bench/
        self._fh = open(self.path, "ab")
        self._synced = float("-inf")  # the first record is fsynced at once
        if self._fh.tell() and self._last_byte() != b"\n":
            self._write(b"\n")  # end a killed writer's torn line: alone it is skipped, merged it would eat a record

    def _last_byte(self) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1)

    def _write(self, data: bytes) -> None:
        with self._write_mutex:
            self._fh.write(data)
            self._fh.flush()
            if time.monotonic() - self._synced >= SYNC_EVERY_S:
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()

    def append(self, key: str, result: Result, *, usage: dict | None = None, payload: dict | None = None) -> None:
        """Durably record `key`'s result (and `usage`, `payload`: JSON-serialisable dicts) before returning."""
        self._write(encode(key, result, usage, payload))

    def lookup(self, keys: Sequence[str]) -> list[LogEntry | None]:
        """Batch in, batch out, same order: each key's logged entry, or None. Reads only those lines."""
        if not keys:
            return []
        wanted = list(dict.fromkeys(keys))
        with self._index_mutex, self._file_lock, self._index() as con:
            names = dict(con.execute("SELECT id, name FROM files"))
            rows = [r for i in range(0, len(wanted), SQL_BATCH) for r in con.execute(
                "SELECT key, file, offset, length FROM entries WHERE key IN (%s)"
                % ",".join("?" * len(wanted[i:i + SQL_BATCH])), wanted[i:i + SQL_BATCH])]
        self.stats["lookups"] += 1
        order = {fid: (name != self.base.name, name) for fid, name in names.items()}
        rows.sort(key=lambda r: (order[r[1]], r[2]), reverse=True)  # the last line of a key first
        found: dict[str, LogEntry] = {}
        with contextlib.ExitStack() as stack:
            handles: dict[int, int] = {}
            for key, fid, offset, length in rows:
                if key in found:
                    continue
                if fid not in handles:
                    try:
                        handles[fid] = stack.enter_context(open(self.base.with_name(names[fid]), "rb")).fileno()
                    except FileNotFoundError:  # removed since the index looked: its records are misses
                        handles[fid] = -1
                if handles[fid] < 0:
                    continue
                line = os.pread(handles[fid], length, offset)
                self.stats["read_bytes"] += len(line)
                got = decode(line)
                if got is not None and got[0] == key:  # else torn, or the file changed under the index
                    found[key] = got[1]
        return [found.get(k) for k in keys]

    def count(self) -> int:
        """Distinct keys with a record line in any writer's file (indexes what is new, parses no record).
        A method, not __len__: an empty log must stay truthy where callers test `if log`."""
        with self._index_mutex, self._file_lock, self._index() as con:
            return con.execute("SELECT count(DISTINCT key) FROM entries").fetchone()[0]

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.close()

    # -- the index (callers hold both locks) ----------------------------------------------------------
    def _index(self):
        """A connection (closed on leaving `with`) to an index covering every complete line of every file."""
        try:
            return contextlib.closing(self._connect())
        except sqlite3.DatabaseError:  # unreadable (a foreign or damaged file): it is a cache, rebuild it
            for p in (self.index_path, self.index_path.with_name(self.index_path.name + "-journal")):
                p.unlink(missing_ok=True)
            return contextlib.closing(self._connect())

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.index_path, timeout=600, isolation_level=None)
        try:
            if con.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
                con.executescript(f"""
                    BEGIN IMMEDIATE;
                    DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS entries;
                    CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,
                                        head TEXT NOT NULL);
                    CREATE TABLE entries (key TEXT NOT NULL, file INTEGER NOT NULL, offset INTEGER NOT NULL,
                                          length INTEGER NOT NULL, PRIMARY KEY (key, file, offset)) WITHOUT ROWID;
                    PRAGMA user_version = {INDEX_VERSION};
                    COMMIT;""")
            con.execute("PRAGMA cache_size = -65536")  # 64 MiB: a first build inserts keys in random order
            self._catch_up(con)
        except BaseException:
            con.close()
            raise
        return con

    def _catch_up(self, con: sqlite3.Connection) -> None:
        """Index the complete lines appended since the index last looked, one transaction per file."""
        known = {name: (fid, size, head) for fid, name, size, head in con.execute("SELECT * FROM files")}
        others = sorted(self.base.parent.glob(f"{self.base.stem}.*{self.base.suffix}"))
        present = [p for p in [self.base, *others] if p.exists()]
        for name in known.keys() - {p.name for p in present}:  # a writer's file was removed: forget its lines
            with _transaction(con):
                con.execute("DELETE FROM entries WHERE file = ?", (known[name][0],))
                con.execute("DELETE FROM files WHERE name = ?", (name,))
        for path in present:
            size = path.stat().st_size
            fid, covered, head = known.get(path.name, (None, 0, ""))
            replaced = size < covered or (covered > 0 and _head(path, covered) != head)  # another file by that name
            if size == covered and not replaced:
                continue
            with _transaction(con):
                if fid is None:
                    fid = con.execute("INSERT INTO files (name, size, head) VALUES (?, 0, '')", (path.name,)).lastrowid
                elif replaced:
                    con.execute("DELETE FROM entries WHERE file = ?", (fid,))
                    covered = 0
                done = [covered]
                lines = scan(path, covered, size, fid, done)
                con.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)", lines)
                con.execute("UPDATE files SET size = ?, head = ? WHERE id = ?", (done[0], _head(path, done[0]), fid))
            self.stats["indexed_bytes"] += done[0] - covered


@contextlib.contextmanager
def _transaction(con: sqlite3.Connection):
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


class LoggedBackend:
    """Wraps a backend: answers logged requests from the log, sends the rest, logs each as it completes
    (with the token usage the backend reports). Answers read back are booked with the backend's meter, if any:
    they were paid for by the attempt that logged them and count toward the run's spending."""

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
        entries = self.log.lookup(keys)
        results: list[Result | None] = [e.result if e else None for e in entries]
        book_hits(self.backend, entries)
        todo = [i for i, r in enumerate(results) if r is None]
        self.hits += len(requests) - len(todo)
        if progress is not None and len(todo) < len(requests):
            progress(len(requests) - len(todo), 0)
        if todo:
            sub = [requests[i] for i in todo]
            logged: set[int] = set()

            def on_result(j: int, result: Result, usage: dict | None = None) -> None:
                self.log.append(keys[todo[j]], result, usage=usage)
                logged.add(j)

            fresh = self.backend.generate(sub, sampling=sampling, max_prompt_tokens=max_prompt_tokens,
                                          progress=progress, on_result=on_result)
            for j, (i, result) in enumerate(zip(todo, fresh)):
                if j not in logged:  # a backend that does not call on_result (or skipped before sending)
                    self.log.append(keys[i], result)
                results[i] = result
        return results  # type: ignore[return-value]


def book_hits(backend, entries: Sequence[LogEntry | None]) -> None:
    """Book the usage of answers read from the log with the backend's meter (pipeline/core/accounting.py)."""
    meter = getattr(backend, "meter", None)
    if meter is not None:
        for e in entries:
            if e is not None and e.usage:
                meter.book(backend, e.usage)


def call_key(label: str, kind: str, body) -> str:
    """The key of a judge call: the judge's label, the call's kind and its whole request body (never the endpoint)."""
    return fingerprint("call", label, kind, body)


def logged_calls(log: RequestLog | None, backend, keys: Sequence[str], send) -> tuple[list[Reply], int]:
    """(replies, hits): each key's logged reply, and `send(indices, on_result)` for the rest, logged one by one
    as `on_result(j, reply)` reports them. Batch in, batch out, same order. Without a log, everything is sent."""
    entries = log.lookup(list(keys)) if log is not None else [None] * len(keys)
    book_hits(backend, entries)
    replies: list[Reply | None] = [Reply(e.result, e.payload, e.usage) if e else None for e in entries]
    todo = [i for i, r in enumerate(replies) if r is None]
    if todo:
        def on_result(j: int, reply: Reply) -> None:
            if log is not None:
                log.append(keys[todo[j]], reply.result, usage=reply.usage, payload=reply.payload)

        for i, reply in zip(todo, send(todo, on_result)):
            replies[i] = reply
    return replies, len(keys) - len(todo)  # type: ignore[return-value]
