"""`prefsynth iterate`: the plan and records of iterative preference optimisation rounds (flows/iterate.py runs them).

Iterative / online DPO (Xu et al. 2023, "Some things are more CRINGE than others: iterative preference
optimization with the pairwise cringe loss"; Yuan et al. 2024, "Self-Rewarding Language Models"; Guo et al. 2024,
"Direct Language Model Alignment from Online AI Feedback") generate each round's candidates with the current policy.
Round r (policy 0 is generate.model, the base):
  1. an ordinary `prefsynth run` in DIR/round-r/run with generate.model = policy r: candidates from policy r,
     judged by the base config's judges (judge.model stays the base's: the judge does not drift with the policy),
     paired and CHES-filtered with policy r (curate.ches.model follows generate.model unless set);
  2. `prefsynth train` into DIR/round-r/train, starting from policy r; its reference is policy r (the trainer's
     step-0 policy; `iterate.reference: previous`) or the base (`base`: train.reference, a fixed KL anchor);
     the result DIR/round-r/train/model is policy r+1;
  3. `prefsynth eval` of policy r+1 against the base (DIR/round-r/eval-base) and against policy r
     (DIR/round-r/eval-previous; in round 0 the two are one evaluation) on the held-out prompts.
Mixture (iterate.mixture, IPO-MD's sampling from a mixture of the policy and the reference, Calandriello et al.
2024): from round 1 on, a share of each prompt's candidates comes from the base model, the rest from policy r.
Prompts: the source (input.path, shuffled with `seed`) is split once: held-out prompts for eval (eval.prompts, or
else the first eval.limit of the source, never trained on), then input.limit training prompts per round, the next
ones each round (`iterate.prompts: fresh`) or round 0's every round ('fixed'). Each round's prompts are a parquet
file under DIR/prompts/, the round's input.path. Every round uses the same `seed`, so a prompt's candidate k has
the same sampling seed in every round and differs between rounds only by the policy.
Resume: each step resumes itself (stages skip or resume from their chunks, training from its last checkpoint, an
evaluation whose summary names the same models is read back), so a rerun reuses finished rounds and continues a
killed one inside its stage or training step. DIR/rounds.parquet (schemas.ROUNDS) ties the rounds together;
DIR/README.md (its card: a table and DIR/rounds.png, pipeline/publish/plots.py) shows them per round.
Early stop (iterate.early_stop): after a round whose policy does not beat the previous one on the held-out prompts
(win rate <= 0.5) or whose training's over-optimisation watch fired (Shi et al. 2024's top-k indicators).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from pipeline.config import InputConfig, RunConfig
from pipeline.core import schemas
from pipeline.core.store import write_text
from pipeline.errors import ConfigError, InputError, SchemaError
from pipeline.publish.plots import rounds_plot
from pipeline.stages.prompts import load_prompts
from pipeline.train.config import TrainConfig

HELD_OUT = "held_out.parquet"


def round_dirs(out_dir, r: int) -> dict[str, Path]:
    base = Path(out_dir) / f"round-{r}"
    return {"run": base / "run", "train": base / "train", "eval-base": base / "eval-base",
            "eval-previous": base / "eval-previous"}


def plan_prompts(cfg: RunConfig, out_dir, rounds: int) -> tuple[Path, list[Path]]:
    """Write the held-out prompts and each round's training prompts under DIR/prompts/; return their paths."""
    source, _ = load_prompts(InputConfig(path=cfg.input.path, split=cfg.input.split, shuffle=cfg.input.shuffle,
                                         skip_invalid=cfg.input.skip_invalid), seed=cfg.seed)
    if cfg.eval.prompts:
        try:
            held, _ = load_prompts(InputConfig(path=cfg.eval.prompts, limit=cfg.eval.limit,
                                               skip_invalid=cfg.input.skip_invalid), seed=cfg.seed)
        except InputError as exc:
            raise InputError(f"eval.prompts: {str(exc).removeprefix('input.path ')}") from None
        kept = set(held.column("prompt_id").to_pylist())
        pool = source.filter(pa.array([p not in kept for p in source.column("prompt_id").to_pylist()]))
    else:
        held, pool = source.slice(0, cfg.eval.limit), source.slice(cfg.eval.limit)
    per_round = cfg.input.limit or pool.num_rows
    need = per_round * (rounds if cfg.iterate.prompts == "fresh" else 1)
    if held.num_rows == 0 or pool.num_rows < need:
        raise ConfigError(
            f"iterate.prompts={cfg.iterate.prompts}: {rounds} round(s) of input.limit={per_round} prompts need {need} "
            f"besides {cfg.eval.limit} held out (eval.limit), but input.path {cfg.input.path!r} has "
            f"{source.num_rows}; "
            "fix: lower input.limit or eval.limit, set iterate.prompts=fixed, or give more prompts"
        )
    folder = Path(out_dir) / "prompts"
    held_path = _write_if_changed(held, folder / HELD_OUT)
    paths = []
    for r in range(rounds):
        start = r * per_round if cfg.iterate.prompts == "fresh" else 0
        paths.append(_write_if_changed(pool.slice(start, per_round), folder / f"round-{r}.parquet"))
    return held_path, paths


