"""OpenAI batch files: write a batch input file, have a batch runner answer it, read the answers back.

Format (the OpenAI Batch API's, which `vllm run-batch` reads and writes): one input line per request,
`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`; one output line per
request, `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`. The
OpenAI Batch API writes requests that failed or expired to a separate error file (`response` null,
`error: {"code": "batch_expired" | ..., "message"}`); both files are read, and a request without a
200 answer is a failure its caller may resubmit (pipeline/backends/openai_backend.py does, for
`batch_rounds` rounds, sending only the failures again).

Files live in RUN/requests/batches/ and are named by a digest of their input lines
(`<digest>.input.jsonl`, `.output.jsonl`, `.errors.jsonl`), so the same pending requests always map to
the same files: with `batch_command` set the command answers them (`{input}` and `{output}` are
replaced by the paths; `vllm run-batch -i {input} -o {output} --model M` is the tested runner);
without it the stage stops after writing the input file and says where the output file goes, and
the rerun finds an output file put there by hand (a batch run anywhere else) and ingests it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

from openai.types.chat import ChatCompletion

from pipeline.backends.base import Reply, Request, Result, SamplingParams, Skipped
from pipeline.backends.chat import CONTEXT_ERROR, OPTIONAL, ChatCall, input_bound, reply_of, sum_usage
from pipeline.errors import BackendError, BatchPending, ConfigError

URL = "/v1/chat/completions"


def _write_lines(path: Path, lines: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(tmp, path)


def _read_lines(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for raw in path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:  # a torn or foreign line answers nothing; its request is resubmitted
                continue
    return out


def files(lines: list[dict], folder: Path) -> tuple[Path, Path, Path]:
    digest = hashlib.sha256("".join(json.dumps(x, sort_keys=True) for x in lines).encode()).hexdigest()[:16]
    return folder / f"{digest}.input.jsonl", folder / f"{digest}.output.jsonl", folder / f"{digest}.errors.jsonl"


def round_trip(lines: list[dict], *, folder: Path, command: list[str] | None, field: str) -> dict[str, dict]:
    """{custom_id: output line} of one batch round over `lines` (input lines as above)."""
    folder.mkdir(parents=True, exist_ok=True)
    inp, out, err = files(lines, folder)
    if not out.exists():
        _write_lines(inp, lines)
        if not command:
            raise BatchPending(f"{field}.mode is 'batch' and {field}.batch_command is not set: {len(lines)} requests "
                               f"are in {inp}; fix: run them as an OpenAI batch (e.g. `vllm run-batch -i {inp} -o "
                               f"{out} --model MODEL`, or the Batch API), put the output file at {out} (and any error "
                               f"file at {err}), then rerun the same command")
        argv = [a.replace("{input}", str(inp)).replace("{output}", str(out) + ".part") for a in command]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 or not Path(str(out) + ".part").exists():
            tail = " ".join((proc.stderr or proc.stdout or "").split()[-40:])
            raise BackendError(f"{field}.batch_command exited {proc.returncode} on {inp} ({tail}); fix: run the "
                               "command by hand to see why, or correct batch_command")
        os.replace(str(out) + ".part", out)  # an output file is whole or absent: a killed runner leaves no answers
    got: dict[str, dict] = {}
    for line in _read_lines(err) + _read_lines(out):  # an answer in the output file wins over an error line
        if "custom_id" in line:
            got[line["custom_id"]] = line
    return got


def answer(line: dict | None) -> tuple[dict | None, str | None]:
    """(response body of a 200 answer, else None; the failure's message, else None)."""
    if line is None:
        return None, "no answer in the output file"
    response = line.get("response") or {}
    if response.get("status_code") == 200 and response.get("body"):
        return response["body"], None
    error = line.get("error") or (response.get("body") or {}).get("error") or response.get("body") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    return None, f"{code or response.get('status_code') or 'error'}: {message or 'no message'}"


def run_calls(backend, calls: Sequence[ChatCall], *, on_result=None, progress=None) -> list[Reply]:
    """An openai backend's calls in batch mode: every call in one batch file; what failed or expired (and only
    that) goes into the next round's file. `on_result(i, reply)` as answers are read."""
    replies: list[Reply | None] = [None] * len(calls)
    pending, last = list(range(len(calls))), ""
    for _ in range(backend.batch_rounds):
        lines, sent, tickets = [], {}, []
        try:
            for i in pending:
                params, extra = backend._params(calls[i])
                lines.append({"custom_id": f"call-{i}", "method": "POST", "url": URL,
                              "body": {"model": backend.model, "messages": calls[i].messages, **params, **extra}})
                sent[i] = {*params, *extra} - ({"n"} if params.get("n", 1) == 1 else set())
                if backend.meter is not None:
                    tickets.append(backend.meter.reserve(backend, chars=input_bound(calls[i].messages),
                                                         max_out=params.get("n", 1) * params.get("max_tokens", 256)))
            answers = round_trip(lines, folder=Path(backend.batch_dir), command=backend.batch_command,
                                 field=backend.field)
        except BaseException:
            for t in tickets:
                backend.meter.release(t, None)
            raise
        failed = []
        for k, i in enumerate(pending):
            body, error = answer(answers.get(f"call-{i}"))
            reply = None
            if body is not None:
                resp = ChatCompletion.model_validate(body)
                reply = reply_of(resp, len(resp.choices), structured="response_format" in sent[i])
            elif CONTEXT_ERROR.search(error):
                reply = Reply(Skipped(f"server rejected the prompt for its context: {error[:300]}"))
            if tickets:
                backend.meter.release(tickets[k], None if reply is None else reply.usage)
            if reply is None:
                backend.unsupported |= {f for f, pat in OPTIONAL.items() if f in sent[i] and pat.search(error)}
                failed.append(i)
                last = error
                continue
            backend.requests += 1
            replies[i] = reply
            if on_result is not None:
                on_result(i, reply)
            if progress is not None:
                progress(1)
        pending = failed
        if not pending:
            return replies  # type: ignore[return-value]
    raise BackendError(f"{backend.field}: {len(pending)} of {len(calls)} batch requests still failed after "
                       f"{backend.batch_rounds} rounds (last: {last[:200]}); fix: rerun the same command (only those "
                       f"are resubmitted) or raise {backend.field}.batch_rounds")


def run_generate(backend, requests: Sequence[Request], sampling: SamplingParams, *, progress=None,
                 on_result=None) -> list[Result]:
    """Generation in batch mode: one batch call per candidate seed; a request is answered (and logged) once all its
    seeds are."""
    if any(r.prefix is not None for r in requests):
        raise ConfigError(f"{backend.field}.mode: 'batch' takes chat requests only, and prompt synthesis sends raw "
                          f"text (the completions endpoint); fix: --set {backend.field}.mode=online")
    base = {"max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p}
    owners = [(i, s) for i, r in enumerate(requests) for s in r.seeds]
    got: dict[int, dict[int, Reply]] = {}

    def collect(j: int, reply: Reply) -> None:
        i, seed = owners[j]
        got.setdefault(i, {})[seed] = reply
        if len(got[i]) == len(requests[i].seeds):
            parts = [got[i][s] for s in requests[i].seeds]
            skipped = [p.result for p in parts if isinstance(p.result, Skipped)]
            result = skipped[0] if skipped else [c for p in parts for c in p.result]
            got[i] = {"result": result}
            if on_result is not None:
                on_result(i, result, sum_usage(p.usage for p in parts))
            if progress is not None:
                progress(1, 0 if skipped else sum(c.n_tokens for c in result))

    run_calls(backend, [ChatCall(requests[i].messages, {**base, "seed": s}) for i, s in owners], on_result=collect)
    return [got[i]["result"] for i in range(len(requests))]
