"""A served run whose candidate answers include hostile code publishes no pair whose chosen answer is wrong (issue 31,
end to end): `prefsynth run` generates from an OpenAI-compatible endpoint that answers every python prompt with the
reference solution, a plainly wrong one and six hostile programs of tests/fixtures/hostile_candidates (fake passes:
always-equal objects, an int subclass, frame walks, forged results, a no-op exit, a patched harness), and judges on the
same endpoint with a reward-hacked judge that scores every answer but the reference 5 and the reference 1. The
endpoint is tests/fake_endpoint.py's scripted mode: no real model can be made to write these programs on demand. The
verifier runs them in its sandbox; with pair strategy 'verified' every published chosen answer is the reference."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_cli, write_jsonl
from tests.fake_endpoint import FakeEndpoint
from tests.pipeline.test_verified_pairs_hostile import PROGRAMS, _answers

pytestmark = pytest.mark.slow


def test_a_served_run_with_hostile_answers_publishes_only_correct_chosen_answers(tmp_path):
    rows = [json.loads(x) for x in (ROOT / "data" / "prompts" / "verifiable.jsonl").open()]
    python = [r for r in rows if r["verify"]["kind"] == "tests"]
    picked = [python[0], next(r for r in python if r["verify"]["entry_point"] != python[0]["verify"]["entry_point"])]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", picked)
    answers = {r["prompt"]: list(_answers(r).values()) for r in picked}
    assert all(len(a) == 2 + len(PROGRAMS) for a in answers.values())
    fake = FakeEndpoint("scripted", answers=answers, verdict=lambda text: "1" if "# ref" in text else "5")
    with fake as url:
        sets = [f"input.path={prompts}", "input.shuffle=false", "generate.n=8", "generate.max_new_tokens=256",
                "pair.strategy=verified", "curate.ches.enabled=false", "rationale.enabled=false",
                "curate.dedup.near_duplicates=false"]
        for part in ("generate", "judge"):
            sets += [f"{part}.backend=openai", f"{part}.openai.base_url={url}", f"{part}.openai.served_model=served"]
        out = tmp_path / "run"
        res = run_cli("run", "--config", str(ROOT / "data" / "configs" / "tiny.yaml"), "--out", str(out), "--quiet",
                      *(x for s in sets for x in ("--set", s)))
    assert res.returncode == 0, res.stderr[-3000:]
    cands = pq.read_table(out / "tables" / "generate.parquet").to_pylist()
    assert len(cands) == 16 and sum("# ref" in c["text"] for c in cands) == 2  # every hostile answer was a candidate
    judged = pq.read_table(out / "tables" / "judge.parquet").to_pylist()
    llm = {j["candidate_id"]: j["score"] for j in judged if j["kind"] == "absolute"}
    ref_ids = {c["candidate_id"] for c in cands if "# ref" in c["text"]}
    assert all(llm[c] < min(v for k, v in llm.items() if k not in ref_ids) for c in ref_ids)  # the judge was hacked
    passed = {j["candidate_id"] for j in judged if j["kind"] == "verifier" and j["ok"] and j["score"] == 1.0}
    assert passed == ref_ids  # no hostile program passed the sandboxed verifier
    pairs = [r for f in sorted((out / "pairs").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(pairs) == 2
    assert all("# ref" in p["chosen"][0]["content"] and "# ref" not in p["rejected"][0]["content"] for p in pairs)
