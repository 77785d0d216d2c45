"""The `prefsynth` command line: a thin layer over the flows.

`prefsynth run` validates the config before Prefect starts (a typo fails in a second, not after
the engine loads), runs the `build_dataset` flow, and prints a summary: where the shards are, how
many pairs, the drop funnel and the timings. Errors that a user caused print one clear message and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flows.runtime import Terminated, signals
from pipeline.errors import InputError, PrefsynthError

_RESUME = {"run": "; rerun the same command to resume", "train": "; rerun the same command to resume from the last "
           "checkpoint", "push": "; rerun the same command to push", "review": " (labels are saved as they are made)"}

RUN_HELP = """\
Build a preference dataset:
  prompts -> prompt_filter -> generate -> judge -> pair -> ches -> rationale -> publish.

Every stage writes its table under OUT/tables/; re-running the same command after a crash skips
stages whose complete output exists for the same config fingerprint and resumes a half-done stage
from its checkpointed chunks. Results: OUT/pairs/*.parquet (TRL conversational format),
OUT/manifest.json, OUT/README.md (dataset card).

Config keys (YAML sections; the same text lives beside each field in pipeline/config.py):
{keys}

examples:
  prefsynth run                                  # bundled prompts and model, data/configs/default.yaml
  prefsynth run --config my.yaml --out runs/my
  prefsynth run --set input.path=prompts.jsonl --set generate.n=6 --skip-invalid
"""


def _default_config() -> Path:
    from pipeline.prompts import bundled_data_dir

    return bundled_data_dir() / "configs" / "default.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefsynth", description="Synthetic preference datasets for LLM alignment.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from pipeline.config import describe_keys
    from pipeline.train.config import TrainConfig

    run = sub.add_parser("run", help="build a preference dataset",
                         description=RUN_HELP.format(keys="\n".join(describe_keys())),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", metavar="FILE", help="YAML config (default: the bundled data/configs/default.yaml)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key, e.g. --set generate.n=6 (repeatable; values are YAML)")
    run.add_argument("--skip-invalid", action="store_true",
                     help="skip and count invalid input rows instead of stopping (same as --set input.skip_invalid=true)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--incremental", action="store_true",
                     help="grow OUT: process only prompts whose prompt_id is not yet in it, append new shards")
    _distributed_args(run)

    srv = sub.add_parser("serve", help="run `prefsynth run --incremental` on a schedule (a Prefect deployment)",
                         description="Serve the build_dataset flow as a Prefect deployment on a cron or interval "
                         "schedule; each run processes only new prompts (see `run --incremental`). Needs a Prefect "
                         "API with a scheduler: `prefect server start` and PREFECT_API_URL, or Prefect Cloud.")
    srv.add_argument("--config", metavar="FILE", help="YAML config (default: the bundled data/configs/default.yaml)")
    srv.add_argument("--out", metavar="DIR", help="the growing dataset folder (default: runs/<config name>)")
    srv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key (repeatable)")
    when = srv.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help='cron schedule, e.g. "0 * * * *" (hourly)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")
    srv.add_argument("--name", default="prefsynth", help="deployment name (default: prefsynth)")
    _distributed_args(srv)

    card = sub.add_parser("card", help="regenerate RUN_DIR/README.md (and plots) from its tables and manifest")
    card.add_argument("run_dir", metavar="RUN_DIR")

    insp = sub.add_parser("inspect", help="read a run in the terminal: summary, funnel, scores, pairs side by side")
    insp.add_argument("run_dir", metavar="RUN_DIR")
    insp.add_argument("--sample", type=_count, default=3, metavar="N", help="show N matching pairs, chosen at random (default 3)")
    insp.add_argument("--where", metavar="SQL", help='filter pairs, e.g. "margin < 0.5 AND chosen_len > rejected_len"')
    insp.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")

    rev = sub.add_parser("review", help="review a run in the browser: page, filter, read judgments, label pairs",
                         description="A local web app over RUN_DIR: summary and funnel, the pairs (server-side "
                         "paging, sorting and --where filters), each pair side by side with its judgments, prompts "
                         "without a pair, the card's plots. Labels (accept, flip, reject, note) are appended to "
                         "RUN_DIR/reviews/; `prefsynth card`, `run` and `push` apply them.")
    rev.add_argument("run_dir", metavar="RUN_DIR")
    rev.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                     "needs the access token printed at start)")
    rev.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    rev.add_argument("--reviewer", metavar="NAME", help="your name on the labels (else the browser asks)")
    rev.add_argument("--where", metavar="SQL", help='open the pairs filtered, e.g. "margin < 0.5" (as inspect)')

    push = sub.add_parser("push", help="publish a run to the Hugging Face Hub (one commit per push, incremental)",
                          description="Publish shards, card, plots, config and manifest of RUN_DIR to a dataset repo. "
                          "The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured.")
    push.add_argument("run_dir", metavar="RUN_DIR")
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="dataset repo id (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main if missing)")

    tr = sub.add_parser("train", help="DPO-train a model directly from a run's pairs shards",
                        description=TRAIN_HELP.format(keys="\n".join(describe_keys(TrainConfig))),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--data", required=True, metavar="RUN_DIR_OR_SHARDS",
                    help="a `prefsynth run` output folder, a folder of pairs shards, or one .parquet file")
    tr.add_argument("--model", metavar="MODEL", help="policy to train (default: bundled:smollm2-135m-instruct); "
                    "same as --set model=MODEL")
    tr.add_argument("--out", required=True, metavar="DIR", help="training folder: checkpoints, metrics, model/")
    tr.add_argument("--config", metavar="FILE", help="YAML trainer config (keys below)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one trainer key, e.g. --set steps=20 (repeatable; values are YAML)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _count(text: str) -> int:
    """argparse type: an integer >= 0 (the error names the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; fix: e.g. --sample 5") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; fix: give 0 or more, e.g. --sample 5")
    return value


def _distributed_args(parser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run generate/judge/CHES/rationale shards as Prefect tasks on Ray: a local instance, or "
                        "the cluster at ADDRESS ('auto', 'ray://HEAD:10001'); same as --set distributed.runner=ray")
    parser.add_argument("--shards", type=int, metavar="N", help="prompt shards per stage with --ray "
                        "(same as --set distributed.shards=N)")


def _distributed_overrides(args) -> list[str]:
    out = []
    if args.ray is not None:
        out.append("distributed.runner=ray")
        if args.ray != "local":
            out.append(f"distributed.address={args.ray}")
    if args.shards is not None:
        out.append(f"distributed.shards={args.shards}")
    return out


TRAIN_HELP = """\
Train a policy with DPO (and friends) on prefsynth pairs, streaming the shards.

Reference log-probs come from the shards when the run's CHES stage computed them with the same
model and dtype, otherwise from one pre-pass cached beside the shards (DATA/ref_logps/). Re-running
the same command resumes from the last checkpoint in OUT; a finished run is reported, not redone.
Results: OUT/model/ (safetensors, loads with transformers and vLLM), OUT/metrics.jsonl,
OUT/tensorboard/, OUT/provenance.json.

Config keys (the same text lives beside each field in pipeline/train/config.py):
{keys}

examples:
  prefsynth train --data runs/smollm2-seed-default --out runs/dpo
  prefsynth train --data runs/my --model HuggingFaceTB/SmolLM2-360M-Instruct --out runs/dpo \\
      --set losses='{{sigmoid: 1.0, nll: 0.2}}' --set steps=200
"""


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s prefsynth %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("prefsynth")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cmd_run(args) -> int:
    import yaml

    from pipeline.config import apply_overrides

    args.overrides = (list(args.overrides) + (["input.skip_invalid=true"] if args.skip_invalid else [])
                      + _distributed_overrides(args))
    cfg, config_path, out_dir = _checked_config(args, incremental=args.incremental)
    given = apply_overrides(yaml.safe_load(config_path.read_text()) or {}, args.overrides)
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.runtime import flow_session

    with flow_session():
        from flows.build_dataset import build_dataset
        from pipeline.publish import summary

        manifest = build_dataset(cfg.model_dump(), out_dir, given=given, incremental=args.incremental)
    if manifest.get("nothing_new"):
        print(f"nothing new in {cfg.input.path}: {out_dir} already holds every prompt "
              f"({manifest.get('rows', {}).get('pairs', 0)} pairs)")
        edited = manifest.get("edited_prompts_skipped", {}).get("count", 0)
        if edited:
            print(f"  {edited} prompt(s) have new text under an already processed prompt_id and were not re-processed; "
                  "give an edited prompt a new prompt_id to process it")
        return 0
    print(summary(manifest, out_dir))
    return 0


def _checked_config(args, *, incremental: bool):
    """Load and validate the config, then preflight the output folder, every model and the input
    (pipeline/preflight.py): a bad value fails in a second, before Prefect or a model starts."""
    from pipeline.config import load_config
    from pipeline.preflight import check_run

    config_path = Path(args.config) if args.config else _default_config()
    cfg = load_config(config_path, args.overrides)
    out_dir = args.out or str(Path("runs") / cfg.name)
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
    from pipeline.publish import republish

    republish(args.run_dir, log=logging.getLogger("prefsynth").info)  # applies review labels, if any
    print(f"wrote {Path(args.run_dir) / 'README.md'}")
    return 0


def cmd_inspect(args) -> int:
    from pipeline.inspect_run import inspect_run

    inspect_run(args.run_dir, sample=args.sample, where=args.where, seed=args.seed)
    return 0


def cmd_review(args) -> int:
    from flows.review_app import serve

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port; fix: pass 1 to 65535, or 0 for any free port")
    serve(args.run_dir, host=args.host, port=args.port, reviewer=args.reviewer, where=args.where,
          log=lambda line: print(line, flush=True))
    return 0


def cmd_push(args) -> int:
    from pipeline.hub import push

    result = push(args.run_dir, args.repo, private=args.private, revision=args.revision,
                  log=logging.getLogger("prefsynth").info)
    print(result["commit_url"] or "nothing new to push")
    return 0


def cmd_train(args) -> int:
    from pipeline.preflight import check_model, offline_unless_hub
    from pipeline.rundir import check_out_dir
    from pipeline.train.config import load_train_config
    from pipeline.train.data import check_degenerate, open_source

    overrides = list(args.overrides) + ([f"model={args.model}"] if args.model else [])
    cfg = load_train_config(args.config, overrides)
    offline_unless_hub([cfg.model])
    check_model(cfg.model, field="--model" if args.model else "model")  # preflight: fail in a second
    check_out_dir(args.out)
    source = open_source(args.data, verify=False)  # the flow verifies every shard; no need to hash them twice
    check_degenerate(source, lambda msg: None)  # a dataset of only chosen == rejected fails here; the flow warns
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.runtime import flow_session

    with flow_session():
        from flows.train import train

        prov = train(cfg.model_dump(), str(args.data), str(args.out))
    print_train_summary(prov, args.data)
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
            return {"run": cmd_run, "card": cmd_card, "inspect": cmd_inspect, "push": cmd_push,
                    "train": cmd_train, "serve": cmd_serve, "review": cmd_review}[args.command](args)
    except PrefsynthError as exc:
        print(f"prefsynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prefsynth: interrupted; finished work is kept{_RESUME.get(args.command, '')}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"prefsynth: terminated (SIGTERM); finished work is kept{_RESUME.get(args.command, '')}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
