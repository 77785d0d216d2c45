import json

import pytest

from pipeline.backends.base import Completion, Request, SamplingParams, Skipped
from pipeline.request_log import LoggedBackend, RequestLog, request_key

REQ = Request([{"role": "user", "content": "Name a colour."}], (1, 2))
S = SamplingParams(0.8, 0.95, 8)


def test_log_survives_reopen_and_ignores_a_torn_line(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl")
    log.append("a", [Completion("red", 2, "stop"), Completion("", 8, "length")])
    log.append("b", Skipped("too long"))
    log.close()
    with open(tmp_path / "r.jsonl", "a") as fh:
        fh.write('{"key": "c", "compl')
    again = RequestLog(tmp_path / "r.jsonl")
    assert again.entries == {"a": [Completion("red", 2, "stop"), Completion("", 8, "length")], "b": Skipped("too long")}
    again.close()


def test_shard_writers_append_to_their_own_files_and_every_reader_sees_all(tmp_path):
    a = RequestLog(tmp_path / "generate.jsonl", writer="shard-0-of-2")
    b = RequestLog(tmp_path / "generate.jsonl", writer="shard-1-of-2")
    a.append("x", [Completion("red", 2, "stop")])
    b.append("y", Skipped("too long"))
    a.close(), b.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate.shard-0-of-2.jsonl", "generate.shard-1-of-2.jsonl"]
    main = RequestLog(tmp_path / "generate.jsonl")  # a later unsharded resume, or another shard count
    assert main.entries == {"x": [Completion("red", 2, "stop")], "y": Skipped("too long")}
    main.close()


def test_key_changes_with_outputs_not_with_operational_knobs():
    base = request_key("vllm:m@r", REQ, S)
    assert base == request_key("vllm:m@r", Request(list(REQ.messages), (1, 2)), SamplingParams(0.8, 0.95, 8))
    assert base != request_key("vllm:m@r", REQ, SamplingParams(0.7, 0.95, 8))
    assert base != request_key("vllm:m@r", Request(REQ.messages, (1, 3)), S)
    assert base != request_key("openai:m@r", REQ, S)


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
