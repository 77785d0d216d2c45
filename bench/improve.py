"""Does DPO on verifier-labelled pairs make the bundled model better at instruction-following constraints?

One seeded experiment, end to end, on the bundled SmolLM2-135M-Instruct (CPU is enough):

1. Prompts: pipeline/verifiable/instructions.py (`make`): everyday base tasks crossed with one or two
   IFEval-style constraints (judges/constraints.py) drawn from its MENU, the types the small model satisfies sometimes
   (measured pass rates in the comments); prompt text = base task + " " + describe(constraints).
   Split into train and held-out by BASE task (no base task on both sides). Written as JSONL rows
   {"prompt_id", "messages", "verify": {"kind": "constraints", "constraints": [...]}} (prompts_train.jsonl,
   prompts_heldout.jsonl; `prefsynth run` reads them: the verifier checks the constraints kind).
2. Pairs: k sampled candidates per train prompt from the project's transformers backend
   (pipeline/backends/hf.py, per-candidate seeds), scored by check_all (constraints passed, strict);
   chosen = a candidate passing the most constraints, rejected = one passing fewer; prompts without
   contrast are skipped. Written as a pairs shard (pipeline/core/schemas.py PAIRS) at pairs/pairs.parquet.
3. Train: the bundled DPO trainer (pipeline/train) on that shard; the policy lands in DIR/model.
4. Evaluate base and trained on the held-out prompts: greedy and/or `--eval-samples` sampled answers per
   prompt; prompt-level accuracy (all constraints pass) and instruction-level accuracy (fraction of
   constraints passed), strict and loose; a paired bootstrap over held-out prompts (seeded) gives the 95%
   interval of trained - base; mean response length (words, tokens) of both. DIR/report.json + a table.

5. `--labels verifier,judge,random` compares label sources on the same candidates and the same training budget (each
   source's pairs capped at the verifier's count, so as many DPO steps): `judge` is the LLM-judge ensemble (two
   absolute templates on the bundled model, through pipeline/stages/judge.py and the default judge.aggregate),
   `random` a seeded random preference (the control: what training on the model's own samples does without labels).
   Each source trains its own policy from the base (DIR/model-NAME, pairs in DIR/pairs-NAME) and is evaluated against
   the same base figures; the report's "arms" hold each, with the share of its pairs the verifier agrees with (chosen
   passes more constraints), ties and reversals: label quality beside what it does to the model. DIR/labels.png.

    python bench/improve.py --out /tmp/improve            # defaults: see --help
    python bench/improve.py --out /tmp/improve --labels verifier,judge,random   # + two more arms (~15 min each)
    python bench/improve.py --out /tmp/improve --labels verifier,online,iterate  # offline vs online vs rounds

6. `online` trains with `prefsynth train --online` (pipeline/loop/online.py) on the train prompts, verifier labels, one
   epoch of --online-prompts prompts per step with k fresh answers each from the current policy: as many verifier
   calls as the offline arms' shared candidates; `iterate` too (each round answers its own slice of the train prompts).
   The report's "judge_calls" per arm says so.
    python bench/improve.py --out /tmp/improve --seed 1   # another seed (prompts, split, sampling, training)

Defaults (seed 0; 100 base tasks, 30 held out; 140 train / 60 held-out prompts; k=4, 64 new tokens; full fine-tuning,
beta 0.1, lr 3e-5, 1 epoch of ~174 pairs = 22 steps of 8; greedy + 2 sampled answers per held-out prompt), measured
with ONE torch thread on a 2-core CPU shared with other work: candidates 509 s, reference log-prob pre-pass 194 s,
training 893 s (~40 s/step), evaluation 169 s (base) + 236 s (trained): ~34 min in all. With `--threads 2` on the
idle 2-core machine: 1069 s in all (candidates 318 s, training with its reference pass 516 s, evaluation 121 + 114 s;
bench/README.md). The generation rate is ~75 tokens/s per thread (the model is compute-bound on CPU).

Known failure mode (seed 0): the checkers reward gaming, and DPO finds it: "Sure, sure, sure, ..." for "start with
Sure", "*highlighted section*" repeated, one-word answers to "fewer than 15 words". The report therefore carries
"repetitive" (share of answers whose distinct word-trigram ratio is under 0.5) and "cut" (hit max_new_tokens) beside
the accuracies and lengths. Nothing here checks that the answer still does the base task.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.verifiable.instructions import BASE_TASKS, DEFAULT_MIX, MENU, make, task_of  # noqa: E402

MODEL = "bundled:smollm2-135m-instruct"

def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def score(row: dict, text: str) -> dict:
    from judges.constraints import check_all

    res = check_all(row["verify"]["constraints"], text, row["messages"][0]["content"])
    return {"strict": sum(r["strict"] for r in res), "loose": sum(r["loose"] for r in res), "n": len(res),
            "per": {r["id"]: r["strict"] for r in res}}


def sample(model_ref: str, rows: list[dict], *, n: int, temperature: float, max_new_tokens: int, seed: int,
           batch_size: int, tag: str, top_p: float = 1.0):
    """For each row, `n` completions from the project's transformers backend (per-candidate seeds)."""
    from pipeline.backends import Request, SamplingParams, make_backend

    backend = make_backend("transformers", model_ref, batch_size=batch_size)
    reqs = [Request(r["messages"], tuple(_seed(seed, tag, r["prompt_id"], k) for k in range(n))) for r in rows]
    t0 = time.time()
    out = backend.generate(reqs, sampling=SamplingParams(temperature, top_p, max_new_tokens), max_prompt_tokens=1024)
    return out, time.time() - t0


