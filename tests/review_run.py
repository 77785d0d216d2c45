"""A finished run directory for review tests and bench/review.py, written without a model.

Everything `prefsynth review`, `card` and `push` read is there, in the real schemas: the stage
tables (prompts, prompt_filter, generate, judge, pair.scores, rationale with its meta), the pairs
shard, a manifest whose funnel chains, and (optionally) the card with its plots. Every prompt i < n
has two candidates scored by two absolute judges; judge A always prefers the chosen one, judge B
prefers the rejected one on every third prompt (so their agreement with a human differs). Three
more prompts produce no pair: `u-too-few` (one candidate is empty), `u-tie` (equal scores) and
`u-none` (no candidates: skipped by generate). With `hostile`, pair 0's chosen response, prompt and
rationale carry a <script>, an <img onerror> and a javascript: markdown link.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core import schemas
from pipeline.core.store import sha256, write_json

ROOT = Path(__file__).resolve().parents[1]
JUDGES = ("judge-a@r1#absolute-1to5-v1", "judge-b@r1#absolute-1to5-v1")
HOSTILE = ("Hello <script>window.__pwned = 1; document.title = 'pwned'</script> and "
           "<img src=x onerror=\"window.__pwned = 2\"> and [click me](javascript:window.__pwned=3) done.")


def _msg(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def texts(i: int) -> tuple[str, str, str]:
    prompt = f"Question {i}: explain topic {i % 17} in two sentences."
    chosen = (f"**Answer {i}.** Topic {i % 17} is best shown by example:\n\n```python\nprint({i})\n```\n\n"
              f"- point one\n- point two")
    rejected = f"answer {i} (short, vague, {'x' * (i % 7)})"
    return prompt, chosen, rejected


def judge_scores(i: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((A on chosen, A on rejected), (B on chosen, B on rejected)); the mean always ranks chosen first."""
    a = (4.0 + (i % 5) / 10, 2.0 + (i % 3) / 10)
    b = (2.5, 3.0) if i % 3 == 0 else (4.5, 1.5)
    return a, b


