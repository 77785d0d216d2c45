import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.backends import make_backend
from pipeline.backends.base import Completion, Request, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.backends.request_log import LogEntry, LoggedBackend, RequestLog, request_key
from pipeline.config import load_config
from pipeline.core import schemas
from pipeline.core.store import StageStore
from pipeline.errors import TransientBackendError
from pipeline.stages import generate
from tests.conftest import ROOT

REQ = Request([{"role": "user", "content": "Name a colour."}], (1, 2))
S = SamplingParams(0.8, 0.95, 8)
RED = [Completion("red", 2, "stop"), Completion("", 8, "length")]


def old_line(key: str, result) -> str:
    """The previous version's RequestLog.append record, reproduced: run directories it wrote hold these lines."""
    if isinstance(result, Skipped):
        rec = {"key": key, "skipped": result.reason}
    else:
        rec = {"key": key, "completions": [{"text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}
                                           for c in result]}
    return json.dumps(rec) + "\n"


def results(log: RequestLog, keys: list[str]) -> list:
    return [e.result if e else None for e in log.lookup(keys)]


def test_log_survives_reopen_and_ignores_a_torn_line(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl")
    log.append("a", RED)
    log.append("b", Skipped("too long"), usage={"prompt_tokens": 7})
    log.close()
    with open(tmp_path / "r.jsonl", "a") as fh:
        fh.write('{"key": "c", "compl')
    again = RequestLog(tmp_path / "r.jsonl")
    assert again.lookup(["b", "a", "c"]) == [LogEntry(Skipped("too long"), {"prompt_tokens": 7}), LogEntry(RED), None]
    again.append("d", [Completion("blue", 2, "stop")])  # after the torn line: must not be merged into it
    again.close()
    third = RequestLog(tmp_path / "r.jsonl")
    assert results(third, ["a", "c", "d"]) == [RED, None, [Completion("blue", 2, "stop")]] and third.count() == 3
    third.close()


def test_shard_writers_append_to_their_own_files_and_every_reader_sees_all(tmp_path):
    a = RequestLog(tmp_path / "generate.jsonl", writer="shard-0-of-2")
    b = RequestLog(tmp_path / "generate.jsonl", writer="shard-1-of-2")
    a.append("x", [Completion("red", 2, "stop")])
    b.append("y", Skipped("too long"))
    a.close(), b.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate.shard-0-of-2.jsonl", "generate.shard-1-of-2.jsonl"]
    main = RequestLog(tmp_path / "generate.jsonl")  # a later unsharded resume, or another shard count
    assert results(main, ["x", "y", "z"]) == [[Completion("red", 2, "stop")], Skipped("too long"), None]
    main.close()


def test_key_changes_with_outputs_not_with_operational_knobs():
    base = request_key("vllm:m@r", REQ, S)
    assert base == request_key("vllm:m@r", Request(list(REQ.messages), (1, 2)), SamplingParams(0.8, 0.95, 8))
    assert base != request_key("vllm:m@r", REQ, SamplingParams(0.7, 0.95, 8))
    assert base != request_key("vllm:m@r", Request(REQ.messages, (1, 3)), S)
    assert base != request_key("openai:m@r", REQ, S)


def test_a_lookup_reads_only_the_lines_it_asks_for(tmp_path):
    """The first lookup indexes every byte once; after that, opening and looking up reads the asked lines only."""
    path = tmp_path / "generate.jsonl"
    lines = [old_line(f"k{i}", [Completion(f"answer {i} " * 50, 100, "stop")]) for i in range(300)]
    path.write_text("".join(lines))
    log = RequestLog(path)
    assert results(log, ["k7"]) == [[Completion("answer 7 " * 50, 100, "stop")]]
    assert log.stats["indexed_bytes"] == path.stat().st_size and log.stats["read_bytes"] == len(lines[7])
    log.append("k300", Skipped("too long"))  # indexed by the next lookup, whoever makes it
    log.close()
    again = RequestLog(path)
    assert results(again, ["k299", "k300", "k3"]) == [[Completion("answer 299 " * 50, 100, "stop")],
                                                      Skipped("too long"), [Completion("answer 3 " * 50, 100, "stop")]]
    added = len(old_line("k300", Skipped("too long")))
    assert again.stats["indexed_bytes"] == added
    assert again.stats["read_bytes"] == len(lines[299]) + added + len(lines[3])
    again.close()


def test_the_index_is_a_cache_rebuilt_from_the_files(tmp_path):
    path = tmp_path / "generate.jsonl"
    log = RequestLog(path, writer="w")
    for i in range(5):
        log.append(f"k{i}", [Completion(str(i), 1, "stop")])
    assert results(log, ["k1"]) == [[Completion("1", 1, "stop")]]
    log.close()
    index = tmp_path / "generate.index.sqlite"
    index.write_bytes(b"not a database" * 100)
    assert results(RequestLog(path), ["k4", "k0"]) == [[Completion("4", 1, "stop")], [Completion("0", 1, "stop")]]
    index.unlink()
    assert RequestLog(path).count() == 5
    # a writer's file replaced behind the index (shorter, or other records): its old entries must not answer
    (tmp_path / "generate.w.jsonl").write_text(old_line("k9", Skipped("gone")))
    assert results(RequestLog(path), ["k0", "k9"]) == [None, Skipped("gone")]
    (tmp_path / "generate.w.jsonl").write_text("".join(old_line(f"n{i}", Skipped(str(i))) for i in range(9)))
    assert results(RequestLog(path), ["k9", "n0", "n8"]) == [None, Skipped("0"), Skipped("8")]


def test_the_last_record_of_a_key_wins_as_in_the_old_reader(tmp_path):
    """The old reader loaded the main file, then writers' files by name, into one dict: the last parseable
    line of a key won. A line torn just after a `}` looks like a record to the index and must not win."""
    one, two, three = ([Completion(t, 1, "stop")] for t in ("one", "two", "three"))
    (tmp_path / "generate.jsonl").write_text(old_line("k", one) + old_line("j", one))
    shard0 = old_line("k", two) + old_line("j", three) + old_line("j", two)
    (tmp_path / "generate.shard-0-of-2.jsonl").write_text(shard0)
    torn = old_line("k", three).rstrip("\n")[:-2] + "\n"  # ends in "}" but does not parse
    (tmp_path / "generate.shard-1-of-2.jsonl").write_text(old_line("i", one) + torn)
    assert results(RequestLog(tmp_path / "generate.jsonl"), ["k", "j", "i"]) == [two, two, one]


def _writer_process(folder: str, n: int, count: int) -> None:
    """One of several concurrent writers (spawned processes): appends, and looks up as it goes."""
    log = RequestLog(os.path.join(folder, "generate.jsonl"), writer=f"shard-{n}")
    for i in range(count):
        log.append(f"w{n}-{i}", [Completion(f"text {n} {i}", i, "stop")])
        if i % 10 == 9:  # every lookup indexes what every writer appended since: they contend for the index
            assert results(log, [f"w{n}-{j}" for j in range(i + 1)]) == [[Completion(f"text {n} {j}", j, "stop")]
                                                                       for j in range(i + 1)]
    log.close()


def test_concurrent_writer_processes_share_one_index(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path), n, 60)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    log = RequestLog(tmp_path / "generate.jsonl")
    keys = [f"w{n}-{i}" for n in range(3) for i in range(60)]
    assert results(log, keys) == [[Completion(f"text {k[1]} {k.split('-')[1]}", int(k.split("-")[1]), "stop")]
                                  for k in keys]
    assert log.count() == 180


BUILD = """
import sys
from pipeline.backends.request_log import RequestLog
log = RequestLog(sys.argv[1])
print("ready", flush=True)
log.lookup(["k0"])
print("done", flush=True)
"""


def test_a_kill_while_indexing_leaves_a_log_that_answers(tmp_path):
    """SIGKILL a real process while it builds the index of an old-layout log, at several moments; the
    next open must answer every request (SQLite rolls a torn transaction back; the rest is re-indexed)."""
    path = tmp_path / "generate.jsonl"
    path.write_text("".join(old_line(f"k{i}", [Completion(f"t{i}", i, "stop")]) for i in range(60_000)))
    for delay in (0.05, 0.3, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", BUILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log = RequestLog(path)
        keys = ["k0", "k31337", "k59999", "k60000"]
        assert results(log, keys) == [[Completion(f"t{i}", i, "stop")] for i in (0, 31337, 59999)] + [None]
        assert log.count() == 60_000
        (tmp_path / "generate.index.sqlite").unlink()


@pytest.mark.slow
def test_logged_backend_answers_repeats_from_the_log(tmp_path):
    from pipeline.backends.hf import TransformersBackend

    inner = TransformersBackend("bundled:smollm2-135m-instruct", batch_size=2)
    calls = []
    real = inner.generate
    inner.generate = lambda reqs, **kw: calls.append(len(reqs)) or real(reqs, **kw)
    log = RequestLog(tmp_path / "r.jsonl")
    first = LoggedBackend(inner, log, backend_name="transformers").generate([REQ], sampling=S, max_prompt_tokens=64)
    log.close()
    log = RequestLog(tmp_path / "r.jsonl")
    wrapped = LoggedBackend(inner, log, backend_name="transformers")
    other = Request([{"role": "user", "content": "Say hi."}], (4,))
    second = wrapped.generate([REQ, other], sampling=S, max_prompt_tokens=64)
    assert second[0] == first[0] and calls == [1, 1] and wrapped.hits == 1
    assert [json.loads(line)["key"] for line in (tmp_path / "r.jsonl").read_text().splitlines()][-1] == \
        request_key("transformers:" + inner.label, other, S)


@pytest.mark.slow
def test_a_generate_stage_logs_each_request_and_a_rerun_answers_from_the_log(tmp_path):
    """The stage as `prefsynth run` drives it, on the real bundled model: a fresh log (empty, which must not
    read as "no log") gets one record per prompt; with the stage's outputs removed, as after a kill once
    every request completed, the rerun answers every prompt from the log with the same candidates."""
    (tmp_path / "tables").mkdir()
    prompts = schemas.from_rows([{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"Say {i}."}]}
                                 for i in range(3)], "prompts")
    schemas.write_table(prompts, tmp_path / "tables" / "prompt_filter.parquet", "prompts")
    cfg = load_config(None, ["generate.backend=transformers", "generate.n=2", "generate.max_new_tokens=4"])
    first = generate.run(tmp_path, cfg, "fp", log=lambda *_: None)
    lines = (tmp_path / "requests" / "generate.jsonl").read_text().splitlines()
    assert first["request_log_hits"] == 0 and len(lines) == len({json.loads(line)["key"] for line in lines}) == 3
    table = pq_rows(tmp_path)
    for name in ("generate.json", "generate.parquet"):
        (tmp_path / "tables" / name).unlink()
    again = generate.run(tmp_path, cfg, "fp", log=lambda *_: None)
    assert again["request_log_hits"] == 3 and pq_rows(tmp_path) == table
    assert len((tmp_path / "requests" / "generate.jsonl").read_text().splitlines()) == 3