def _seed(seed: int, tag: str, pid: str, k: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}/{tag}/{pid}/{k}".encode()).digest()[:8], "little")


def make_pairs(rows, results, *, max_pairs_per_prompt: int, rng: random.Random, scores=None,
               strategy: str = "verifier_best_vs_fewer"):
    """Pairs from scored candidates: chosen has the top score (preferring an answer that ended by itself), rejected
    a lower one. `scores` (one list per row, a float or None per candidate; None: unjudged, left out) default to the
    verifier's count of constraints passed (strict). Returns (pair rows, stats)."""
    pairs, stats = [], {"prompts": len(rows), "with_contrast": 0, "all_pass": 0, "none_pass": 0}
    for pi, (row, comps) in enumerate(zip(rows, results)):
        verdicts = [score(row, c.text) for c in comps]
        values = [float(v["strict"]) for v in verdicts] if scores is None else scores[pi]
        scored = [(s, c, k, v) for k, (s, c, v) in enumerate(zip(values, comps, verdicts)) if s is not None]
        if len(scored) < 2:
            continue
        best = max(x[0] for x in scored)
        worst = min(x[0] for x in scored)
        n = verdicts[0]["n"]
        if best == worst:
            if scores is None:
                stats["all_pass" if best == n else "none_pass"] += best in (0, n)
            continue
        stats["with_contrast"] += 1
        top = [x for x in scored if x[0] == best]
        top.sort(key=lambda x: (x[1].finish_reason != "stop", rng.random()))
        low = [x for x in scored if x[0] < best]
        rng.shuffle(low)
        used = set()
        for i in range(min(max_pairs_per_prompt, len(low))):
            ch, rj = top[i % len(top)], low[i]
            if ch[1].text.strip() == rj[1].text.strip() or (ch[2], rj[2]) in used:
                continue
            used.add((ch[2], rj[2]))
            pairs.append({
                "prompt": row["messages"],
                "chosen": [{"role": "assistant", "content": ch[1].text}],
                "rejected": [{"role": "assistant", "content": rj[1].text}],
                "prompt_id": row["prompt_id"],
                "chosen_id": f"{row['prompt_id']}-{ch[2]:02d}",
                "rejected_id": f"{row['prompt_id']}-{rj[2]:02d}",
                "chosen_score": float(ch[0]),
                "rejected_score": float(rj[0]),
                "margin": float(ch[0] - rj[0]),
                "pair_strategy": strategy,
                "chosen_len": ch[1].n_tokens,
                "rejected_len": rj[1].n_tokens,
                # the verifier's constraint counts, whichever label source chose: label agreement (not in the shard)
                "_verifier": (ch[3]["strict"], rj[3]["strict"]),
            })
    stats["pairs"] = len(pairs)
    return pairs, stats


def prompt_pass_rate(rows, results) -> float:
    """Share of candidates that meet every constraint of their prompt (strict)."""
    passed = [score(r, c.text)["strict"] == len(r["verify"]["constraints"])
              for r, cs in zip(rows, results) for c in cs]
    return sum(passed) / max(len(passed), 1)


def cap_pairs(pairs: list[dict], budget: int | None, rng: random.Random) -> list[dict]:
    """At most `budget` pairs, a seeded sample in the original order: every label source trains on as many pairs
    (so as many steps) as the verifier's arm."""
    if budget is None or len(pairs) <= budget:
        return pairs
    keep = sorted(rng.sample(range(len(pairs)), budget))
    return [pairs[i] for i in keep]


def label_agreement(pairs: list[dict]) -> dict:
    """How a label source's pairs sit against the verifier: chosen passes more constraints than rejected (agree),
    as many (tie), or fewer (reversed); shares of the pairs."""
    n = len(pairs) or 1
    agree = sum(p["_verifier"][0] > p["_verifier"][1] for p in pairs)
    rev = sum(p["_verifier"][0] < p["_verifier"][1] for p in pairs)
    return {"agree": round(agree / n, 3), "tie": round((len(pairs) - agree - rev) / n, 3),
            "reversed": round(rev / n, 3)}


