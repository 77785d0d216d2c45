"""The trained model's card: `OUT/model/README.md`, built from the run's provenance alone.

YAML metadata from `huggingface_hub.ModelCardData` (library, tags, `base_model` when the base is
a Hub id), then what a user checks before using the model: base model and data, the training
settings, the held-out evaluation with each value's bootstrap standard error, and the
over-optimisation watch ("Understanding Likelihood Over-optimisation in Direct Alignment
Algorithms", Shi et al. 2024): its rule and settings, whether it could run, and every alarm with
what fired and why (values, window, noise), as in the log and provenance.json (pipeline/train/metrics.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def card_data(prov: dict) -> ModelCardData:
    base = prov["model"]["base"].rsplit("@", 1)[0]
    hub = HUB_ID.fullmatch(base) is not None and not Path(base).exists()
    return ModelCardData(library_name="transformers", tags=["prefsynth", "dpo", "preference-optimization"],
                         base_model=base if hub else None)


def _eval_md(final: dict) -> str:
    names = sorted(k for k in final if not k.endswith(("_se", "_lo", "_hi", "_change")) and k != "eval/pairs")
    if not names:
        return "No eval split (`eval_fraction: 0`): no held-out metrics and no over-optimisation watch."
    rows = ["| metric | value | bootstrap se | 95% interval |", "|---|---|---|---|"]
    for k in names:
        se, lo, hi = (final.get(f"{k}{s}") for s in ("_se", "_lo", "_hi"))
        interval = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
        se = "" if se is None else f"{se:.2g}"
        rows.append(f"| `{k.removeprefix('eval/')}` | {final[k]:.4g} | {se} | {interval} |")
    pairs = final.get("eval/pairs")
    head = f"At the last step, on {int(pairs)} held-out pair(s) (se and interval: bootstrap over the pairs)." \
        if pairs is not None else "At the last step, on the held-out pairs."
    return head + "\n\n" + "\n".join(rows)


def _watch_md(prov: dict) -> str:
    watch, alarms = prov.get("overopt_watch") or {}, prov.get("warnings") or []
    lines = [f"Top-k (k={prov['config']['top_k']}) entropy and mass on the held-out responses (\"Understanding "
             'Likelihood Over-optimisation in Direct Alignment Algorithms", Shi et al. 2024).']
    if not watch or watch.get("eval_pairs") is None:
        return " ".join(lines + ["Not run: no eval split (`eval_fraction: 0`)."])
    lines.append(f"Rule: {watch['rule']}. Settings: window {watch['window']}, z {watch['z']:g}, min_change "
                 f"{watch['min_change']:g}, on {watch['eval_pairs']} eval pair(s).")
    if watch.get("note"):
        lines.append(f"**Not judged**: {watch['note']}.")
    if alarms:
        stop = " The run stopped at the first (`train.early_stop`)." if prov.get("stopped_early") else ""
        lines.append(f"**{len(alarms)} alarm(s)**: the model may be over-optimised.{stop}")
        lines += [f"- step {a['step']}, `{a['indicator']}` ({a['rule']}): {a['warning']}" for a in alarms]
    elif watch.get("active"):
        lines.append("No alarm: neither indicator moved beyond its noise and normal movement for a window.")
    return "\n\n".join(lines)


def render(prov: dict) -> str:
    data, cfg = prov["data"], prov["config"]
    run = f"the prefsynth run `{data['run_name']}`" if data.get("run_name") else "preference pairs"
    stopped = f" (stopped early of {prov['planned_steps']} planned)" if prov.get("stopped_early") else ""
    lora = f"LoRA r={cfg['lora']['r']} (merged)" if cfg.get("lora") else "full fine-tuning"
    reference = f"`{cfg['reference']}`" if cfg.get("reference") else "the policy at step 0"
    body = f"""
# DPO model trained by prefsynth

Trained from `{prov['model']['base']}` on {run} (data fingerprint `{data['fingerprint']}`, shards:
{', '.join(f'`{Path(s).name}`' for s in data['shards'])}).

## Training

- losses {json.dumps(prov['losses'])}, beta {prov['beta']:g}; {lora}; reference {reference}
- {prov['steps']} steps{stopped}, batch {cfg['batch_size']} pairs, learning rate {cfg['learning_rate']:g},
  seed {cfg['seed']}; {prov['seconds']:g} s
- the full config, the shards and the run key are in `provenance.json` beside this folder

## Held-out evaluation

{_eval_md(prov.get('final_eval') or {})}

## Over-optimisation watch

{_watch_md(prov)}
"""
    return ModelCard(f"---\n{card_data(prov).to_yaml()}\n---\n{body}").content


def write(model_dir: Path, prov: dict) -> Path:
    path = Path(model_dir) / "README.md"
    path.write_text(render(prov))
    return path


def render_rm(prov: dict) -> str:
    """A reward model's card: base, data (run fingerprint), loss, held-out pair accuracy at step 0 and at the end,
    the rewards' mean and std (to centre its scores) and how to judge with it."""
    data, cfg = prov["data"], prov["config"]
    run = f"the prefsynth run `{data['run_name']}`" if data.get("run_name") else "preference pairs"
    config_fp = data.get("manifest_config_fingerprint")
    rows = ["| metric | step 0 | final | final 95% interval |", "|---|---|---|---|"]
    first, final = prov.get("initial_eval") or {}, prov.get("final_eval") or {}
    for k in ("accuracy", "margin", "loss", "reward_mean", "reward_std"):
        a, b = first.get(f"eval/{k}"), final.get(f"eval/{k}")
        lo, hi = final.get(f"eval/{k}_lo"), final.get(f"eval/{k}_hi")
        cell = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
        rows.append(f"| `{k}` | {cell(a)} | {cell(b)} | {f'[{lo:.3g}, {hi:.3g}]' if lo is not None else ''} |")
    pairs = final.get("eval/pairs")
    held = (f"On {int(pairs)} held-out pair(s) (prompts never trained on; interval: bootstrap over the pairs):\n\n"
            + "\n".join(rows)) if pairs else "No eval split (`eval_fraction: 0`): no held-out accuracy."
    lora = f"LoRA r={cfg['lora']['r']} (merged)" if cfg.get("lora") else "full fine-tuning"
    body = f"""
# Reward model trained by prefsynth

A Bradley-Terry reward model (`AutoModelForSequenceClassification`, one label: the score of the last token of the
chat-templated conversation) trained from `{prov['model']['base']}` on {run} (data fingerprint
`{data['fingerprint']}`{f', run config fingerprint `{config_fp}`' if config_fp else ''}; shards:
{', '.join(f'`{Path(s).name}`' for s in data['shards'])}).

## Training

- loss {json.dumps(prov['loss'])}; {lora}
- {prov['steps']} steps, batch {cfg['batch_size']} pairs, learning rate {cfg['learning_rate']:g}, seed {cfg['seed']};
  {prov['seconds']:g} s; the full config is in `provenance.json` beside this folder

## Held-out evaluation

{held}

## Use

As a judge of a prefsynth run: `--set judge.reward_models=[<this folder>]` (in process, on vLLM's pooling runner
or behind `vllm serve --runner pooling --convert classify`).
"""
    data_card = ModelCardData(library_name="transformers", tags=["prefsynth", "reward-model"],
                              pipeline_tag="text-classification", base_model=card_data(prov).base_model)
    return ModelCard(f"---\n{data_card.to_yaml()}\n---\n{body}").content


def write_rm(model_dir: Path, prov: dict) -> Path:
    path = Path(model_dir) / "README.md"
    path.write_text(render_rm(prov))
    return path