def pq_rows(run_dir):
    return schemas.read_table(run_dir / "tables" / "generate.parquet", "candidates").to_pylist()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


@pytest.mark.parametrize("shards", [None, 2], ids=["one-process", "two-shards-then-gather"])
def test_a_run_directory_of_the_old_layout_resumes_without_resending(tmp_path, shards):
    """A run directory as the previous version leaves it when killed mid-generate: chunk 0 (p0, p1) committed
    as a part, every other prompt's request in old-layout logs (the main file and the files of a 3-shard run,
    one ending in a torn line). The resume runs the openai backend against a port where nothing listens, with
    no retries: a request sent would fail the stage, so every answer must come from the old log."""
    run_dir = tmp_path / "run"
    (run_dir / "tables").mkdir(parents=True)
    pids = [f"p{i}" for i in range(6)]
    prompts = schemas.from_rows([{"prompt_id": p, "messages": [{"role": "user", "content": f"Question {p}?"}]}
                                 for p in pids], "prompts")
    schemas.write_table(prompts, run_dir / "tables" / "prompt_filter.parquet", "prompts")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    cfg = load_config(None, ["generate.backend=openai", f"generate.openai.base_url={url}",
                             "generate.openai.max_retries=0", "generate.n=2", "publish.chunk_prompts=2"])
    g = cfg.generate
    label = resolve(g.model).label
    sampling = SamplingParams(g.temperature, g.top_p, g.max_new_tokens)

    def key(pid: str) -> str:  # what the stage asks the log for (pipeline/stages/generate.py)
        seeds = tuple(generate.candidate_seed(cfg.seed, pid, k) for k in range(g.n))
        messages = [{"role": "user", "content": f"Question {pid}?"}]
        return request_key(f"openai:{label}", Request(messages, seeds), sampling)

    logged = {p: [Completion(f"logged {k} for {p}", 4, "stop") for k in range(g.n)] for p in pids[:5]}
    logged["p5"] = Skipped("too long")
    req = run_dir / "requests"
    req.mkdir()
    (req / "generate.jsonl").write_text("".join(old_line(key(p), logged[p]) for p in ("p0", "p1", "p2")))
    torn = old_line(key("p4"), logged["p4"])[:40]  # killed mid-write; p4 was answered again by another shard
    (req / "generate.shard-0-of-3.jsonl").write_text(old_line(key("p3"), logged["p3"]) + torn)
    (req / "generate.shard-1-of-3.jsonl").write_text(old_line(key("p4"), logged["p4"]))
    (req / "generate.shard-2-of-3.jsonl").write_text(old_line(key("p5"), logged["p5"]))
    before = {p.name: p.read_bytes() for p in req.iterdir()}
    store = StageStore(run_dir, "generate", "candidates", generate.stage_fingerprint(cfg, "fp"))
    committed = schemas.from_rows([
        {"prompt_id": p, "candidate_id": f"{p}-{k:02d}", "generator": label, "text": f"committed {k} for {p}",
         "n_tokens": 3, "finish_reason": "stop", "sampling": {"temperature": g.temperature, "top_p": g.top_p,
                                                              "max_new_tokens": g.max_new_tokens, "mode": "sample"}}
        for p in ("p0", "p1") for k in range(g.n)], "candidates")
    store.write_part(committed, ["p0", "p1"], {"skipped": {}, "request_log_hits": 0}, position=0)

    for shard in ([(0, shards), (1, shards)] if shards else []):
        assert generate.run(run_dir, cfg, "fp", log=lambda *_: None, shard=shard) == store.shard_meta(shard)
    meta = generate.run(run_dir, cfg, "fp", log=lambda *_: None)
    assert meta["request_log_hits"] == 4 and meta["skipped"] == {"p5": "too long"}  # p0, p1 not even looked up
    table = store.read()
    assert table.column("text").to_pylist() == [f"committed {k} for {p}" for p in ("p0", "p1") for k in range(2)] + \
        [f"logged {k} for {p}" for p in ("p2", "p3", "p4") for k in range(2)]
    for name, data in before.items():  # nothing was sent, so nothing was logged; the old files are as they were
        assert (req / name).read_bytes() == data, name
    assert all(not p.read_bytes() for p in req.glob("generate.shard-*-of-2.jsonl"))
    with pytest.raises(TransientBackendError):  # the premise: a request the log does not hold fails
        make_backend("openai", g.model, openai=g.openai.model_dump()).generate(
            [REQ], sampling=S, max_prompt_tokens=64)