JUDGE_TEMPLATES = ("absolute-1to5-v1", "ultrafeedback-instruction-following-v1")


def judge_scores(rows: list[dict], results, *, templates=JUDGE_TEMPLATES, batch_size: int = 8):
    """The LLM-judge ensemble's score of every candidate, through the pipeline's own judge stage core: judges built
    by pipeline/stages/judge.py `build_judges` from a RunConfig on the defaults (the bundled model judges; absolute
    templates `templates`), `judge_candidates` over prompt and candidate tables, combined by the default
    `judge.aggregate` (pipeline/curation/aggregate.py). The verifier is not among the judges. Returns (scores per
    row, the share of candidates with a score)."""
    from pipeline.config.run import RunConfig
    from pipeline.core import schemas
    from pipeline.curation.aggregate import candidate_scores
    from pipeline.stages.judge import build_judges, judge_candidates

    cfg = RunConfig(judge={"templates": list(templates), "batch_size": batch_size})
    prompts = schemas.from_rows([{"prompt_id": r["prompt_id"], "messages": r["messages"]} for r in rows], "prompts")
    ids = {r["prompt_id"]: [f"{r['prompt_id']}-{k:02d}" for k in range(len(cs))] for r, cs in zip(rows, results)}
    cands = schemas.from_rows([
        {"prompt_id": r["prompt_id"], "candidate_id": cid, "generator": MODEL, "text": c.text,
         "n_tokens": c.n_tokens, "finish_reason": c.finish_reason}
        for r, cs in zip(rows, results) for cid, c in zip(ids[r["prompt_id"]], cs)], "candidates")
    judgments = judge_candidates(prompts, cands, build_judges(cfg))
    by_id = candidate_scores(judgments, ids, cfg.judge.aggregate)
    out = [[by_id.get(cid) for cid in ids[r["prompt_id"]]] for r in rows]
    flat = [x for xs in out for x in xs]
    return out, sum(x is not None for x in flat) / max(len(flat), 1)


def evaluate(model_ref: str, rows: list[dict], a, tag: str) -> dict:
    """Per held-out prompt: greedy and/or sampled answers scored; per-prompt figures for the paired bootstrap."""
    out: dict = {}
    modes = []
    if a.eval_greedy:
        modes.append(("greedy", 1, 0.0))
    if a.eval_samples:
        modes.append(("sampled", a.eval_samples, a.temperature))
    for mode, n, temp in modes:
        results, secs = sample(model_ref, rows, n=n, temperature=temp, max_new_tokens=a.eval_max_new_tokens,
                               seed=a.seed, batch_size=a.batch_size, tag=f"eval-{mode}")
        per = []
        for row, comps in zip(rows, results):
            ss = [score(row, c.text) for c in comps]
            per.append({
                "prompt_id": row["prompt_id"],
                "prompt_strict": sum(s["strict"] == s["n"] for s in ss) / len(ss),
                "prompt_loose": sum(s["loose"] == s["n"] for s in ss) / len(ss),
                "inst_strict": sum(s["strict"] / s["n"] for s in ss) / len(ss),
                "inst_loose": sum(s["loose"] / s["n"] for s in ss) / len(ss),
                "words": sum(len(c.text.split()) for c in comps) / len(comps),
                "repetitive": sum(distinct_ngram_ratio(c.text) < 0.5 for c in comps) / len(comps),
                "cut": sum(c.finish_reason == "length" for c in comps) / len(comps),
                "tokens": sum(c.n_tokens for c in comps) / len(comps),
                "per_type": [s["per"] for s in ss],
                "example": comps[0].text[:300],
            })
        out[mode] = {"per_prompt": per, "seconds": secs}
    return out


METRICS = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose", "words", "tokens", "repetitive", "cut")


