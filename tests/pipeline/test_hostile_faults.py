"""Faults behind issue 39's tracebacks that no preflight can see, each now one error line naming the fix.

Endpoints: tests/fake_endpoint.py on 127.0.0.1 answers garbage JSON, an HTML page or log-probs of the wrong shape
to a stage's own requests (faults a real server cannot show on demand). A full disk is a fault injection: the
parquet writer and the atomic text write raise OSError ENOSPC (no tmpfs is mounted). The preflight cases
(a proxy's 502 at /models, a bad base_url, PREFECT_API_URL at nothing, torchrun variables, ...) run through the
CLI in tests/hostile_faults.py.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from pipeline.backends.base import Request, SamplingParams
from pipeline.backends.chat import ChatCall
from pipeline.backends.openai_backend import OpenAIBackend
from pipeline.core import schemas, store
from pipeline.core.rundir import check_tables
from pipeline.errors import BackendError, DiskFull, InputError
from pipeline.publish.hub import read_record
from tests.fake_endpoint import FakeEndpoint


def _backend(url: str, field: str) -> OpenAIBackend:
    return OpenAIBackend("m", base_url=url, served_model="served", field=field, max_retries=0)


@pytest.mark.parametrize("mode, said", [("garbage", "a body that is not JSON"), ("html200", "a page")])
def test_a_reply_that_is_not_json_is_one_line_naming_the_key(mode, said):
    with FakeEndpoint(mode) as url:
        with pytest.raises(BackendError) as err:
            _backend(url, "generate.openai").chat([ChatCall([{"role": "user", "content": "hi"}], {"max_tokens": 4})])
    msg = str(err.value)
    assert said in msg and "generate.openai.base_url" in msg and "fix: " in msg and "\n" not in msg


def test_logprobs_of_the_wrong_shape_name_score_mode():
    messages = [{"role": "user", "content": "Score 1-5"}]
    with FakeEndpoint("badlogprobs") as url:
        backend = _backend(url, "judge.openai")
        with pytest.raises(BackendError) as err:
            backend.chat([ChatCall(messages, {"max_tokens": 1, "logprobs": True, "top_logprobs": 5})])
        # generation does not ask for log-probs: the same endpoint's text is fine
        out = backend.generate([Request(messages, (0,))], sampling=SamplingParams(1.0, 1.0, 4), max_prompt_tokens=64)
    assert "top_logprobs" in str(err.value) and "judge.score_mode=sampled" in str(err.value)
    assert out[0][0].text == "4"


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_saying_how_to_resume(tmp_path, monkeypatch):
    """Fault injection: the writers raise ENOSPC as a full disk would; no temporary file is left behind."""
    monkeypatch.setattr(schemas.pq, "write_table", _enospc)
    with pytest.raises(DiskFull, match=r"no space left on the disk of .*fix: free space.*rerun the same command"):
        schemas.write_table(schemas.empty("prompts"), tmp_path / "t.parquet", "prompts")
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(DiskFull):
        store.write_json(tmp_path / "m.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_push_record_is_refused_with_its_fix(tmp_path):
    record = tmp_path / "r.json"
    assert read_record(record) == {}
    for text in ('{"a": ', "[1]", '{"a": 1}'):
        record.write_text(text)
        with pytest.raises(InputError, match="fix: delete it"):
            read_record(record)
    record.write_text(json.dumps({"pairs/x.parquet": "ab"}))
    assert read_record(record) == {"pairs/x.parquet": "ab"}


def test_a_stage_table_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "tables" / "judge.json").mkdir(parents=True)
    with pytest.raises(InputError, match=r"judge.json is not a file but a folder.*fix: remove it"):
        check_tables(tmp_path)
    with pytest.raises(InputError, match="judge stage's table belongs"):
        store.StageStore(tmp_path, "judge", "judgments", "f" * 16).reuse(print)