def test_judge_replies_keep_their_payload_and_a_logged_call_is_not_sent_again(tmp_path):
    """A judge call's record keeps what the judge reads beyond the text (top log-probs) and its usage; a second
    pass over the same keys is answered from the log and books the logged usage with the backend's meter."""
    from pipeline.backends.base import Reply
    from pipeline.backends.request_log import logged_calls

    class Meter:
        booked: list = []

        def book(self, backend, usage):
            self.booked.append(usage)

    backend = type("B", (), {"meter": Meter()})()
    tops = {"top_logprobs": [[["1", -0.5], ["2", -1.5]]], "structured": False}
    sent = []

    def send(todo, on_result):
        sent.extend(todo)
        replies = [Reply([Completion("1", 1, "length")], tops, {"input_tokens": 50, "output_tokens": 1}) for _ in todo]
        for j, r in enumerate(replies):
            on_result(j, r)
        return replies

    log = RequestLog(tmp_path / "judge.jsonl")
    first, hits = logged_calls(log, backend, ["k1", "k2"], send)
    assert hits == 0 and sent == [0, 1] and first[0].payload == tops
    again, hits = logged_calls(log, backend, ["k2", "k3"], send)
    assert hits == 1 and sent == [0, 1, 1] and again[0] == first[1]  # indices into that call's keys
    assert Meter.booked == [{"input_tokens": 50, "output_tokens": 1}]
    log.close()
    assert RequestLog(tmp_path / "judge.jsonl").lookup(["k1"])[0].payload == tops
