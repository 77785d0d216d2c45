"""Judges on a real `vllm serve` (judge.backend openai): the tiny config through the CLI, in logprobs mode and
in sampled mode, killed and resumed, stopped by its budget and continued; a served reward model.

Every run goes through a FaultProxy (tests/pipeline/vllm_serving.py) in front of the session's server, which
counts and keeps the requests the server received; the proxy injects only what a real server cannot show on
demand (no log-probs, a stall while the pipeline is killed). Generation runs in process (transformers,
deterministic), and judge requests go one at a time (judge.openai.concurrency=1): vLLM is not batch-invariant,
so only then are two runs' log-probs bit-identical and their rows comparable with ==.
Marked `vllm`: `-m "not vllm"` deselects them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.core import schemas
from tests.conftest import ROOT, TINY, cli_env
from tests.pipeline.vllm_serving import MODEL, FaultProxy, Server, space_verdicts, strip_logprobs

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
SECRET = "sk-prefsynth-test-secret-5f1c0ffee"
KEY_ENV = "PREFSYNTH_TEST_JUDGE_KEY"
JUDGES = ["judge.backend=openai", "judge.pairwise_templates=[pairwise-ab-v1]", "judge.aggregate=mean_normalised",
          "judge.openai.concurrency=1", f"judge.openai.api_key_env={KEY_ENV}"]
JUDGE_REQUESTS = 4 * 3 + 4 * 3 * 2  # 12 candidates (absolute), 12 candidate pairs in both orders (pairwise)


def cli(out: Path, url: str, *sets: str, background: bool = False):
    args = [sys.executable, "-m", "flows.cli", "run", "--config", str(TINY), "--out", str(out), "--quiet",
            "--set", f"judge.openai.base_url={url}/v1"]
    for s in (*JUDGES, *sets):
        args += ["--set", s]
    env = {**cli_env(), KEY_ENV: SECRET, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    if background:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def rows(out: Path, table: str) -> list[dict]:
    return pq.read_table(out / "tables" / f"{table}.parquet").to_pylist()


def pairs(out: Path) -> list[dict]:
    return pq.read_table(out / "pairs" / "train-00000-of-00001.parquet").to_pylist()


@pytest.fixture(scope="module")
def served_run(server, tmp_path_factory):
    """One uninterrupted tiny run with an absolute and a pairwise judge on the server, in logprobs mode."""
    proxy = FaultProxy(server.url, [])
    out = tmp_path_factory.mktemp("served-judges")
    try:
        proc = cli(out, proxy.url)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proxy, proc


def test_served_judges_match_in_process_judges(served_run):
    """logprobs mode: the same ok flags as the in-process transformers judges and scores within 2e-2 (float32 server),
    for an absolute and a pairwise template; each judgment requested once; the API key reached the server and
    nothing else (run directory, logs, output)."""
    from pipeline.stages.judge import build_judges, judge_candidates

    out, proxy, proc = served_run
    served = rows(out, "judge")
    prompts = schemas.read_table(out / "tables" / "prompts.parquet", "prompts")
    candidates = schemas.read_table(out / "tables" / "generate.parquet", "candidates")
    in_process = judge_candidates(prompts, candidates, build_judges(load_config(TINY, JUDGES[1:3]))).to_pylist()
    assert len(served) == len(in_process) == 24 and {r["kind"] for r in served} == {"absolute", "pairwise"}
    reference = {(h["judge"], h["candidate_id"]): h for h in in_process}  # the stage's rows come chunk by chunk
    worst = 0.0
    for s in served:
        h = reference[(s["judge"], s["candidate_id"])]
        assert (s["kind"], s["ok"]) == (h["kind"], h["ok"])
        assert s["score_mode"] == h["score_mode"] == "logprobs"
        if h["ok"]:
            worst = max(worst, abs(s["score"] - h["score"]))
    print(f"largest |served - in-process| score difference: {worst:.2e}")  # shown with -rP
    assert worst <= 2e-2, worst
    assert sum(r["ok"] for r in served) >= 20  # the comparison is over real scores, not over failures
    judged = proxy.bodies(logprobs=True)
    assert len(judged) == len(set(judged)) == JUDGE_REQUESTS
    manifest = json.loads((out / "manifest.json").read_text())
    assert {m["score_mode"] for m in manifest["judge_modes"].values()} == {"logprobs"}
    judge_usage = manifest["usage"]["stages"]["judge"]
    assert judge_usage[0]["requests"] == JUDGE_REQUESTS and judge_usage[0]["input_tokens"] > 100 * JUDGE_REQUESTS
    assert manifest["usage"]["stages"]["rationale"][0]["requests"] == manifest["rows"]["pairs"]
    # the key: sent to the server, written nowhere
    assert f"Bearer {SECRET}" in proxy.authorization
    leaks = [str(p) for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks and SECRET not in proc.stdout + proc.stderr


def test_no_logprobs_falls_back_to_sampled_mode(server, tmp_path):
    """A server that returns no log-probs (a proxy strips them: a fault a real vLLM server cannot be made to show on
    demand) makes the judge score in sampled mode: JSON-schema verdicts, recorded as score_mode 'sampled' with their
    parse failures; the manifest and the card show each judge's mode and parse-failure rate."""
    proxy = FaultProxy(server.url, [], transform=strip_logprobs)
    try:
        proc = cli(tmp_path, proxy.url, "judge.pairwise_templates=[]", "judge.aggregate=mean", "judge.samples=3",
                   "judge.sample_max_tokens=12")
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    judged = rows(tmp_path, "judge")
    assert len(judged) == 12 and {r["score_mode"] for r in judged} == {"sampled"}
    for r in judged:
        raw = json.loads(r["raw"])
        assert raw["mode"] == "sampled" and raw["samples"] == 3 and raw["structured"] is True
        assert r["ok"] == (raw["failures"] < 3) and (r["score"] is None) == (not r["ok"])  # never a default score
        if r["ok"]:
            parsed = [int(v) for v in raw["verdicts"] if v is not None]
            assert r["score"] == pytest.approx(sum(parsed) / len(parsed))
    assert sum(r["ok"] for r in judged) >= 10
    assert len(proxy.bodies(logprobs=True)) == 1  # the one probe that found no log-probs
    sampled = [b for b in proxy.forwarded if b.get("n") == 3]
    assert len(sampled) == 12 and all(b["response_format"]["type"] == "json_schema" for b in sampled)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (judge_id, mode), = manifest["judge_modes"].items()
    assert mode["score_mode"] == "sampled" and mode["parse_failure_rate"] is not None
    print(f"sampled mode: {sum(r['ok'] for r in judged)}/12 ok, parse-failure rate {mode['parse_failure_rate']}")
    card = (tmp_path / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith(f"| `{judge_id}`"))
    assert line.rstrip(" |").endswith(f"| `sampled` | {mode['parse_failure_rate']}")