def distinct_ngram_ratio(text: str, n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams (1.0 for texts under n words): a cheap degeneration check, since
    the constraint checkers reward "Sure, sure, sure, ..." for "start with Sure". Under 0.5 counts as repetitive."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def bootstrap(base: list[dict], trained: list[dict], *, resamples: int, seed: int) -> dict:
    """Paired bootstrap over held-out prompts of mean(trained) - mean(base) for each metric."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(base)
    idx = rng.integers(0, n, size=(resamples, n))
    res = {}
    for m in METRICS:
        b = np.array([p[m] for p in base])
        t = np.array([p[m] for p in trained])
        d = t - b
        boots = d[idx].mean(axis=1)
        lo, hi = np.percentile(boots, [2.5, 97.5])
        res[m] = {"base": float(b.mean()), "trained": float(t.mean()), "diff": float(d.mean()),
                  "ci95": [float(lo), float(hi)], "excludes_0": bool(lo > 0 or hi < 0)}
    return res


def per_type_rates(per_prompt: list[dict], rows: list[dict]) -> dict:
    from collections import defaultdict

    acc = defaultdict(list)
    for p, row in zip(per_prompt, rows):
        for s in p["per_type"]:
            for spec, name in zip(row["verify"]["constraints"], row["category"].split("+")):
                acc[name].append(s[spec["id"]])
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(acc.items())}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0, help="Prompts, split, sampling, training order and bootstrap.")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"Constraint types, comma-separated, of {list(MENU)}")
    p.add_argument("--tasks", type=int, default=len(BASE_TASKS), help="Base tasks used (of the built-in list).")
    p.add_argument("--per-task", type=int, default=2, help="Constraint sets per base task.")
    p.add_argument("--two-prob", type=float, default=0.3, help="Chance a prompt carries two constraints.")
    p.add_argument("--heldout-frac", type=float, default=0.3, help="Share of base tasks held out.")
    p.add_argument("--k", type=int, default=4, help="Candidates per train prompt.")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64, help="For the train candidates.")
    p.add_argument("--eval-max-new-tokens", type=int, default=64)
    p.add_argument("--max-pairs-per-prompt", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="Prompts per generate batch.")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0: full fine-tuning.")
    p.add_argument("--nll", type=float, default=0.0, help="Weight of an RPO-style NLL term on chosen.")
    p.add_argument("--eval-greedy", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--eval-samples", type=int, default=2, help="Sampled answers per held-out prompt (0: none).")
    p.add_argument("--resamples", type=int, default=4000)
    p.add_argument("--reuse-pairs", type=Path, default=None,
                   help="An earlier --out with the same prompt args and seed: reuse its candidates (skips sampling).")
    p.add_argument("--labels", default="verifier",
                   help=f"Label sources compared on the same candidates and pair budget, comma-separated, of "
                   f"{list(LABELS)}: each trains its own policy from the base model (judge: about 2 min of judging; "
                   "every arm: training and a held-out evaluation, about 15 min on 2 CPU threads).")
    p.add_argument("--rounds", type=int, default=2, help="Rounds of the `iterate` label source (--labels).")
    p.add_argument("--online-prompts", type=int, default=8, help="Prompts per step of the `online` arm (--labels).")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    return p.parse_args(argv)


LABELS = ("verifier", "judge", "random", "iterate", "online")


def label(name: str, rows, results, a, budget: int | None) -> tuple[list[dict], dict]:
    """One label source's pairs on the shared candidates: `verifier` (constraints passed), `judge` (the LLM-judge
    ensemble, judge_scores), `random` (a seeded random score per candidate: the control, which says how much of a
    gain comes from training on the model's own samples at all). Capped at `budget` pairs."""
    rng = random.Random(f"pairs-{a.seed}" if name == "verifier" else f"pairs-{name}-{a.seed}")
    extra: dict = {}
    if name == "verifier":
        scores = None
    elif name == "judge":
        t0 = time.time()
        scores, extra["judged_share"] = judge_scores(rows, results, batch_size=a.batch_size)
        extra["templates"] = list(JUDGE_TEMPLATES)
        extra["judge_seconds"] = round(time.time() - t0, 1)
    else:
        scores = [[rng.random() for _ in comps] for comps in results]
    pairs, stats = make_pairs(rows, results, max_pairs_per_prompt=a.max_pairs_per_prompt, rng=rng, scores=scores,
                              strategy=f"{name}_best_vs_lower" if scores is not None else "verifier_best_vs_fewer")
    stats["uncapped"] = len(pairs)
    pairs = cap_pairs(pairs, budget, rng)
    stats["pairs"] = len(pairs)
    stats["agreement_with_verifier"] = label_agreement(pairs)
    return pairs, {**stats, **extra}


def write_pairs(pairs: list[dict], stats: dict, pairs_dir: Path) -> None:
    from pipeline.core import schemas

    pairs_dir.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in p.items() if not k.startswith("_")} for p in pairs]
    schemas.write_table(schemas.from_rows(rows, "pairs"), pairs_dir / "pairs.parquet", "pairs")
    (pairs_dir / "stats.json").write_text(json.dumps(stats))


