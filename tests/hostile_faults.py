"""Hostile cases of issue 39's "tracebacks instead of one-line errors", beside tests/hostile.py's (which runs them).

Broken endpoints come from tests/fake_endpoint.py (a proxy's 502 page, HTML where JSON belongs: faults a real
server cannot show on demand); the rest are files, links and environment variables built in the case's folder.
Every case still fails in the preflight, in a second, without loading a model. The faults a preflight cannot see
(garbage JSON or malformed log-probs from a stage's own requests, a full disk, the Prefect API killed mid-run)
are tested in tests/pipeline/test_hostile_faults.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.fake_endpoint import FakeEndpoint
from tests.hostile import Case, config, fake_run, jsonl, run_args

_ENDPOINTS: dict[str, str] = {}


def endpoint(mode: str) -> str:
    """The URL of a FakeEndpoint in `mode`, started once per process (a daemon thread)."""
    if mode not in _ENDPOINTS:
        fake = FakeEndpoint(mode)
        _ENDPOINTS[mode] = fake.__enter__()
    return _ENDPOINTS[mode]


def _loop(d: Path) -> str:
    os.symlink(d / "loop-b", d / "loop-a")
    os.symlink(d / "loop-a", d / "loop-b")
    return str(d / "loop-a")


def _table_folder(d: Path) -> str:
    out = d / "half"
    (out / "tables" / "prompts.parquet").mkdir(parents=True)
    return str(out)


def _push_record(d: Path, text: str) -> str:
    run = fake_run(d)
    (run / ".push").mkdir()
    (run / ".push" / "me__data@main.json").write_text(text)
    return str(run)


def _train(d: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(fake_run(d)), "--out", str(d / "t"), *extra]


def fault_cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    served = ("--set", "generate.backend=openai", "--set", "generate.openai.served_model=served")
    add(Case("openai endpoint answers a proxy's 502 page",
             lambda d: run_args(d, *served, "--set", f"generate.openai.base_url={endpoint('html502')}"),
             "answered HTTP 502"))
    add(Case("openai endpoint answers an HTML page",
             lambda d: run_args(d, *served, "--set", f"generate.openai.base_url={endpoint('html200')}"),
             "not JSON"))
    add(Case("openai base_url not a URL", lambda d: run_args(d, *served, "--set", "generate.openai.base_url=a b"),
             "generate.openai.base_url"))
    add(Case("judge base_url with a bad port", lambda d: run_args(d, "--set", "judge.openai.base_url=http://h:99999"),
             "Port out of range"))
    add(Case("PREFECT_API_URL pointing at nothing", lambda d: run_args(d), "PREFECT_API_URL",
             env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}))
    add(Case("push: .push record cut short", lambda d: ["push", _push_record(d, '{"pairs/a'), "--repo", "me/data"],
             "push record"))
    add(Case("push: .push record a JSON list", lambda d: ["push", _push_record(d, "[1]"), "--repo", "me/data"],
             "push record"))
    for name, text in (("lone surrogate", '{"prompt": "a \\ud800 b"}'), ("NUL", '{"prompt": "a \\u0000 b"}')):
        add(Case(f"input prompt with a {name}", lambda d, text=text: run_args(
            d, "--set", f"input.path={jsonl(d, [text])}"), "p.jsonl:1: prompt holds"))
    deep = '{"prompt": "x", "m": ' + "[" * 50000 + "]" * 50000 + "}"
    add(Case("input line of deeply nested JSON", lambda d: run_args(d, "--set", f"input.path={jsonl(d, [deep])}"),
             "nested too deeply"))
    add(Case("input .json array nested deeply", lambda d: run_args(
        d, "--set", f"input.path={config(d, '[' * 50000 + ']' * 50000, 'p.json')}"), "nested too deeply"))
    add(Case("--out a symlink loop", lambda d: run_args(d, out=_loop(d)), "symbolic link loop"))
    add(Case("--out under a symlink loop", lambda d: run_args(d, out=_loop(d) + "/sub"), "symbolic link loop"))
    add(Case("stage table is a folder", lambda d: run_args(d, out=_table_folder(d)), "where a stage table belongs",
             intact=lambda d: (d / "half" / "tables" / "prompts.parquet").is_dir()))
    add(Case("train: RANK not an integer", lambda d: _train(d), "RANK='zero'", env={"RANK": "zero"}))
    add(Case("train: WORLD_SIZE not an integer", lambda d: _train(d), "WORLD_SIZE='2.5'", env={"WORLD_SIZE": "2.5"}))
    add(Case("train: LOCAL_RANK not an integer", lambda d: _train(d), "LOCAL_RANK='gpu0'",
             env={"LOCAL_RANK": "gpu0", "WORLD_SIZE": "1"}))
    add(Case("train: RANK past WORLD_SIZE", lambda d: _train(d), "RANK=3 is not below WORLD_SIZE=2",
             env={"RANK": "3", "WORLD_SIZE": "2"}))
    add(Case("train: parallel fsdp without torchrun's rendezvous", lambda d: _train(d, "--set", "parallel=fsdp"),
             "needs MASTER_ADDR", env={"WORLD_SIZE": "1"}))
    # errors name the key to fix (issue 39)
    add(Case("iterate: eval.prompts missing", lambda d: ["iterate", "--out", str(d / "it"), "--set",
                                                         f"eval.prompts={d}/none.jsonl"], "eval.prompts: '"))
    add(Case("eval: eval.prompts with a NUL", lambda d: ["eval", "--model", "bundled:smollm2-135m-instruct", "--out",
                                                         str(d / "ev"), "--set", "eval.prompts=" + jsonl(
                                                             d, ['{"prompt": "a \\u0000"}'])], "eval.prompts: "))
    return c