def test_verdicts_after_a_space_are_read_as_the_verdict(served_run, server, tmp_path):
    """Every log-prob entry renamed with a leading space (a proxy rewrites them: a vocabulary the session's model does
    not have): the verdict " 5" is the verdict "5", so the judgments and pairs equal the unrenamed run's."""
    proxy = FaultProxy(server.url, [], transform=space_verdicts)
    try:
        proc = cli(tmp_path, proxy.url)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    uninterrupted = served_run[0]
    judged = rows(tmp_path, "judge")
    assert {r["score_mode"] for r in judged} == {"logprobs"} and sum(r["ok"] for r in judged) >= 20
    assert judged == rows(uninterrupted, "judge") and pairs(tmp_path) == pairs(uninterrupted)


def test_judge_stage_killed_and_resumed(served_run, server, tmp_path):
    """SIGKILL in the judge stage (after chunk 1's part and 2 requests of chunk 2; the proxy stalls the 21st), then
    the same command again: every judgment is requested exactly once over both runs (counted at the proxy), and the
    rows equal the uninterrupted run's."""
    done_before_kill = 20  # chunk 1 (2 prompts): 6 absolute + 6 candidate pairs x 2 orders = 18; then 2 of chunk 2
    proxy = FaultProxy(server.url, [], hold_after=done_before_kill)
    try:
        proc = cli(tmp_path, proxy.url, background=True)
        log = tmp_path / "requests" / "judge.jsonl"
        deadline = time.monotonic() + 900
        while not (proxy.held and log.exists() and len(log.read_bytes().splitlines()) >= done_before_kill):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "the judge stage never reached the stall"
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "tables" / "judge.parquet").exists()
        assert len(list((tmp_path / "tables").glob("judge.parts-*/part-*.json"))) == 1
        proxy.release()
        again = cli(tmp_path, proxy.url)
    finally:
        proxy.close()
    assert again.returncode == 0, again.stderr[-4000:]
    judged = proxy.bodies(logprobs=True)
    print(f"judge requests over the killed run and its rerun: {len(judged)} ({len(set(judged))} distinct)")
    assert len(judged) == len(set(judged)) == JUDGE_REQUESTS  # none sent twice, none missing
    uninterrupted = served_run[0]
    assert rows(tmp_path, "judge") == rows(uninterrupted, "judge")
    assert pairs(tmp_path) == pairs(uninterrupted)


