"""Online DPO / IPO / IPO-MD (`prefsynth train --online`): the policy samples, the run's judges label, the trainer
updates, step after step (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"; Calandriello et
al. 2024, "Human Alignment of Large Language Models through Online Preference Optimisation").

`train_online(cfg, data, out_dir)` runs, or resumes, one run under `out_dir`. Each step:
  1. takes `online.prompts_per_step` prompts of --data in a seeded order (a new permutation every epoch);
  2. samples `online.k` answers per prompt from the current policy, or from the Nash-MD mixture of policy and
     reference (`online.mixture`; pipeline/train/sample.py, seeded by (train.seed, step, prompt));
  3. labels them with the run's judges through the judge stage's own core (pipeline/stages/judge.py), aggregated by
     the run's judge.aggregate, and pairs them with the run's pair rules and strategy (pipeline/stages/pair.py); or
     with the verifier alone (`online.labels: verifier`, strategy 'verified');
  4. writes the step's pairs (if any) as a parquet shard OUT/pairs/step-NNNNNN.parquet (pairs schema, atomic), so the
     run is also a dataset: `prefsynth train --data OUT/pairs` retrains offline on it;
  5. takes one optimiser step on those pairs with the DPO trainer's own step (pipeline/train/step.py: losses from
     train.losses, e.g. {ipo: 1} for online IPO); the reference is the policy at step 0 or train.reference, and its
     log-probs of the fresh pairs are computed in the step. A step whose answers give no pair updates nothing.
Checkpoints (pipeline/train/checkpoint.py) every train.save_every steps hold weights, optimiser, scheduler and the
step; the sampling seeds are a pure function of the step, so a resumed run draws, labels and trains exactly what the
uninterrupted one would (tests/flows/test_online.py kills one with SIGKILL).
Judge calls (candidates x judges) and served judges' tokens are counted per step in metrics.jsonl and in
provenance.json (dollars at the run's `prices`); `online.budget_usd` (else the run's `budget.usd`) stops the run
before a request would pass it, the steps already taken checkpointed (pipeline/core/accounting.py); raise it and rerun
the same command to continue.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.config import InputConfig, RunConfig, fingerprint
from pipeline.core import accounting, schemas
from pipeline.core.progress import bar
from pipeline.core.store import write_json, write_text
from pipeline.curation.aggregate import agreement, verifier_scores
from pipeline.errors import BudgetExceeded, InputError
from pipeline.sampling.candidate import candidate_row
from pipeline.stages.judge import build_judges, judge_candidates
from pipeline.stages.pair import aggregated_candidates, pairs_from_scores
from pipeline.stages.prompts import load_prompts
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import TrainConfig
from pipeline.train.data import encode_row
from pipeline.train.loop import precision, start
from pipeline.train.metrics import MetricsLog
from pipeline.train.ref import compute as reference_logps
from pipeline.train.sample import sample_many, stop_ids
from pipeline.train.step import accumulate, mean
from pipeline.train.trainer import load_policy, load_reference
from pipeline.verifiable.spec import wants_verifier

VERSION = "1"


def open_prompts(data) -> tuple[pa.Table, RunConfig, dict | None]:
    """(prompts sorted by prompt_id, the run config whose judges label, the run's manifest) of --data: a `prefsynth
    run` folder (the prompts its prompt filter kept, and its config), or a prompts file/folder as input.path reads it
    (labelled with the default run config's judges)."""
    from pipeline.core.rundir import load_manifest, run_kind

    path = Path(data).expanduser()
    if path.is_dir() and (path / "manifest.json").exists():
        manifest = load_manifest(path)
        # the prompts the run kept: after its prompt filter (dedup, decontamination), as its generate stage read them
        table = next((t for t in (path / "tables" / "prompt_filter.parquet", path / "tables" / "prompts.parquet")
                      if t.is_file()), None)
        if table is None:
            raise InputError(f"--data {path}: the run has no tables/prompt_filter.parquet or prompts.parquet; fix: "
                             "pass the --out folder of a `prefsynth run` that finished its prompt stages, or a "
                             "prompts file")
        prompts = schemas.read_table(table, "prompts")
        run_cfg = RunConfig.model_validate((manifest.get("config") or {}).get("resolved") or {})
    elif path.is_dir() and run_kind(path) is not None:  # stage tables, no manifest yet
        raise InputError(f"--data {path}: a `prefsynth run` folder without manifest.json, so the run has not "
                         "finished; fix: rerun that run's command to finish it, then train on it")
    elif path.exists():
        manifest = None
        prompts = load_prompts(InputConfig(path=str(path), shuffle=False))[0]
        run_cfg = RunConfig()
    else:
        raise InputError(f"--data {path}: no such run folder or prompts file; fix: pass the --out folder of "
                         "`prefsynth run` or a JSONL/parquet prompts file")
    return prompts.sort_by("prompt_id"), run_cfg, manifest


class Labeller:
    """The run's judges (or the verifier alone), aggregation and pair rules, built once; `__call__` turns one step's
    candidates into pairs."""

    def __init__(self, run_cfg: RunConfig, prompts: pa.Table, labels: str, *, spent: list[dict] | None = None,
                 budget_usd: float | None = None):
        from judges.verifier import VerifierJudge

        self.cfg, self.labels = run_cfg, labels
        # served judges' tokens and dollars against train.online.budget_usd (else the run's budget.usd), from what
        # earlier steps spent (a resume)
        name = "online.budget_usd" if budget_usd is not None else "the --data run's budget.usd"
        self.ledger = accounting.Ledger("online", prices=run_cfg.prices, spent=spent, budget_key="online.budget_usd",
                                        budget_name=name,
                                        budget_usd=budget_usd if budget_usd is not None else run_cfg.budget.usd)
        if labels == "verifier" and not wants_verifier("auto", prompts):  # 'auto': some prompt has a spec
            raise InputError("train.online.labels 'verifier': no prompt of --data carries a `verify` spec; fix: give "
                             "prompts with verify specs (see pipeline/verifiable/) or use labels: run")
        j = run_cfg.judge
        self.judges = [] if labels == "verifier" else build_judges(run_cfg, meter=self.ledger)  # models load once
        if labels == "verifier" or wants_verifier(j.verifiers, prompts):
            self.judges.append(VerifierJudge(timeout_s=j.verifier_timeout_s, memory_mb=j.verifier_memory_mb))
        if not self.judges:
            raise InputError("train.online.labels 'run': the run's config has no judge; fix: configure "
                             "judge.templates or judge.reward_models in the run, or use labels: verifier")
        self.pair_cfg = run_cfg.pair if labels == "run" else run_cfg.pair.model_copy(update={"strategy": "verified"})

    def __call__(self, prompts: pa.Table, cands: pa.Table) -> tuple[pa.Table, dict]:
        judgments = judge_candidates(prompts, cands, self.judges)
        passed = {cid: s for cid, (_, s) in verifier_scores(judgments).items()}
        if self.labels == "verifier":
            scored = pl.from_arrow(cands.select(["prompt_id", "candidate_id", "text", "n_tokens"])).join(
                pl.DataFrame({"candidate_id": list(passed), "score": list(passed.values())},
                             schema={"candidate_id": pl.String, "score": pl.Float64}), on="candidate_id")
        else:
            scored = aggregated_candidates(cands, judgments, self.cfg.judge.aggregate, seed=self.cfg.seed)[0]
        pairs, _ = pairs_from_scores(prompts, scored, agreement(judgments)[0], self.pair_cfg,
                                     prompt_ids=prompts.column("prompt_id").to_pylist(), seed=self.cfg.seed,
                                     min_agreement=self.cfg.judge.min_agreement, passed=passed)
        stats = {"judge_calls": judgments.num_rows, "scored": scored.height, "usage": self.ledger.take()}
        if passed:
            stats["verifier_pass"] = sum(passed.values()) / len(passed)
        return pairs, stats


def step_prompts(n: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the prompts of `step` (0-based): positions step*per_step.. of the stream of epoch permutations."""
    orders: dict[int, list[int]] = {}  # each epoch's permutation, made once (a step spans at most a few epochs)
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(f"online-{seed}-{epoch}").shuffle(orders[epoch])
        out.append(orders[epoch][i])
    return out


def sample_seed(seed: int, step: int, prompt_id: str) -> int:
    """A 63-bit seed (the candidates table stores it as int64) per (train.seed, step, prompt)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{prompt_id}".encode()).digest()[:8], "little") >> 1


def data_key(prompts: pa.Table, run_cfg: RunConfig, labels: str) -> str:
    """What the run learns from: the prompts (ids, messages, specs) and the labeller's settings."""
    body = json.dumps({"prompts": prompts.select(["prompt_id", "messages", "verify"]).to_pylist(), "labels": labels,
                       "judge": run_cfg.judge.model_dump(mode="json"), "pair": run_cfg.pair.model_dump(mode="json")},
                      sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def train_online(cfg: TrainConfig, data, out_dir, *, log=print) -> dict:
    """Train (or resume, or report a finished run) online; return the provenance record."""
    if cfg.online is None:
        raise InputError("train.online is not set; fix: pass --online or set online: {} in the trainer config")
    on, out_dir = cfg.online, Path(out_dir)
    prompts, run_cfg, manifest = open_prompts(data)
    run_key = fingerprint("train-online", VERSION, cfg.weight_fields(), data_key(prompts, run_cfg, on.labels))
    done = ckpt.check_out_dir(out_dir, run_key)
    if done is not None:
        log(f"train: {out_dir} already holds this finished online run ({done['steps']} steps); nothing to do")
        return done
    source = SimpleNamespace(shards=[Path(data)], manifest=manifest, fingerprint=run_key)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights_dtype, autocast, _ = precision(cfg, device)
    model, tokenizer, label = load_policy(cfg, device, weights_dtype)
    if cfg.reference:
        ref = load_reference(cfg, tokenizer, device, weights_dtype)[0]
    else:  # the policy at step 0, frozen
        ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(model, tokenizer)
    n = prompts.num_rows
    total_steps = cfg.steps or math.ceil(cfg.epochs * n / on.prompts_per_step)
    params, opt, sched, state = start(model, cfg, device, out_dir, run_key)
    step = state["step"]
    if step:
        log(f"train: resuming the online run from step {step}")
    ckpt.begin(out_dir, run_key, cfg, label, source)
    calls, usage = _spent_so_far(out_dir, step)
    labeller = Labeller(run_cfg, prompts, on.labels, spent=usage, budget_usd=on.budget_usd)
    mlog = MetricsLog(out_dir, tensorboard=cfg.tensorboard, resume_step=step)
    rows = prompts.to_pylist()
    started = time.time()
    enc = dict(max_prompt_tokens=cfg.max_prompt_tokens, max_length=cfg.max_length)
    with bar(total=total_steps, initial=step, desc="train online", unit="step") as pbar:
        while step < total_steps:
            t0 = time.perf_counter()
            picked = [rows[i] for i in step_prompts(n, on.prompts_per_step, step, cfg.seed)]
            picked = list({r["prompt_id"]: r for r in picked}.values())  # a prompt twice in one step: once
            seeds = [sample_seed(cfg.seed, step, r["prompt_id"]) for r in picked]
            drawn = sample_many(model, ref, tokenizer, [r["messages"] for r in picked], k=on.k,
                                max_new_tokens=on.max_new_tokens, temperature=on.temperature, mixture=on.mixture,
                                seeds=seeds, max_prompt_tokens=cfg.max_prompt_tokens, stops=stops)
            cand_rows = [candidate_row(r["prompt_id"], f"{r['prompt_id']}-s{step + 1:06d}-{i:02d}", label,
                                       text=a.text, n_tokens=a.n_tokens, finish_reason=a.finish_reason,
                                       temperature=on.temperature, top_p=1.0, max_new_tokens=on.max_new_tokens,
                                       seed=seed)
                         for r, seed, answers in zip(picked, seeds, drawn) for i, a in enumerate(answers)]
            t1 = time.perf_counter()
            sub = schemas.from_rows(picked, "prompts")
            try:
                pairs, stats = labeller(sub, schemas.from_rows(cand_rows, "candidates"))
            except BudgetExceeded:  # the steps taken stay: checkpoint them (if not yet), then stop with the reason
                if step and step % cfg.save_every:
                    ckpt.save(out_dir, model, opt, sched, None, step=step, epoch=0, consumed=0,
                              keep=cfg.keep_checkpoints)
                mlog.close()
                raise
            calls += stats["judge_calls"]
            usage = accounting.merge(usage, stats["usage"])
            t2 = time.perf_counter()
            if pairs.num_rows:  # a step without pairs writes no shard (readers such as `datasets` refuse empty files)
                schemas.write_table(pairs, out_dir / "pairs" / f"step-{step + 1:06d}.parquet", "pairs")
            batch = [encode_row(tokenizer, p, **enc) for p in pairs.to_pylist()]
            record: dict = {"step": step + 1, "prompts": len(picked), "candidates": len(cand_rows),
                            "pairs": len(batch), "judge_calls_total": calls, **stats}
            opt.zero_grad(set_to_none=True)
            if batch:
                refs = reference_logps(ref, batch, ld_alpha=cfg.ld_alpha, packed=cfg.packing,
                                       micro_batch=cfg.micro_batch_size, logit_chunk=cfg.logit_chunk,
                                       autocast=autocast, pad_id=pad_id)
                sums, vals, tokens = accumulate(model, batch, refs, cfg, pad_id, autocast, n_rationales=0)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                opt.step()
                terms = {k: v / len(batch) for k, v in sums.items()}
                record.update({"loss": sum(cfg.losses[k] * v for k, v in terms.items()),
                               **{f"loss/{k}": v for k, v in terms.items()}, **mean(vals),
                               "grad_norm": float(norm), "tokens": tokens})
            sched.step()
            step += 1
            record.update({"learning_rate": sched.get_last_lr()[0], "sample_seconds": round(t1 - t0, 3),
                           "label_seconds": round(t2 - t1, 3), "seconds": round(time.perf_counter() - t0, 3),
                           "time": time.time()})
            mlog.write(record)
            pbar.advance(1)
            if step % cfg.save_every == 0 or step == total_steps:
                ckpt.save(out_dir, model, opt, sched, None, step=step, epoch=0, consumed=0,
                          keep=cfg.keep_checkpoints)
    mlog.close()
    n_pairs = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((out_dir / "pairs").glob("*.parquet")))
    prov = ckpt.finish(out_dir, run_key, model, tokenizer, cfg=cfg, label=label, source=source, steps=step,
                       total_steps=total_steps, final={}, warnings=[], watch={}, seconds=time.time() - started,
                       log=log)
    prov.update({"online": {**on.model_dump(), "judge_calls": calls, "pairs": n_pairs, "usage": usage,
                            "usd": round(accounting.rows_usd(usage, run_cfg.prices), 6),
                            "judges": [j.id for j in labeller.judges], "pairs_dir": str(out_dir / "pairs")}})
    write_json(out_dir / "provenance.json", prov)
    write_text(out_dir / "pairs" / "README.md", card(prov, run_cfg))
    return prov


def _spent_so_far(out_dir: Path, step: int) -> tuple[int, list[dict]]:
    """(judge calls, served judges' usage rows) of the steps a resumed run already took, from metrics.jsonl."""
    path = out_dir / "metrics.jsonl"
    if not step or not path.exists():
        return 0, []
    recs = [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if r.get("step", 0) <= step]
    return (max((r.get("judge_calls_total", 0) for r in recs), default=0),
            accounting.merge(*(r.get("usage") or [] for r in recs)))


def card(prov: dict, run_cfg: RunConfig) -> str:
    """The on-policy pairs' dataset card: where they came from, how they were labelled, how to read them."""
    on = prov["online"]
    return f"""# On-policy preference pairs from `prefsynth train --online`

{on['pairs']} pairs in {prov['steps']} step shards (`step-NNNNNN.parquet`, TRL's conversational format: prompt,
chosen, rejected as message lists, plus prefsynth's pair columns). Step s's pairs were sampled from the policy after
s - 1 updates of `{prov['model']['base']}` ({on['k']} answers per prompt, {on['prompts_per_step']} prompts per step,
temperature {on['temperature']}, Nash-MD mixture weight {on['mixture']}, at most {on['max_new_tokens']} new tokens),
labelled by {', '.join(f'`{j}`' for j in on['judges'])} ({on['judge_calls']} judge calls), aggregated by
`{run_cfg.judge.aggregate}` and paired by the pair strategy `{'verified' if on['labels'] == 'verifier'
else run_cfg.pair.strategy}`. Losses {prov['losses']}, beta {prov['beta']}.

Retrain offline on them: `prefsynth train --data {on['pairs_dir']} --out DIR`; read them:
`datasets.load_dataset("parquet", data_files="{on['pairs_dir']}/*.parquet")`.
"""