def _write_if_changed(table: pa.Table, path: Path) -> Path:
    """Write a prompts table unless the file already holds exactly these rows: a round's run fingerprints its
    input by the file's size and mtime, so rewriting an identical file made a rerun redo every stage (issue 39)."""
    try:
        if path.is_file() and schemas.read_table(path, "prompts").equals(schemas.check(table, "prompts")):
            return path
    except (OSError, ValueError, pa.ArrowException, SchemaError):  # unreadable or damaged: written again
        pass
    return schemas.write_table(table, path, "prompts")


def mixture_pool(cfg: RunConfig, policy: str) -> list[dict]:
    """generate.pool of a round with iterate.mixture: round(mixture * n) members are the base, the rest policy r,
    so the pool has exactly n members and every prompt gets that many candidates from each (pipeline/sampling/pools.py
    draws all n, in a seeded order per prompt). RunConfig checks at load that the share fits n."""
    g = cfg.generate
    k = round(cfg.iterate.mixture * g.n)
    return [{"model": g.model}] * k + [{"model": policy}] * (g.n - k)


def round_config(cfg: RunConfig, r: int, policy: str, prompts: Path) -> RunConfig:
    """Round r's run config: the base config with policy r generating on the round's prompts (with
    iterate.mixture, a share of each prompt's candidates from the base: `mixture_pool`)."""
    data = cfg.model_dump()
    data["name"] = f"{cfg.name}-round-{r}"
    data["input"].update(path=str(prompts), limit=None, shuffle=False)
    if cfg.iterate.mixture and policy != cfg.generate.model:
        data["generate"]["pool"] = mixture_pool(cfg, policy)
        data["iterate"]["mixture"] = 0.0  # realised as the round's pool; the round's run does not iterate
    data["generate"]["model"] = policy
    data["judge"]["model"] = cfg.judge_model  # the base's judge, whatever the policy
    return RunConfig.model_validate(data)


def train_config(cfg: RunConfig, policy: str) -> TrainConfig:
    """iterate.train with `model` = policy r and the run's seed unless given; a bad key is a ConfigError."""
    if "model" in cfg.iterate.train or "reference" in cfg.iterate.train:
        raise ConfigError("iterate.train.model or iterate.train.reference is set; fix: drop it (round r trains "
                          "policy r, round 0 starts from generate.model; iterate.reference picks the reference)")
    try:
        ref = cfg.generate.model if cfg.iterate.reference == "base" and policy != cfg.generate.model else None
        return TrainConfig.model_validate({"seed": cfg.seed, **cfg.iterate.train, "model": policy, "reference": ref})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"iterate.train.{key}: {err['msg']} (got {err.get('input')!r}); fix: see "
                          "`prefsynth train --help` for the trainer's keys") from None


def finished_eval(folder: Path, model: str, baseline: str) -> dict | None:
    """The summary of an evaluation already in `folder` of these two models, else None."""
    path = folder / "eval_summary.parquet"
    if not path.exists():
        return None
    row = schemas.read_table(path, "eval_summary").to_pylist()[0]
    return row if (row["model"], row["baseline"]) == (model, baseline) else None