def test_budget_stops_the_run_and_a_larger_budget_continues(served_run, server, tmp_path):
    """budget.usd below the run's cost: the run stops before passing it (exit 3, spent, budget and the fix in one
    message), finished parts kept; rerun with a larger budget: the rows and token counts of a run without a budget."""
    price = "prices={'bundled:smollm2-135m-instruct': {input: 1000, output: 1000}}"  # USD per million tokens
    proxy = FaultProxy(server.url, [])
    try:
        stopped = cli(tmp_path, proxy.url, price, "budget.usd=2")
        sent_before = len(proxy.bodies(logprobs=True))
        assert stopped.returncode == 3, stopped.stderr[-4000:]
        message = [x for x in stopped.stderr.splitlines() if x.startswith("prefsynth: budget:")]
        assert len(message) == 1 and "budget.usd=2 would be passed: spent $" in message[0]
        assert "fix: raise budget.usd" in message[0] and "Traceback" not in stopped.stderr
        spent = float(message[0].split("spent $")[1].split()[0])
        print(message[0])
        assert 0 < spent <= 2
        assert 0 < sent_before < JUDGE_REQUESTS and not (tmp_path / "tables" / "judge.parquet").exists()
        finished = cli(tmp_path, proxy.url, price, "budget.usd=100")
    finally:
        proxy.close()
    assert finished.returncode == 0, finished.stderr[-4000:]
    judged = proxy.bodies(logprobs=True)
    assert len(judged) == len(set(judged)) == JUDGE_REQUESTS  # the rerun sent only what the stopped run had not
    uninterrupted = served_run[0]
    assert rows(tmp_path, "judge") == rows(uninterrupted, "judge") and pairs(tmp_path) == pairs(uninterrupted)
    usage = json.loads((tmp_path / "manifest.json").read_text())["usage"]
    reference = json.loads((uninterrupted / "manifest.json").read_text())["usage"]
    assert {k: usage["total"][k] for k in ("requests", "input_tokens", "output_tokens")} == \
        {k: reference["total"][k] for k in ("requests", "input_tokens", "output_tokens")}
    tokens = usage["total"]["input_tokens"] + usage["total"]["output_tokens"]
    assert usage["total"]["usd"] == pytest.approx(tokens / 1e3)
    card = (tmp_path / "README.md").read_text()
    assert "## Requests and cost" in card and f"${usage['total']['usd']:.6f}" in card


