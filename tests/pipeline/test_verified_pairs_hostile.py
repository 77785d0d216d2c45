"""End to end, judge stage to published pairs (issue 31): candidate answers to bundled python prompts include the
hostile programs of tests/fixtures/hostile_candidates, and an LLM judge that prefers them (as a reward-hacked judge
would). The verifier runs in the judge stage's core (`judge_candidates`), pairs are built as the pair stage does
(`pairs_from_scores` with the verifier's scores), and no published pair's chosen answer is a wrong one. Once, a
hostile wrong `add` scored 1.0 and became a chosen response."""

from __future__ import annotations

import json
from pathlib import Path

from judges.absolute import Judgment
from judges.verifier import VerifierJudge
from pipeline.config import PairConfig
from pipeline.core import schemas
from pipeline.curation.aggregate import agreement, verifier_scores
from pipeline.stages.judge import judge_candidates
from pipeline.stages.pair import aggregated_candidates, candidate_prompts, pairs_from_scores
from pipeline.verifiable.generator import reference_solution
from pipeline.verifiable.spec import verify_spec

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile_candidates"
# the hostile programs that need no host placeholder; each becomes an answer to every prompt
PROGRAMS = ("always_equal", "int_subclass", "frame_walk", "forge_results", "exit_noop", "patch_harness_builtins")


class LikesHacks:
    """An absolute judge that scores the hostile answers 9 and the correct one 1."""

    kind, id, aspect = "absolute", "likes-hacks", "x"

    def score(self, items, references=None):
        return [Judgment(1.0 if "# ref" in text else 9.0, True, "{}") for _, text in items]


def _prompts(n: int = 2) -> list[dict]:
    rows = [json.loads(line) for line in (ROOT / "data" / "prompts" / "verifiable.jsonl").open()]
    python = [r for r in rows if r["verify"]["kind"] == "tests"]
    return [python[0], *[r for r in python if r["verify"]["entry_point"] != python[0]["verify"]["entry_point"]]][:n]


def _answers(row: dict) -> dict[str, str]:
    entry = row["verify"]["entry_point"]
    answers = {"ref": "# ref\n" + reference_solution(row), "wrong": f"def {entry}(*args):\n    return None"}
    for name in PROGRAMS:  # their wrong add(a, b) made a wrong `entry`
        src = (HOSTILE / f"{name}.py").read_text()
        answers[name] = src.replace("def add(a, b):", f"def {entry}(*args):\n    a = b = 0")
    return {k: f"```python\n{v}\n```" for k, v in answers.items()}


def test_hostile_answers_never_become_chosen():
    rows = _prompts()
    prompts = schemas.from_rows([{"prompt_id": r["prompt_id"], "messages": [{"role": "user", "content": r["prompt"]}],
                                  "category": "python", "verify": verify_spec(r["verify"], "test")} for r in rows],
                                "prompts")
    texts = {f"{r['prompt_id']}/{k}": (r["prompt_id"], v) for r in rows for k, v in _answers(r).items()}
    candidates = schemas.from_rows([{"prompt_id": p, "candidate_id": c, "generator": "g", "text": t,
                                     "n_tokens": len(t), "finish_reason": "stop"} for c, (p, t) in texts.items()],
                                   "candidates")

    judgments = judge_candidates(prompts, candidates, [VerifierJudge(timeout_s=3, memory_mb=256), LikesHacks()])

    passed = {c: s for c, (_, s) in verifier_scores(judgments).items()}
    assert {c for c, s in passed.items() if s == 1.0} == {f"{r['prompt_id']}/ref" for r in rows}, judgments
    scored, _ = aggregated_candidates(candidates, judgments, "mean")
    pairs, _ = pairs_from_scores(prompts, scored, agreement(judgments)[0],
                                 PairConfig(strategy="verified", max_similarity=1.0),
                                 prompt_ids=candidate_prompts(candidates), passed=passed)
    chosen = pairs.column("chosen_id").to_pylist()
    assert sorted(chosen) == sorted(f"{r['prompt_id']}/ref" for r in rows), chosen  # one pair per prompt