def round_row(r: int, policy: str, new_policy: str, dirs: dict[str, Path], manifest: dict, prov: dict,
              vs_base: dict, vs_previous: dict) -> dict:
    """One rounds.parquet row: where the round lives and what its evaluations found."""
    out = {"round": r, "policy": policy, "trained": new_policy, "run_dir": str(dirs["run"]),
           "train_dir": str(dirs["train"]), "pairs": int(manifest.get("rows", {}).get("pairs", 0)),
           "steps": int(prov["steps"])}
    for name, s in (("base", vs_base), ("previous", vs_previous)):
        out.update({f"win_rate_vs_{name}": s["win_rate"], f"win_low_vs_{name}": s["win_low"],
                    f"win_high_vs_{name}": s["win_high"], f"lc_win_rate_vs_{name}": s["lc_win_rate"]})
    for name in ("mean_tokens", "verifier_accuracy"):
        out.update({name: vs_base[f"model_{name}"], f"base_{name}": vs_base[f"baseline_{name}"]})
    out.update({name: vs_base[f"model_{name}"] for name in ("topk_entropy", "topk_mass")})
    out["stop"] = None
    return out


def stop_reason(row: dict, prov: dict) -> str | None:
    """Why iterate.early_stop ends the loop after this round, or None to go on."""
    if prov.get("warnings"):
        return f"the over-optimisation watch fired in training: {prov['warnings'][0]['warning']}"
    win = row["win_rate_vs_previous"]
    if row["round"] > 0 and win is not None and win <= 0.5:
        return f"policy {row['round'] + 1} does not beat policy {row['round']} (win rate {win:.3f} <= 0.5)"
    return None


def write_card(out_dir, rows: list[dict], *, config: str) -> Path:
    """DIR/README.md: per round the trained policy against the base and the previous one, with DIR/rounds.png."""
    out = Path(out_dir)
    rounds_plot(rows, out / "rounds.png")
    f = lambda x, d=3: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = [f"# Iterative preference optimisation: {len(rows)} round(s)", "", f"Config: `{config}`. Round r "
             "generates with policy r (policy 0: the base), trains policy r+1 from it, and evaluates policy r+1 on "
             "held-out prompts (`prefsynth eval`: win rate with ties half and a 95% bootstrap interval; LC: "
             "length-controlled, a reduced form of AlpacaEval 2's LC without its instruction-difficulty term, "
             "Dubois et al. 2024; not comparable with a leaderboard's LC).", "", "![per round](rounds.png)", "",
             "| policy | pairs | steps | win vs base [95%] | LC vs base | win vs previous | mean tokens (base) | "
             "verifier accuracy (base) | top-k entropy | top-k mass |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round'] + 1} | {r['pairs']} | {r['steps']} | {f(r['win_rate_vs_base'])} "
                     f"[{f(r['win_low_vs_base'])}, {f(r['win_high_vs_base'])}] | {f(r['lc_win_rate_vs_base'])} | "
                     f"{f(r['win_rate_vs_previous'])} | {f(r['mean_tokens'], 1)} ({f(r['base_mean_tokens'], 1)}) | "
                     f"{f(r['verifier_accuracy'])} ({f(r['base_verifier_accuracy'])}) | {f(r['topk_entropy'])} | "
                     f"{f(r['topk_mass'])} |")
    stops = [r for r in rows if r["stop"]]
    if stops:
        lines += ["", f"Stopped after round {stops[0]['round']} (iterate.early_stop): {stops[0]['stop']}."]
    lines += ["", "Each round: `round-R/run` (a `prefsynth run` folder), `round-R/train` (its model in `model/`), "
              "`round-R/eval-base` and `round-R/eval-previous` (report.md, answers and judgments); the held-out and "
              "per-round prompts in `prompts/`.", ""]
    path = out / "README.md"
    write_text(path, "\n".join(lines))
    return path


def write_rounds(out_dir, rows: list[dict]) -> Path:
    return schemas.write_table(schemas.from_rows(rows, "rounds"), Path(out_dir) / "rounds.parquet", "rounds")


def read_rounds(out_dir) -> list[dict]:
    path = Path(out_dir) / "rounds.parquet"
    return schemas.check(pq.read_table(path), "rounds").to_pylist() if path.exists() else []


def rounds_text(rows: list[dict]) -> str:
    """What the CLI prints: one line per round."""
    f = lambda x, d=3: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    return "\n".join(
        f"round {r['round']}: {r['pairs']} pairs, {r['steps']} steps; win rate vs base {f(r['win_rate_vs_base'])} "
        f"(LC {f(r['lc_win_rate_vs_base'])}), vs previous {f(r['win_rate_vs_previous'])}; mean tokens "
        f"{f(r['mean_tokens'], 1)} (base {f(r['base_mean_tokens'], 1)}); verifier accuracy "
        f"{f(r['verifier_accuracy'])} (base {f(r['base_verifier_accuracy'])})" for r in rows)
