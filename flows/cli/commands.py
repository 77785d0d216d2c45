"""The `prefsynth` command line: a thin layer over the flows.

`prefsynth run` validates the config before Prefect starts (a typo fails in a second, not after
the engine loads), runs the `build_dataset` flow, and prints a summary: where the shards are, how
many pairs, the drop funnel and the timings. Errors that a user caused print one clear message and
exit with status 2; a run stopped by its budget (`budget.usd`) says what was spent and exits with
status 3; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from flows.cli.args import _default_config, _distributed_overrides, build_parser
from flows.cli.runtime import Terminated, signals
from pipeline.errors import BudgetExceeded, ConfigError, InputError, PrefsynthError, disk_full, no_space

_RESUME = {"run": "; rerun the same command to resume", "train": "; rerun the same command to resume from the last "
           "checkpoint", "train-rm": "; rerun the same command to resume from the last checkpoint",
           "push": "; rerun the same command to push", "review": " (labels are saved as they are made)",
           "iterate": "; rerun the same command to resume the round"}

def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s prefsynth %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("prefsynth")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cmd_run(args) -> int:
    from pipeline.config import apply_overrides, load_yaml

    args.overrides = (
        list(args.overrides)
        + (["input.skip_invalid=true"] if args.skip_invalid else [])
        + _distributed_overrides(args)
    )
    cfg, config_path, out_dir = _checked_config(args, incremental=args.incremental)
    given = apply_overrides(load_yaml(config_path.read_text(), "--config") or {}, args.overrides)
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.cli.runtime import flow_session

    with flow_session():
        from flows.build_dataset import build_dataset
        from pipeline.publish.shards import summary

        manifest = build_dataset(cfg.model_dump(), out_dir, given=given, incremental=args.incremental)
    if manifest.get("nothing_new"):
        print(
            f"nothing new in {cfg.input.path}: {out_dir} already holds every prompt "
            f"({manifest.get('rows', {}).get('pairs', 0)} pairs)"
        )
        edited = manifest.get("edited_prompts_skipped", {}).get("count", 0)
        if edited:
            print(
                f"  {edited} prompt(s) have new text under an already processed prompt_id and were not re-processed; "
                "give an edited prompt a new prompt_id to process it"
            )
        return 0
    print(summary(manifest, out_dir))
    return 0


def default_out(name: str) -> str:
    """./runs/NAME, when NAME is one folder inside ./runs (not '..', '.', nor a path that leaves it)."""
    runs = Path("runs").resolve()
    out = (runs / name).resolve()
    if out.parent != runs or Path(name).name != name:
        raise ConfigError(f"name {name!r} is not a folder name inside ./runs (the run would be written to {out}); "
                          "fix: a plain name without '/' or '..' (--set name=my-run), or pass --out")
    return str(Path("runs") / name)


def _checked_config(args, *, incremental: bool):
    """Load and validate the config, then preflight the output folder, every model and the input
    (pipeline/stages/preflight.py): a bad value fails in a second, before Prefect or a model starts."""
    from pipeline.config import load_config
    from pipeline.stages.preflight import check_run

    config_path = Path(args.config) if args.config else _default_config()
    cfg = load_config(config_path, args.overrides)
    out_dir = args.out if args.out is not None else default_out(cfg.name)
    check_run(cfg, out_dir, incremental=incremental)
    if cfg.distributed.runner == "ray":
        from flows.distributed import task_runner

        task_runner(cfg.distributed)  # prefect-ray missing fails here, before Prefect and Ray start
    return cfg, config_path, out_dir


def cmd_serve(args) -> int:
    from flows.serve import serve

    args.overrides = list(args.overrides) + _distributed_overrides(args)
    cfg, _, out_dir = _checked_config(args, incremental=True)
    out_dir = str(Path(out_dir).resolve())
    when = f"cron {args.cron!r}" if args.cron else f"every {args.interval:g} s"
    print(f"serving deployment build_dataset/{args.name}: {when}, growing {out_dir}")
    serve(cfg.model_dump(), out_dir, name=args.name, cron=args.cron, interval=args.interval)
    return 0


def cmd_card(args) -> int:
    from pipeline.publish.shards import republish

    republish(args.run_dir, log=logging.getLogger("prefsynth").info)  # applies review labels, if any
    print(f"wrote {Path(args.run_dir) / 'README.md'}")
    return 0


def cmd_inspect(args) -> int:
    from pipeline.review.inspect_run import inspect_run

    inspect_run(args.run_dir, sample=args.sample, where=args.where, seed=args.seed)
    return 0


def cmd_judge_eval(args) -> int:
    from pipeline.config import load_config
    from pipeline.loop.judge_eval import run_judge_eval, summary_text

    config_path = Path(args.config) if args.config else _default_config()
    cfg = load_config(config_path, args.overrides)
    summary = run_judge_eval(cfg, args.labels, args.out, config_label=str(config_path),
                             log=logging.getLogger("prefsynth").info)
    print(summary_text(summary))
    print(f"wrote {Path(args.out) / 'judge_eval.md'} (per category, what the numbers mean), judge_eval.parquet, "
          "judge_eval_pairs.parquet")
    return 0


def cmd_eval(args) -> int:
    from pipeline.config import load_config
    from pipeline.core.rundir import check_out_dir
    from pipeline.loop.evaluate import eval_prompts, summary_text
    from pipeline.stages.preflight import check_model, offline_unless_hub

    config_path = Path(args.config) if args.config else _default_config()
    cfg = load_config(config_path, args.overrides)
    baseline = args.baseline or cfg.generate.model
    offline_unless_hub([args.model, baseline])
    for ref, field in ((args.model, "--model"), (baseline, "--baseline")):
        check_model(ref, field=field)
    check_out_dir(args.out)
    eval_prompts(cfg)  # a missing or bad eval.prompts fails here, naming the key
    from flows.cli.runtime import flow_session

    with flow_session():
        from flows.evaluate import evaluate

        summary = evaluate(cfg.model_dump(), args.model, str(args.out), baseline=baseline,
                           config_label=str(config_path))
    print(summary_text(summary))
    print(f"wrote {Path(args.out) / 'report.md'}, eval_summary.parquet, eval_answers.parquet, eval_judgments.parquet")
    return 0


def cmd_iterate(args) -> int:
    from pipeline.config import load_config
    from pipeline.core.rundir import check_out_dir
    from pipeline.loop.evaluate import eval_prompts
    from pipeline.loop.iterate import rounds_text, train_config
    from pipeline.stages.preflight import check_model, offline_unless_hub

    config_path = Path(args.config) if args.config else _default_config()
    rounds = [] if args.rounds is None else [f"iterate.rounds={args.rounds}"]  # --rounds 0 is refused, not ignored
    cfg = load_config(config_path, args.overrides + rounds)
    offline_unless_hub([cfg.generate.model, cfg.judge_model])
    check_model(cfg.generate.model, field="generate.model")
    train_config(cfg, cfg.generate.model)  # a bad iterate.train key fails here, before any model loads
    check_out_dir(args.out)
    eval_prompts(cfg)  # and a missing or bad eval.prompts
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.cli.runtime import flow_session

    with flow_session():
        from flows.iterate import iterate

        rows = iterate(cfg.model_dump(), str(args.out), cfg.iterate.rounds, config_label=str(config_path))
    print(rounds_text(rows))
    print(f"wrote {Path(args.out) / 'rounds.parquet'}; each round under {Path(args.out) / 'round-R'}")
    return 0


def cmd_review(args) -> int:
    from flows.review.app import serve

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port; fix: pass 1 to 65535, or 0 for any free port")
    serve(
        args.run_dir,
        host=args.host,
        port=args.port,
        reviewer=args.reviewer,
        where=args.where,
        log=lambda line: print(line, flush=True),
    )
    return 0


def cmd_push(args) -> int:
    from pipeline.publish.hub import push

    result = push(args.run_dir, args.repo, private=args.private, revision=args.revision, timeout=args.timeout,
                  log=logging.getLogger("prefsynth").info)
    print(result["commit_url"] or "nothing new to push")
    return 0


def cmd_train(args) -> int:
    from pipeline.core.rundir import check_out_dir
    from pipeline.stages.preflight import check_model, offline_unless_hub
    from pipeline.train.config import load_train_config
    from pipeline.train.data import check_degenerate, open_source

    overrides = list(args.overrides) + ([f"model={args.model}"] if args.model else [])
    cfg = load_train_config(args.config, overrides)
    if getattr(args, "online", False) and cfg.online is None:
        cfg = load_train_config(args.config, ["online={}", *overrides])
    offline_unless_hub([cfg.model])
    check_model(cfg.model, field="--model" if args.model else "model")  # preflight: fail in a second
    check_out_dir(args.out)
    if cfg.online is not None:
        return _train_online(cfg, args)
    source = open_source(args.data, verify=False)  # the flow verifies every shard; no need to hash them twice
    check_degenerate(source, lambda msg: None)  # a dataset of only chosen == rejected fails here; the flow warns
    from pipeline.train.parallel import (  # (imports torch: after the data checks, which fail faster)
        plan,
        torchrun_rank,
    )

    plan(cfg)  # train.parallel against torchrun's variables and the batch split
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    if torchrun_rank():  # torchrun's other ranks train beside rank 0, which runs the flow
        from pipeline.train.trainer import train as train_core

        train_core(cfg, args.data, args.out, log=lambda msg: None)
        return 0
    from flows.cli.runtime import flow_session

    with flow_session():
        from flows.train import train

        prov = train(cfg.model_dump(), str(args.data), str(args.out))
    print_train_summary(prov, args.data)
    return 0


def _train_online(cfg, args) -> int:
    from pipeline.loop.online import open_prompts

    open_prompts(args.data)  # preflight: the prompts and the run's config read before any model loads
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.cli.runtime import flow_session

    with flow_session():
        from flows.train import train_online

        prov = train_online(cfg.model_dump(), str(args.data), str(args.out))
    on = prov["online"]
    print(f"trained online for {prov['steps']} steps on {args.data}: {on['pairs']} on-policy pairs from "
          f"{on['judge_calls']} judge calls ({', '.join(on['judges'])}); model: {prov['model']['path']}; "
          f"pairs: {on['pairs_dir']}")
    return 0


def cmd_train_rm(args) -> int:
    from pipeline.core.rundir import check_out_dir
    from pipeline.stages.preflight import check_model, offline_unless_hub
    from pipeline.train.config import load_rm_config
    from pipeline.train.data import check_degenerate, open_source

    cfg = load_rm_config(args.config, list(args.overrides) + ([f"model={args.model}"] if args.model else []))
    offline_unless_hub([cfg.model])
    check_model(cfg.model, field="--model" if args.model else "model")
    check_out_dir(args.out)
    check_degenerate(open_source(args.data, verify=False), lambda msg: None)
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.cli.runtime import flow_session

    with flow_session():
        from flows.train import train_rm

        prov = train_rm(cfg.model_dump(), str(args.data), str(args.out))
    ev, first = prov["final_eval"], prov.get("initial_eval") or {}
    print(f"trained a reward model for {prov['steps']} steps on {args.data}; model: {prov['model']['path']}")
    if "eval/accuracy" in ev:
        interval = f" [{ev['eval/accuracy_lo']:.3g}, {ev['eval/accuracy_hi']:.3g}]" if "eval/accuracy_lo" in ev else ""
        print(f"eval on {ev['eval/pairs']} held-out pairs: accuracy {first.get('eval/accuracy', float('nan')):.3g} "
              f"at step 0 -> {ev['eval/accuracy']:.3g}{interval}, margin {ev['eval/margin']:.4g}, reward mean "
              f"{ev['eval/reward_mean']:.4g} std {ev['eval/reward_std']:.4g}")
    return 0


def print_train_summary(prov: dict, data) -> None:
    """What `prefsynth train` prints: steps, final eval values, the watch's note and every alarm."""
    ev = prov["final_eval"]
    stopped = " (stopped early: train.early_stop)" if prov.get("stopped_early") else ""
    print(f"trained {prov['steps']} steps on {data}{stopped}; model: {prov['model']['path']}")
    if ev:  # values only; their se, intervals and changes are in provenance.json and metrics.jsonl
        shown = {k: v for k, v in ev.items() if not k.endswith(("_se", "_lo", "_hi", "_change"))}
        print("eval: " + ", ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in sorted(shown.items())))
    watch = prov.get("overopt_watch") or {}
    if watch.get("note"):
        print(f"note: {watch['note']}")
    for w in prov["warnings"]:
        print(f"warning at step {w['step']}: {w['warning']}")


def main(argv: list[str] | None = None) -> int:
    # no telemetry from the ephemeral Prefect server (these machines have no network anyway)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # huggingface_hub otherwise calls home on first use
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from pipeline import __version__

        print(f"prefsynth {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging()
    try:
        with signals():
            return {
                "run": cmd_run,
                "card": cmd_card,
                "inspect": cmd_inspect,
                "push": cmd_push,
                "train": cmd_train,
                "train-rm": cmd_train_rm,
                "serve": cmd_serve,
                "review": cmd_review,
                "judge-eval": cmd_judge_eval,
                "eval": cmd_eval,
                "iterate": cmd_iterate,
            }[args.command](args)
    except BudgetExceeded as exc:  # not an input error: the run stopped itself, and a rerun continues
        print(f"prefsynth: budget: {exc}", file=sys.stderr)
        return 3
    except PrefsynthError as exc:
        print(f"prefsynth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write outside the tables' own (a model, a log) on a full disk
        if not disk_full(exc):
            raise
        print(f"prefsynth: error: {no_space(getattr(exc, 'filename', None) or 'the output', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prefsynth: interrupted; finished work is kept{_RESUME.get(args.command, '')}", file=sys.stderr)
        return 130
    except Terminated:
        print(
            f"prefsynth: terminated (SIGTERM); finished work is kept{_RESUME.get(args.command, '')}", file=sys.stderr
        )
        return 143


if __name__ == "__main__":
    sys.exit(main())
