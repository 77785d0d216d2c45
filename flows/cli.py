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

from pipeline.errors import PrefsynthError

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
    return parser


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s prefsynth %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("prefsynth")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def summary(manifest: dict, out_dir: str) -> str:
    lines = [
        "",
        f"prefsynth run '{manifest['name']}' done (config fingerprint {manifest['config_fingerprint']})",
        f"  pairs:  {manifest['rows']['pairs']} in {len(manifest['shards'])} shard(s) at {Path(out_dir) / 'pairs'}",
        f"  rows:   {manifest['rows']['prompts']} prompts -> {manifest['rows']['candidates']} candidates -> "
        f"{manifest['rows']['judgments']} judgments -> {manifest['rows']['pairs']} pairs",
        "  funnel:",
    ]
    for f in manifest["funnel"]:
        removed = f["rows_in"] - f["rows_out"]
        lines.append(f"    {f['stage'] + '.' + f['filter']:<30} {f['rows_in']:>5} -> {f['rows_out']:<5} (-{removed}) {f['reason']}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in manifest["timings_s"].items())
    lines += [f"  timings: {timings}", f"  card:   {Path(out_dir) / 'README.md'}",
              f"  manifest: {Path(out_dir) / 'manifest.json'}"]
    return "\n".join(lines)


def cmd_run(args) -> int:
    import yaml

    from pipeline.config import apply_overrides, load_config
    from pipeline.models import resolve, uses_hub
    from pipeline.prompts import load_prompts

    overrides = list(args.overrides) + (["input.skip_invalid=true"] if args.skip_invalid else [])
    config_path = Path(args.config) if args.config else _default_config()
    cfg = load_config(config_path, overrides)
    # no hub id anywhere: make the HF libraries offline, so nothing at run time touches the network
    refs = [cfg.generate.model, cfg.judge_model, cfg.ches_model, cfg.curate.dedup.model]
    if not cfg.input.path.startswith("hf:") and not any(uses_hub(r) for r in refs):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # preflight: a missing model or a bad input row fails in a second, before Prefect or any model starts
    resolve(cfg.generate.model, field="generate.model")
    resolve(cfg.judge_model, field="judge.model")
    load_prompts(cfg.input, seed=cfg.seed)
    out_dir = args.out or str(Path("runs") / cfg.name)
    given = apply_overrides(yaml.safe_load(config_path.read_text()) or {}, overrides)
    if args.quiet:
        os.environ["PREFSYNTH_PROGRESS"] = "0"
    from flows.build_dataset import build_dataset

    manifest = build_dataset(cfg.model_dump(), out_dir, given=given)
    print(summary(manifest, out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    # no telemetry from the ephemeral Prefect server (these machines have no network anyway)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
        return {"run": cmd_run}[args.command](args)
    except PrefsynthError as exc:
        print(f"prefsynth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