def build(root: Path, n: int = 30, *, hostile: bool = False, card: bool = True, name: str = "review-fake",
          prefix: str = "p") -> Path:
    """The run directory at `root` (see the module docstring); prompt ids are `<prefix>NNNNNN`."""
    from pipeline.config import load_config

    run = Path(root)
    tables = run / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    prompts, cands, judgments, scores, pairs = [], [], [], [], []
    for i in range(n):
        p, c, r = texts(i)
        if hostile and i == 0:
            p, c = f"Render this: {HOSTILE}", f"{HOSTILE}\n\n```html\n<script>window.__pwned = 4</script>\n```"
        pid = f"{prefix}{i:06d}"
        cid, rid = f"{pid}-c0", f"{pid}-c1"
        prompts.append({"prompt_id": pid, "messages": _msg("user", p), "source": "test", "category": f"t{i % 4}"})
        (ac, ar), (bc, br) = judge_scores(i)
        for cand, text, sa, sb in ((cid, c, ac, bc), (rid, r, ar, br)):
            cands.append({"prompt_id": pid, "candidate_id": cand, "generator": "fake@r1", "text": text,
                          "n_tokens": len(text.split()), "finish_reason": "stop"})
            for judge, s in zip(JUDGES, (sa, sb)):
                judgments.append({"prompt_id": pid, "candidate_id": cand, "judge": judge, "kind": "absolute",
                                  "aspect": "overall", "score": s, "ok": True,
                                  "rationale": f"{judge.split('@')[0]} gives {s} to {cand}"
                                  + (f" {HOSTILE}" if hostile and i == 0 else "")})
            scores.append({"prompt_id": pid, "candidate_id": cand, "score": (sa + sb) / 2, "judge_agreement": 0.5})
        cs, rs = (ac + bc) / 2, (ar + br) / 2
        pairs.append({"prompt": _msg("user", p), "chosen": _msg("assistant", c), "rejected": _msg("assistant", r),
                      "prompt_id": pid, "chosen_id": cid, "rejected_id": rid, "chosen_score": cs, "rejected_score": rs,
                      "margin": cs - rs, "rationale": f"The better response is clearer (pair {i})."
                      + (f" {HOSTILE}" if hostile and i == 0 else ""), "pair_strategy": "best_vs_worst",
                      "judge_agreement": 0.5, "ches": -float(i), "ln_ches": -1.0 + (i % 11) / 10,
                      "ref_chosen_logp": -10.0 - i % 13, "ref_rejected_logp": -12.0 - i % 7,
                      "chosen_len": len(c.split()), "rejected_len": len(r.split())})
    for name_, texts_, ss in (("too-few", ("a real answer", " "), (3.0, None)),
                              ("tie", ("one way", "another way"), (3.0, 3.0)), ("none", (), ())):
        pid = f"u-{name_}" if prefix == "p" else f"{prefix}u-{name_}"
        prompts.append({"prompt_id": pid, "messages": _msg("user", f"unpaired prompt {pid}"), "source": "test"})
        for k, (text, s) in enumerate(zip(texts_, ss)):
            cid = f"{pid}-c{k}"
            cands.append({"prompt_id": pid, "candidate_id": cid, "generator": "fake@r1", "text": text,
                          "n_tokens": len(text.split()), "finish_reason": "stop"})
            for judge in JUDGES:
                judgments.append({"prompt_id": pid, "candidate_id": cid, "judge": judge, "kind": "absolute",
                                  "aspect": "overall", "score": s, "ok": s is not None})
            if s is not None:
                scores.append({"prompt_id": pid, "candidate_id": cid, "score": s, "judge_agreement": None})
    for stage, rows, schema in (("prompts", prompts, "prompts"), ("prompt_filter", prompts, "prompts"),
                                ("generate", cands, "candidates"), ("judge", judgments, "judgments"),
                                ("pair.scores", scores, "scores")):
        schemas.write_table(schemas.from_rows(rows, schema), tables / f"{stage}.parquet", schema)
    none = "u-none" if prefix == "p" else f"{prefix}u-none"
    write_json(tables / "generate.json", {"skipped": {none: "prompt longer than generate.max_prompt_tokens"}})
    pair_table = schemas.from_rows(pairs, "pairs")
    source = schemas.write_table(pair_table, tables / "rationale.parquet", "pairs")
    write_json(tables / "rationale.json", {"fingerprint": "fp-rationale", "rows": n, "sha256": sha256(source)})
    shard = schemas.write_table(pair_table, run / "pairs" / "train-00000-of-00001.parquet", "pairs")
    funnel = [
        {
            "stage": "generate",
            "filter": "context_limit",
            "unit": "prompts",
            "rows_in": n + 3,
            "rows_out": n + 2,
            "reason": "prompt longer than generate.max_prompt_tokens",
        },
        {
            "stage": "generate",
            "filter": "candidates",
            "unit": "candidates",
            "unit_in": "prompts",
            "rows_in": n + 2,
            "rows_out": 2 * n + 4,
            "reason": "the prompts left become their sampled candidates",
        },
        {
            "stage": "pair",
            "filter": "too_few_scored",
            "unit": "prompts",
            "rows_in": n + 2,
            "rows_out": n + 1,
            "reason": "prompts with fewer than 2 non-empty candidates with an ok judgment",
        },
        {
            "stage": "pair",
            "filter": "candidate_pairs",
            "unit": "candidate pairs",
            "unit_in": "prompts",
            "rows_in": n + 1,
            "rows_out": n + 1,
            "reason": "every two scored candidates of a prompt form a candidate pair",
        },
        {
            "stage": "pair",
            "filter": "ties",
            "unit": "candidate pairs",
            "rows_in": n + 1,
            "rows_out": n,
            "reason": "candidate pairs scored within pair.tie_epsilon (ties are not paired)",
        },
        {
            "stage": "pair",
            "filter": "strategy",
            "unit": "pairs",
            "unit_in": "candidate pairs",
            "rows_in": n,
            "rows_out": n,
            "reason": "admissible candidate pairs not selected by best_vs_worst",
        },
    ]
    resolved = load_config(ROOT / "data" / "configs" / "tiny.yaml").model_dump()
    manifest = {
        "name": name,
        "created_at": "2026-12-01T00:00:00+00:00",
        "code_version": "0.1.0",
        "config": {"given": {}, "resolved": resolved},
        "config_fingerprint": "f" * 16,
        "stage_fingerprints": {"rationale": "fp-rationale"},
        "models": {
            "generator": "fake@r1",
            "judge": JUDGES[0],
            "judges": list(JUDGES),
            "rationale": "fake@r1",
            "rationale_template": "pair-rationale-v2",
            "ches": "fake@r1",
        },
        "rows": {
            "prompts": n + 3,
            "prompts_kept": n + 3,
            "candidates": len(cands),
            "judgments": len(judgments),
            "pairs": n,
        },
        "funnel": funnel,
        "funnel_errors": [],
        "judge_agreement": {"krippendorff_alpha": 0.5, "kendall_tau": {}, "judges": {}},
        "sources": {"pairs_by_strategy": {"best_vs_worst": n}},
        "shards": [{"path": "pairs/train-00000-of-00001.parquet", "rows": n, "sha256": sha256(shard)}],
        "ranked_shards": [],
        "timings_s": {},
    }
    write_json(run / "manifest.json", manifest)
    (run / "config.yaml").write_text(json.dumps(resolved))
    if card:
        from pipeline.publish.card import write

        write(run, manifest)
    return run