def test_reward_model_served_by_vllm(seeded_rm, tmp_path):
    """A reward model behind `vllm serve --runner pooling --convert classify` (its /classify route, use_activation
    false), configured as a judge.reward_models mapping, scores within 1e-3 of the transformers reward model."""
    from judges.reward_model import RewardModelJudge, reward_judge
    from pipeline.backends.request_log import RequestLog
    from tests.pipeline.vllm_job import RM_ITEMS

    rm = seeded_rm
    srv = Server(tmp_path / "rm-serve.log", folder=rm, name="seeded-rm", extra=("--runner", "pooling", "--convert",
                                                                                  "classify"), memory=0.1)
    srv.start()
    try:
        cfg = load_config(None, [f"judge.reward_models=[{{model: {rm}, backend: openai, openai: {{base_url: "
                                 f"'{srv.url}/v1', served_model: seeded-rm}}}}]", "judge.aggregate=median"])
        log = RequestLog(tmp_path / "judge.jsonl")
        judge = reward_judge(cfg.reward_model_specs()[0], cfg, log=log)
        served = judge.score(RM_ITEMS)
        again = reward_judge(cfg.reward_model_specs()[0], cfg, log=log)
        assert [j.score for j in again.score(RM_ITEMS)] == [j.score for j in served] and again.hits == len(RM_ITEMS)
        assert again.backend.requests == 0  # answered from the request log
    finally:
        srv.stop()
    reference = RewardModelJudge(rm)
    want = reference.score(RM_ITEMS)
    assert judge.id == reference.id and all(j.ok for j in served)
    worst = max(abs(s.score - w.score) for s, w in zip(served, want))
    print(f"largest |served - transformers| reward difference: {worst:.2e}")  # shown with -rP
    assert [j.score for j in served] == pytest.approx([j.score for j in want], abs=1e-3)


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_batch_mode_with_vllm_run_batch(served_run, tmp_path):
    """judge.openai.mode batch: the judge's requests as one OpenAI batch input file, answered by the real
    `vllm run-batch` and ingested into the request log; two answers expired (moved to the error file by the runner
    wrapper: a fault the real runner cannot show) are the only requests of the second round. Judgments equal the
    served judge's ok flags and scores within 2e-2; judging again sends nothing. Generation in batch mode gives the
    same candidates' shape as online."""
    from pipeline.backends import make_backend
    from pipeline.backends.request_log import LoggedBackend, RequestLog
    from pipeline.config import GenerateConfig
    from pipeline.stages.generate import generate_candidates
    from pipeline.stages.judge import build_judges, judge_candidates

    out = served_run[0]
    runner = [sys.executable, str(ROOT / "tests" / "pipeline" / "batch_runner.py"), "{input}", "{output}"]
    sets = ["judge.backend=openai", "judge.openai.mode=batch", "judge.openai.batch_rounds=2",
            f"judge.openai.batch_command={json.dumps(runner + ['--expire', '2'])}"]
    cfg = load_config(TINY, sets)
    prompts = schemas.read_table(out / "tables" / "prompts.parquet", "prompts")
    candidates = schemas.read_table(out / "tables" / "generate.parquet", "candidates")
    batches = tmp_path / "batches"
    log = RequestLog(tmp_path / "judge.jsonl")
    judged = judge_candidates(prompts, candidates, build_judges(cfg, log=log, batch_dir=batches)).to_pylist()
    inputs = sorted(batches.glob("*.input.jsonl"), key=lambda p: len(p.read_text().splitlines()))
    assert [len(p.read_text().splitlines()) for p in inputs] == [2, 12]
    expired = json.loads((batches / "expired-once").read_text())
    assert sorted(json.loads(x)["custom_id"] for x in inputs[0].read_text().splitlines()) == sorted(expired)
    online = {r["candidate_id"]: r for r in rows(out, "judge") if r["kind"] == "absolute"}
    assert len(judged) == len(online) == 12
    for b in judged:
        o = online[b["candidate_id"]]
        assert (b["candidate_id"], b["judge"], b["ok"], b["score_mode"]) == (o["candidate_id"], o["judge"], o["ok"],
                                                                           "logprobs")
        if o["ok"]:
            assert b["score"] == pytest.approx(o["score"], abs=2e-2)
    again = judge_candidates(prompts, candidates, build_judges(cfg, log=log, batch_dir=batches)).to_pylist()
    assert again == judged and len(list(batches.glob("*.input.jsonl"))) == 2  # all from the request log
    log.close()
    # generation: one batch call per candidate seed, a request logged once all its seeds are answered
    opts = {**cfg.generate.openai.model_dump(), "mode": "batch", "batch_command": runner, "base_url": None}
    gen_log = RequestLog(tmp_path / "generate.jsonl")
    backend = LoggedBackend(make_backend("openai", MODEL, openai=opts, batch_dir=tmp_path / "gen-batches"), gen_log,
                            backend_name="openai")
    table, skipped = generate_candidates(prompts.slice(0, 2), GenerateConfig(n=2, max_new_tokens=8), backend, seed=1)
    assert not skipped and table.num_rows == 4 and all(0 < n <= 8 for n in table.column("n_tokens").to_pylist())
    assert len(gen_log.lookup([]) or []) == 0 and gen_log.count() == 2
    gen_log.close()
