"""The `prefsynth` command line's arguments: every subcommand, its options and help text.

flows/cli/commands.py runs the commands; this module only describes them (argparse), so the help a user
reads and the options a command gets are in one place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RUN_HELP = """\
Build a preference dataset:
  prompts -> prompt_filter -> generate -> judge -> pair -> ches -> rationale -> publish.

Every stage writes its table under OUT/tables/; re-running the same command after a crash skips
stages whose complete output exists for the same config fingerprint and resumes a half-done stage
from its checkpointed chunks. Results: OUT/pairs/*.parquet (TRL conversational format),
OUT/manifest.json, OUT/README.md (dataset card).

Config keys (YAML sections; the same text lives beside each field in pipeline/config/):
{keys}

examples:
  prefsynth run                                  # bundled prompts and model, data/configs/default.yaml
  prefsynth run --config my.yaml --out runs/my
  prefsynth run --set input.path=prompts.jsonl --set generate.n=6 --skip-invalid
"""


def _default_config() -> Path:
    from pipeline.stages.prompts import bundled_data_dir

    return bundled_data_dir() / "configs" / "default.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefsynth", description="Synthetic preference datasets for LLM alignment.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from pipeline.config import describe_keys
    from pipeline.train.config import RMConfig, TrainConfig

    run = sub.add_parser("run", help="build a preference dataset",
                         description=RUN_HELP.format(keys="\n".join(describe_keys())),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", metavar="FILE", help="YAML config (default: the bundled data/configs/default.yaml)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key, e.g. --set generate.n=6 (repeatable; values are YAML)")
    run.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip and count invalid input rows instead of stopping (same as --set input.skip_invalid=true)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--incremental",
        action="store_true",
        help="grow OUT: process only prompts whose prompt_id is not yet in it, append new shards",
    )
    _distributed_args(run)

    srv = sub.add_parser(
        "serve",
        help="run `prefsynth run --incremental` on a schedule (a Prefect deployment)",
        description="Serve the build_dataset flow as a Prefect deployment on a cron or interval "
        "schedule; each run processes only new prompts (see `run --incremental`). Needs a Prefect "
        "API with a scheduler: `prefect server start` and PREFECT_API_URL, or Prefect Cloud.",
    )
    srv.add_argument("--config", metavar="FILE", help="YAML config (default: the bundled data/configs/default.yaml)")
    srv.add_argument("--out", metavar="DIR", help="the growing dataset folder (default: runs/<config name>)")
    srv.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable)",
    )
    when = srv.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help='cron schedule, e.g. "0 * * * *" (hourly)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")
    srv.add_argument("--name", default="prefsynth", help="deployment name (default: prefsynth)")
    _distributed_args(srv)

    card = sub.add_parser("card", help="regenerate RUN_DIR/README.md (and plots) from its tables and manifest")
    card.add_argument("run_dir", metavar="RUN_DIR")

    insp = sub.add_parser("inspect", help="read a run in the terminal: summary, funnel, scores, pairs side by side")
    insp.add_argument("run_dir", metavar="RUN_DIR")
    insp.add_argument(
        "--sample", type=_count, default=3, metavar="N", help="show N matching pairs, chosen at random (default 3)"
    )
    insp.add_argument("--where", metavar="SQL", help='filter pairs, e.g. "margin < 0.5 AND chosen_len > rejected_len"')
    insp.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")

    jev = sub.add_parser(
        "judge-eval",
        help="score the configured judges on your human-labelled preference pairs, before a large run",
        description=JUDGE_EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jev.add_argument(
        "--labels", required=True, metavar="FILE",
        help="labelled pairs, .jsonl or .parquet: prompt, chosen, rejected (TRL preference format); optional "
        "category, id",
    )
    jev.add_argument("--config", metavar="FILE", help="YAML config whose judge.* to check (default: the bundled one)")
    jev.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set judge.pairwise_templates=[pairwise-ab-v1] (repeatable)",
    )
    jev.add_argument("--out", required=True, metavar="DIR", help="where judge_eval.parquet, judge_eval_pairs.parquet "
                     "and judge_eval.md go")

    ev = sub.add_parser("eval", help="a trained policy against a baseline on held-out prompts: win rate, LC win "
                        "rate, length, verifier accuracy", description=EVAL_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", required=True, metavar="MODEL", help="policy to evaluate (A): a model folder, e.g. "
                    "a `prefsynth train` OUT/model, bundled:NAME or a Hub id")
    ev.add_argument("--baseline", metavar="MODEL", help="what A is compared with (B; default: generate.model)")
    ev.add_argument("--config", metavar="FILE", help="YAML config: judge.*, generate.* sampling, eval.* (default: "
                    "the bundled one)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key, e.g. --set eval.limit=64 (repeatable)")
    ev.add_argument("--out", required=True, metavar="DIR", help="where report.md and the eval tables go")

    it = sub.add_parser("iterate", help="rounds of generate -> judge -> curate -> train -> eval, each round's "
                        "policy generating the next round's candidates", description=ITERATE_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    it.add_argument("--config", metavar="FILE", help="YAML run config with iterate.* and eval.* (default: the "
                    "bundled one)")
    it.add_argument("--rounds", type=int, metavar="K", help="rounds to run (same as --set iterate.rounds=K)")
    it.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key, e.g. --set iterate.train='{steps: 20}' (repeatable)")
    it.add_argument("--out", required=True, metavar="DIR", help="where rounds.parquet, prompts/ and round-R/ go")
    it.add_argument("--quiet", action="store_true", help="no progress bars")

    rev = sub.add_parser(
        "review",
        help="review a run in the browser: page, filter, read judgments, label pairs",
        description="A local web app over RUN_DIR: summary and funnel, the pairs (server-side "
        "paging, sorting and --where filters), each pair side by side with its judgments, prompts "
        "without a pair, the card's plots. Labels (accept, flip, reject, note) are appended to "
        "RUN_DIR/reviews/; `prefsynth card`, `run` and `push` apply them.",
    )
    rev.add_argument("run_dir", metavar="RUN_DIR")
    rev.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other needs the access token printed at start)",
    )
    rev.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    rev.add_argument("--reviewer", metavar="NAME", help="your name on the labels (else the browser asks)")
    rev.add_argument("--where", metavar="SQL", help='open the pairs filtered, e.g. "margin < 0.5" (as inspect)')

    push = sub.add_parser(
        "push",
        help="publish a run to the Hugging Face Hub (one commit per push, incremental)",
        description="Publish shards, card, plots, config and manifest of RUN_DIR to a dataset repo. "
        "The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured.",
    )
    push.add_argument("run_dir", metavar="RUN_DIR")
    push.add_argument("--repo", required=True, metavar="ORG/NAME", help="dataset repo id (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main if missing)")
    push.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                      help="give up on a Hub request that sends or answers nothing for this long (default 60)")

    tr = sub.add_parser(
        "train",
        help="DPO-train a model directly from a run's pairs shards",
        description=TRAIN_HELP.format(keys="\n".join(describe_keys(TrainConfig))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument(
        "--data",
        required=True,
        metavar="RUN_DIR_OR_SHARDS",
        help="a `prefsynth run` output folder, a folder of pairs shards, or one .parquet file",
    )
    tr.add_argument(
        "--model",
        metavar="MODEL",
        help="policy to train (default: bundled:smollm2-135m-instruct); same as --set model=MODEL",
    )
    tr.add_argument("--out", required=True, metavar="DIR", help="training folder: checkpoints, metrics, model/")
    tr.add_argument("--config", metavar="FILE", help="YAML trainer config (keys below)")
    tr.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one trainer key, e.g. --set steps=20 (repeatable; values are YAML)",
    )
    tr.add_argument("--online", action="store_true",
                    help="online DPO/IPO: --data gives prompts (a run folder, whose judges label, or a prompts file); "
                    "each step samples from the policy, labels, pairs and trains (keys online.*)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")

    rm = sub.add_parser("train-rm", help="train a Bradley-Terry reward model from a run's pairs shards",
                        description=TRAIN_RM_HELP.format(keys="\n".join(describe_keys(RMConfig))),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rm.add_argument("--data", required=True, metavar="RUN_DIR_OR_SHARDS",
                    help="a `prefsynth run` output folder, a folder of pairs shards, or one .parquet file")
    rm.add_argument("--model", metavar="MODEL",
                    help="base model under the reward head (default: bundled:smollm2-135m-instruct)")
    rm.add_argument("--out", required=True, metavar="DIR", help="training folder: checkpoints, metrics, model/")
    rm.add_argument("--config", metavar="FILE", help="YAML reward-model config (keys below)")
    rm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one key, e.g. --set steps=20 (repeatable; values are YAML)")
    rm.add_argument("--quiet", action="store_true", help="no progress bars")
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
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run generate/judge/CHES/rationale shards as Prefect tasks on Ray: a local instance, or "
        "the cluster at ADDRESS ('auto', 'ray://HEAD:10001'); same as --set distributed.runner=ray",
    )
    parser.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="prompt shards per stage with --ray (same as --set distributed.shards=N)",
    )


def _distributed_overrides(args) -> list[str]:
    out = []
    if args.ray is not None:
        out.append("distributed.runner=ray")
        if args.ray != "local":
            out.append(f"distributed.address={args.ray}")
    if args.shards is not None:
        out.append(f"distributed.shards={args.shards}")
    return out


JUDGE_EVAL_HELP = """\
Score the judges a run would use (the config's judge.*: absolute templates, pairwise templates,
reward models, and their ensemble by judge.aggregate) on pairs that people labelled.

Accuracy is the share of pairs where a judge prefers the labelled `chosen` (a tie counts 0.5;
0.5 is chance), overall and per `category`, with a 95% bootstrap interval over the pairs. Pairs a
judge could not judge (not ok) are counted as failed and left out. Pairwise judges run in both
orders; their position consistency is the share of pairs where both orders agree.
Results: OUT/judge_eval.parquet, OUT/judge_eval_pairs.parquet, OUT/judge_eval.md.

examples:
  prefsynth judge-eval --labels labelled.jsonl --out runs/judge-check
  prefsynth judge-eval --labels labelled.parquet --config my.yaml --out runs/check \\
      --set judge.reward_models=[my/rm] --set judge.aggregate=mean_normalised
"""


EVAL_HELP = """\
Evaluate a policy (A) against a baseline (B) on held-out prompts (eval.prompts, else input.path;
eval.limit of them): one answer each per prompt with the same seed, judged by the config's judges
(pairwise judges in both orders, combined by judge.aggregate). Reports A's win rate (ties half)
with a 95% bootstrap interval, a length-controlled win rate (reduced AlpacaEval LC: length term
only), mean answer tokens, verifier accuracy on prompts with verify specs, and the top-k entropy /
mass indicators.
Results: OUT/report.md, OUT/eval_summary.parquet, OUT/eval_answers.parquet, OUT/eval_judgments.parquet.

examples:
  prefsynth eval --model runs/dpo/model --out runs/dpo-eval
  prefsynth eval --model runs/r2/model --baseline runs/r1/model --config my.yaml --out runs/eval \\
      --set eval.prompts=heldout.jsonl --set eval.limit=200
"""


ITERATE_HELP = """\
Iterative preference optimisation: round r runs `prefsynth run` with policy r generating (round 0:
generate.model) on the round's prompts (iterate.prompts: fresh or fixed), trains policy r+1 from
policy r on the round's pairs (iterate.train), and evaluates policy r+1 against the base and
against policy r on held-out prompts (eval.*). Rerunning the same command reuses finished rounds
and resumes a killed one inside its stage or training step.
Results: OUT/rounds.parquet (one row per round), OUT/round-R/{run,train,eval-base,eval-previous}.

examples:
  prefsynth iterate --rounds 3 --out runs/loop
  prefsynth iterate --config my.yaml --rounds 2 --out runs/loop --set iterate.prompts=fixed \\
      --set iterate.train='{steps: 50, batch_size: 8}'
"""


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
  prefsynth train --online --data runs/my --out runs/online --set steps=50   # online DPO, the run's judges
  prefsynth train --online --data prompts.jsonl --out runs/ipo-md --set online.labels=verifier \\
      --set losses='{{ipo: 1.0}}' --set online.mixture=0.125    # online IPO-MD, verifier labels

Online (--online, pipeline/loop/online.py): every step samples online.k answers to online.prompts_per_step prompts
from the current policy (or the Nash-MD mixture with the reference), labels them with --data's judges, pairs them
with its pair strategy and takes one step on those pairs; the pairs stay as shards in OUT/pairs/ (with a card).
"""


TRAIN_RM_HELP = """\
Train a Bradley-Terry reward model (a one-label sequence-classification head on a base model) on
prefsynth pairs, streaming the shards; held-out prompts give the eval pair accuracy (with a bootstrap
interval), reward margin and the rewards' mean and std. Re-running the same command resumes from the
last checkpoint in OUT. Results: OUT/model/ (a judge.reward_models entry as it is), OUT/metrics.jsonl,
OUT/provenance.json (the data's fingerprint).

Config keys (the same text lives beside each field in pipeline/train/config.py, RMConfig):
{keys}

examples:
  prefsynth train-rm --data runs/my --out runs/rm --set steps=200
  prefsynth run --config my.yaml --set judge.reward_models=[runs/rm/model]
"""