def iterate_arm(a, rows, results, budget: int | None, model_dir: Path) -> tuple[dict, dict]:
    """`--rounds` rounds of verifier-labelled DPO at the offline arm's number of verifier calls and pair budget: the
    train prompts are split (seeded) into `--rounds` slices, one per round, and the pair budget evenly between rounds
    (so the same number of training steps). Round 1 pairs the shared candidates of the base model on its slice and
    trains it; round r > 1 samples k fresh candidates from policy r-1 on slice r, pairs them and trains policy r-1 (its
    own reference, as `prefsynth iterate` does by default). Every train prompt is answered k times once, as in the
    offline and online arms. Pairs and policies of each round under DIR/iterate/round-R; the last policy moves to
    `model_dir`. Returns (train summary, pair stats) with each round's and the total verifier calls."""
    per_round = None if budget is None else max(budget // a.rounds, 1)
    order = list(range(len(rows)))
    random.Random(f"iterate-split-{a.seed}").shuffle(order)
    slices = [sorted(order[r::a.rounds]) for r in range(a.rounds)]
    policy, rounds, round_pairs, calls, shared = MODEL, [], [], 0, results
    for r in range(1, a.rounds + 1):
        t0 = time.time()
        rows_r = [rows[i] for i in slices[r - 1]]
        if r == 1:
            results = [shared[i] for i in slices[0]]
        else:
            results, _ = sample(policy, rows_r, n=a.k, temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                                seed=a.seed, batch_size=a.batch_size, tag=f"iterate-{r}")
        calls += sum(map(len, results))
        rng = random.Random(f"pairs-iterate-{r}-{a.seed}")
        pairs, stats = make_pairs(rows_r, results, max_pairs_per_prompt=a.max_pairs_per_prompt, rng=rng)
        stats["uncapped"] = len(pairs)
        pairs = cap_pairs(pairs, per_round, rng)
        stats["pairs"] = len(pairs)
        stats["agreement_with_verifier"] = label_agreement(pairs)
        if not pairs:
            raise SystemExit(f"--labels iterate: round {r} has no pair with a contrast; fix: more prompts or --k")
        stats["candidate_prompt_pass"] = prompt_pass_rate(rows_r, results)
        round_pairs.append(pairs)
        rdir = a.out / "iterate" / f"round-{r}"
        write_pairs(pairs, stats, rdir / "pairs")
        summary = train_arm(rdir / "pairs", rdir / "model", a, start=policy)
        policy = str(rdir / "model")
        rounds.append({"pairs": stats, "train": summary, "seconds": round(time.time() - t0, 1)})
        print(f"iterate round {r}: {stats}, {summary['steps']} steps", flush=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.move(policy, model_dir)
    total = {"pairs": sum(x["pairs"]["pairs"] for x in rounds), "rounds": rounds, "judge_calls": calls,
             "agreement_with_verifier": label_agreement([p for x in round_pairs for p in x])}
    return {"steps": sum(x["train"]["steps"] or 0 for x in rounds), "rounds": [x["train"] for x in rounds],
            "last_loss": rounds[-1]["train"]["last_loss"]}, total


def online_arm(a, rows: list[dict]) -> tuple[dict, dict]:
    """Online DPO (`prefsynth train --online`, pipeline/loop/online.py) on the train prompts with verifier labels and
    as many verifier calls as the offline arms' candidates: one epoch of `--online-prompts` prompts per step, k answers
    each sampled from the current policy, the 'verified' pair of each prompt, one DPO step per step. Under DIR/online
    (its pairs shards in DIR/online/pairs, the policy in DIR/online/model). Returns (train summary, pair stats)."""
    import math

    import pyarrow.parquet as pq

    from pipeline.loop.online import train_online
    from pipeline.train import TrainConfig

    losses = {"sigmoid": 1.0, **({"nll": a.nll} if a.nll else {})}
    cfg = TrainConfig(model=MODEL, seed=a.seed, beta=a.beta, learning_rate=a.lr, tensorboard=False, save_every=5,
                      steps=math.ceil(len(rows) / a.online_prompts), max_prompt_tokens=256, max_length=512,
                      losses=losses, lora={"r": a.lora_r, "alpha": 2 * a.lora_r} if a.lora_r else None,
                      online={"prompts_per_step": a.online_prompts, "k": a.k, "max_new_tokens": a.max_new_tokens,
                              "temperature": a.temperature, "labels": "verifier"})
    prov = train_online(cfg, a.out / "prompts_train.jsonl", a.out / "online", log=lambda m: print(m, flush=True))
    shards = sorted((a.out / "online" / "pairs").glob("*.parquet"))
    pairs = [r for s in shards for r in pq.read_table(s, columns=["chosen_score", "rejected_score"]).to_pylist()]
    agree = sum(r["chosen_score"] > r["rejected_score"] for r in pairs) / max(len(pairs), 1)
    recs = [json.loads(x) for x in (a.out / "online" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in recs if "loss" in r][-5:]
    stats = {"pairs": len(pairs), "judge_calls": prov["online"]["judge_calls"], "steps": prov["steps"],
             "steps_with_pairs": sum(1 for r in recs if r["pairs"]),
             "agreement_with_verifier": {"agree": round(agree, 3), "tie": round(1 - agree, 3), "reversed": 0.0}}
    return {"steps": prov["steps"], "last_loss": [round(r["loss"], 4) for r in last]}, stats


def arm_dirs(out: Path, name: str) -> tuple[Path, Path]:
    """(pairs folder, policy folder) of a label source: the verifier's at DIR/pairs and DIR/model, the others at
    DIR/pairs-NAME and DIR/model-NAME."""
    return (out / "pairs", out / "model") if name == "verifier" else (out / f"pairs-{name}", out / f"model-{name}")


def train_arm(pairs_dir: Path, model_dir: Path, a, start: str = MODEL) -> dict:
    """The bundled DPO trainer (pipeline/train) on one arm's shard, from the policy `start` (which is also the
    reference, the trainer's default); the policy moved to `model_dir`."""
    import hashlib

    from pipeline.train import TrainConfig, train

    shard = pairs_dir / "pairs.parquet"
    marker, digest = model_dir / ".trained_on", hashlib.sha256(shard.read_bytes()).hexdigest()
    if marker.exists() and json.loads(marker.read_text()).get("pairs_sha256") == digest:
        print(f"train: {model_dir} was trained on these exact pairs; reused", flush=True)
        return json.loads(marker.read_text())["summary"]

    losses = {"sigmoid": 1.0, **({"nll": a.nll} if a.nll else {})}
    cfg = TrainConfig(model=start, seed=a.seed, beta=a.beta, learning_rate=a.lr, epochs=a.epochs,
                      batch_size=a.train_batch, eval_fraction=0.0, tensorboard=False, save_every=10**6,
                      max_prompt_tokens=256, max_length=512, losses=losses,
                      lora={"r": a.lora_r, "alpha": 2 * a.lora_r} if a.lora_r else None)
    train_dir = pairs_dir.parent / f"train-{model_dir.name}"
    prov = train(cfg, pairs_dir / "pairs.parquet", train_dir, log=lambda msg: print(msg, flush=True))
    shutil.rmtree(model_dir, ignore_errors=True)  # the policy, a folder transformers loads; checkpoints go
    shutil.move(str(train_dir / "model"), model_dir)
    shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)
    recs = [json.loads(x) for x in (train_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in recs if "loss" in r][-5:]
    summary = {"steps": prov.get("steps"), "last_loss": [round(r["loss"], 4) for r in last],
               "last_metrics": {k: v for k, v in last[-1].items() if isinstance(v, float)} if last else {}}
    # a rerun of the same --out (e.g. after a crash in a later arm) reuses a policy trained on identical pairs
    marker.write_text(json.dumps({"pairs_sha256": digest, "summary": summary}))
    return summary


def candidates(a, train_rows) -> tuple[list, float]:
    """k sampled candidates per train prompt (or, with --reuse-pairs, the earlier run's), saved to
    DIR/candidates.jsonl with their verifier counts."""
    from pipeline.backends.base import Completion

    t0 = time.time()
    if a.reuse_pairs:
        src = a.reuse_pairs
        for name in ("prompts_train.jsonl", "prompts_heldout.jsonl"):
            if (src / name).read_text() != (a.out / name).read_text():
                raise SystemExit(f"--reuse-pairs {src}: its {name} differs from this run's; fix: same prompt args")
        saved = [json.loads(x) for x in (src / "candidates.jsonl").read_text().splitlines()]
        if any("n_tokens" not in r for r in saved):
            raise SystemExit(f"--reuse-pairs {src}: candidates.jsonl predates token counts; fix: a fresh run")
        results = [[Completion(t, n, f) for t, n, f in zip(r["texts"], r["n_tokens"], r["finish"])] for r in saved]
    else:
        results, _ = sample(MODEL, train_rows, n=a.k, temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                            seed=a.seed, batch_size=a.batch_size, tag="train")
    if not a.reuse_pairs or a.reuse_pairs.resolve() != a.out.resolve():
        with open(a.out / "candidates.jsonl", "w") as f:
            for r, cs in zip(train_rows, results):
                f.write(json.dumps({"prompt_id": r["prompt_id"], "texts": [c.text for c in cs],
                                    "n_tokens": [c.n_tokens for c in cs], "finish": [c.finish_reason for c in cs],
                                    "strict": [score(r, c.text)["strict"] for c in cs]}) + "\n")
    return results, time.time() - t0


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    mix = [m.strip() for m in a.mix.split(",") if m.strip()]
    bad = [m for m in mix if m not in MENU]
    if bad:
        raise SystemExit(f"--mix: unknown type(s) {bad}; fix: use any of {list(MENU)}")
    labels = list(dict.fromkeys(x.strip() for x in a.labels.split(",") if x.strip()))
    if not labels or any(x not in LABELS for x in labels):
        raise SystemExit(f"--labels: {a.labels!r}; fix: a comma-separated list of {list(LABELS)}")
    labels.sort(key=lambda x: x != "verifier")  # the verifier's pair count is every other arm's budget
    a.out.mkdir(parents=True, exist_ok=True)
    timings, t_all = {}, time.time()

    train_rows, held_rows = make(a.seed, mix=mix, n_tasks=a.tasks, per_task=a.per_task,
                                 two_prob=a.two_prob, heldout_frac=a.heldout_frac)
    write_jsonl(a.out / "prompts_train.jsonl", train_rows)
    write_jsonl(a.out / "prompts_heldout.jsonl", held_rows)
    print(f"prompts: {len(train_rows)} train, {len(held_rows)} held-out "
          f"({len({task_of(r) for r in held_rows})} held-out base tasks)", flush=True)

    # 2. candidates (shared by every label source), 4. the base model's evaluation (shared too)
    results, timings["candidates"] = candidates(a, train_rows)
    print(f"candidates: {sum(map(len, results))} in {timings['candidates']:.0f}s", flush=True)
    t0 = time.time()
    base_ev = evaluate(MODEL, held_rows, a, "base")
    timings["eval_base"] = time.time() - t0

    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
              "threads": torch.get_num_threads(), "prompts": {"train": len(train_rows), "heldout": len(held_rows)},
              "candidate_prompt_pass": prompt_pass_rate(train_rows, results), "arms": {}}
    budget = None
    for name in labels:  # 2-4 per label source: pairs, DPO, the trained policy's evaluation against the base's
        pairs_dir, model_dir = arm_dirs(a.out, name)
        t0 = time.time()
        if name == "iterate":
            train_summary, pstats = iterate_arm(a, train_rows, results, budget, model_dir)
        elif name == "online":
            train_summary, pstats = online_arm(a, train_rows)
            model_dir = a.out / "online" / "model"
        else:
            pairs, pstats = label(name, train_rows, results, a, budget)
            if not pairs:
                raise SystemExit(f"--labels {name}: no pair has a contrast; fix: more prompts (--tasks) or --k")
            if name == "verifier":
                budget = len(pairs)
                pstats["candidate_prompt_pass"] = report["candidate_prompt_pass"]
                pstats["judge_calls"] = sum(map(len, results))
            write_pairs(pairs, pstats, pairs_dir)
            print(f"pairs ({name}): {pstats}", flush=True)
            train_summary = train_arm(pairs_dir, model_dir, a)
        timings[f"label_train_{name}"] = time.time() - t0
        print(f"train ({name}): {train_summary['steps']} steps, {timings[f'label_train_{name}']:.0f}s with labelling, "
              f"last losses {train_summary['last_loss']}", flush=True)
        t0 = time.time()
        trained_ev = evaluate(str(model_dir), held_rows, a, f"trained-{name}")
        timings[f"eval_{name}"] = time.time() - t0
        arm = {"pairs": pstats, "train": train_summary, "model": str(model_dir), "eval": {}}
        for mode in base_ev:
            b, t = base_ev[mode]["per_prompt"], trained_ev[mode]["per_prompt"]
            arm["eval"][mode] = {
                "bootstrap": bootstrap(b, t, resamples=a.resamples, seed=a.seed),
                "per_type_strict": {"base": per_type_rates(b, held_rows), "trained": per_type_rates(t, held_rows)},
                "examples": [{"prompt": r["messages"][0]["content"], "base": x["example"], "trained": y["example"]}
                             for r, x, y in list(zip(held_rows, b, t))[:6]],
            }
        report["arms"][name] = arm
        with open(a.out / ("per_prompt.jsonl" if name == "verifier" else f"per_prompt-{name}.jsonl"), "w") as f:
            for mode in base_ev:
                for x, y in zip(base_ev[mode]["per_prompt"], trained_ev[mode]["per_prompt"]):
                    f.write(json.dumps({"mode": mode, "base": x, "trained": y}) + "\n")
    timings["total"] = time.time() - t_all
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    first = report["arms"][labels[0]]
    report.update(label_source=labels[0], pairs=first["pairs"], train=first["train"], eval=first["eval"])
    (a.out / "report.json").write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"plot: {plot(report, a.out / 'improve.png')}")
    if len(labels) > 1:
        print(f"label sources: {plot_labels(report, a.out / 'labels.png')}")
    return 0


def print_table(report: dict) -> None:
    n = report["prompts"]["heldout"]
    for name, arm in report["arms"].items():
        for mode, ev in arm["eval"].items():
            print(f"\nheld-out ({n} prompts, {mode}), pairs labelled by {name}; "
                  "95% paired bootstrap interval of trained - base")
            print(f"{'metric':14s} {'base':>8s} {'trained':>8s} {'diff':>8s}  {'95% CI':>20s}")
            for m, r in ev["bootstrap"].items():
                flag = " *" if r["excludes_0"] else ""
                print(f"{m:14s} {r['base']:8.3f} {r['trained']:8.3f} {r['diff']:+8.3f}  "
                      f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]{flag}")
            print("per type (strict):", json.dumps(ev["per_type_strict"]))
    if len(report["arms"]) > 1:
        first = next(iter(report["arms"].values()))
        print(f"\nlabel sources (same candidates, at most {first['pairs']['pairs']} pairs each); "
              "prompt-level strict accuracy, trained - base [95% CI]")
        modes = list(first["eval"])
        print(f"{'source':10s} {'pairs':>5s} {'calls':>5s} {'agree':>6s} {'tie':>5s} {'rev':>5s}  "
              + "  ".join(f"{m:>24s}" for m in modes))
        for name, arm in report["arms"].items():
            ag = arm["pairs"]["agreement_with_verifier"]
            cells = []
            for m in modes:
                r = arm["eval"][m]["bootstrap"]["prompt_strict"]
                star = "*" if r["excludes_0"] else " "
                cells.append(f"{r['diff']:+.3f} [{r['ci95'][0]:+.3f},{r['ci95'][1]:+.3f}]{star}")
            calls = arm["pairs"].get("judge_calls", -1)
            print(f"{name:10s} {arm['pairs']['pairs']:5d} {calls:5d} {ag['agree']:6.2f} {ag['tie']:5.2f} "
                  f"{ag['reversed']:5.2f}  "
                  + "  ".join(f"{c:>24s}" for c in cells))
    print("timings (s):", report["timings_s"], "threads:", report["threads"])


def plot_labels(report: dict, path: Path) -> Path:
    """One bar per label source and evaluation mode: trained - base prompt-level strict accuracy with its 95% paired
    interval; the share of each source's pairs the verifier agrees with is in the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    modes = list(next(iter(arms.values()))["eval"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        rs = [arm["eval"][mode]["bootstrap"]["prompt_strict"] for arm in arms.values()]
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(arms))]
        ax.bar(xs, [r["diff"] for r in rs], width, label=mode,
               yerr=[[r["diff"] - r["ci95"][0] for r in rs], [r["ci95"][1] - r["diff"] for r in rs]], capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(arms)), [f"{n}\n(verifier agrees {a['pairs']['agreement_with_verifier']['agree']:.0%})"
                                     for n, a in arms.items()])
    ax.set_ylabel("held-out prompt strict: trained - base")
    ax.set_title("label sources, same candidates and pair budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(report: dict, path: Path) -> Path:
    """Base against trained on the held-out prompts: prompt- and instruction-level strict accuracy (the trained bar
    carries the 95% paired interval of the difference, drawn around the trained value) and strict pass rate per
    constraint type, one panel per evaluation mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["eval"])
    fig, axes = plt.subplots(len(modes), 2, figsize=(11, 3.4 * len(modes)), squeeze=False)
    for row, mode in zip(axes, modes):
        ev = report["eval"][mode]
        metrics = ["prompt_strict", "inst_strict", "prompt_loose", "inst_loose"]
        b = [ev["bootstrap"][m]["base"] for m in metrics]
        t = [ev["bootstrap"][m]["trained"] for m in metrics]
        err = [[ev["bootstrap"][m]["diff"] - ev["bootstrap"][m]["ci95"][0] for m in metrics],
               [ev["bootstrap"][m]["ci95"][1] - ev["bootstrap"][m]["diff"] for m in metrics]]
        x = range(len(metrics))
        row[0].bar([i - 0.2 for i in x], b, 0.4, label="base")
        row[0].bar([i + 0.2 for i in x], t, 0.4, yerr=err, capsize=3, label="trained")
        row[0].set_xticks(list(x), metrics)
        row[0].set_ylim(0, 1)
        row[0].set_title(f"held-out, {mode}")
        row[0].legend()
        types = sorted(ev["per_type_strict"]["base"])
        x = range(len(types))
        row[1].bar([i - 0.2 for i in x], [ev["per_type_strict"]["base"][k] for k in types], 0.4, label="base")
        row[1].bar([i + 0.2 for i in x], [ev["per_type_strict"]["trained"][k] for k in types], 0.4, label="trained")
        row[1].set_xticks(list(x), types, rotation=30, ha="right")
        row[1].set_ylim(0, 1)
        row[1].set_title("strict pass rate per constraint type")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
