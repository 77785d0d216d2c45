"""The dataset card: the run's README.md, built from manifest.json and the run's tables alone.

YAML metadata comes from `huggingface_hub.DatasetCardData`, with an explicit `configs:` block
whose `data_files` point at the shard layout (split `train`), so `load_dataset(RUN_DIR)` and the
Hub viewer find the data. The body has the sections a preference-data user checks before
training: provenance (models, revisions, template ids, fingerprints, the config to reproduce the
run), the drop funnel, score and margin histograms, length bias, judges (agreement and position
consistency where the run has more than one judge or a pairwise judge), human review labels and
each judge's agreement with them (when the run was reviewed), the CHES distribution, sample pairs
with rationales, the tokens and dollars of requests to endpoints, and how to train on it.
`prefsynth card RUN_DIR` calls `write`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from judges.agreement import median
from pipeline.core import schemas
from pipeline.core.funnel import unit_label
from pipeline.core.rundir import load_manifest, load_pairs, prompt_drops
from pipeline.core.store import write_text
from pipeline.errors import SchemaError
from pipeline.publish import plots
from pipeline.stages.turns import turns_md

SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def card_data(manifest: dict) -> DatasetCardData:
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "pairs/train-*.parquet"}]}]
    if manifest.get("ranked_shards"):
        configs.append({"config_name": "ranked", "data_files": [{"split": "train", "path": "ranked/train-*.parquet"}]})
    for c in configs:
        for f in c["data_files"]:
            if not SPLIT_NAME.match(f["split"]):
                raise SchemaError(f"card split name {f['split']!r} does not match {SPLIT_NAME.pattern}")
    return DatasetCardData(
        license=manifest["config"]["resolved"]["publish"]["license"],
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[size_category(manifest["rows"]["pairs"])],
        tags=["dpo", "preference", "synthetic", "prefsynth"],
        pretty_name=manifest["name"],
        configs=configs,
    )


def _fence(text: str | None) -> str:
    text = re.sub(r"`{3,}", "'''", text or "")  # content cannot close the fence
    return f"```text\n{text}\n```"


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"mean {sum(values) / len(values):.3f}, median {median(values):.3f}, min {min(values):.3f}, max {max(values):.3f}"


def _sources_md(m: dict) -> str:
    src = m.get("sources") or {}
    by = src.get("pairs_by_strategy") or {}
    lines = ["| pair_strategy | pairs |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in by.items())]
    sc = src.get("self_critique")
    if sc:
        lines += ["", f"Self-critique: teacher `{sc['model']}`, principles {', '.join(sc['principles'])}, template "
                  f"`{sc['template']}`; reward model `{sc['reward_model']}` gives `label_confidence` and prefers the "
                  f"original in {sc['reward_model_disagrees']} pairs."]
    div = m.get("diversity") or {}
    if div:
        lines += ["", "Candidate diversity per generation mode (mean over prompts; distinct-n over word n-grams, "
                  "embedding distance = mean pairwise 1 - cosine of MiniLM embeddings):", "",
                  "| mode | prompts | distinct-1 | distinct-2 | embedding distance |", "|---|---|---|---|---|",
                  *(f"| {mode} | {v['prompts']} | {v.get('distinct_1')} | {v.get('distinct_2')} | "
                    f"{v.get('embedding_distance')}"
                    f"{f' (seeded sample of {n} prompts)' if (n := v.get('embedded_prompts')) else ''} |"
                    for mode, v in div.items())]
    return "\n".join(lines)


def _prompt_set_md(m: dict) -> str:
    """Where the prompts came from and how varied they are (beside the candidates' diversity below)."""
    ps = m.get("prompt_set")
    if not ps:
        return "Not recorded (a run from before prefsynth described its prompt set)."
    d = ps.get("diversity") or {}
    top = lambda counts: ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"  # noqa: E731
    lines = [f"{ps['prompts']} prompts after the prompt filter. Sources: {top(ps.get('sources') or {})}. "
             f"Categories: {top(ps.get('categories') or {})}.", "",
             f"Prompt-set diversity: distinct-1 {d.get('distinct_1')}, distinct-2 {d.get('distinct_2')}, embedding "
             f"distance {d.get('embedding_distance')} (mean pairwise 1 - cosine over {d.get('embedded')} prompts); the "
             "candidates' figures per prompt are in the next section."]
    conv = ps.get("conversation")
    if conv:
        lines += ["", f"Simulated conversations (`sources.conversation`, template `{conv['template']}`): {conv['rows']} "
                  f"grown to {conv['user_turns']} user turns ({conv['ended_early']} ended early); user simulator "
                  f"`{conv['simulator']}`, policy `{conv['policy']}`."]
    made = ps.get("synth")
    if made:
        lines += ["", f"Synthesised by `{made['model']}` in mode `{made['mode']}` (template `{made['template']}`): "
                  f"{made['kept']} of {made['requests']} requests kept (the `synth` steps of the funnel)."]
        for reason, texts in (made.get("drop_examples") or {}).items():
            lines.append(f"- dropped as `{reason}`, e.g. {json.dumps(texts[0][:160].replace('`', chr(39)))}")
    return "\n".join(lines)


def _judges_md(m: dict) -> str:
    agreement = m.get("judge_agreement") or {}
    per_judge = agreement.get("judges") or {}
    modes = m.get("judge_modes") or {}
    rows = "\n".join(f"| `{j}` | {v['kind']} | {v['judgments']} | {v['failure_rate']} | "
                     f"{'n/a' if v['position_consistency'] is None else v['position_consistency']} | "
                     f"{_mode(modes.get(j))} | {_na((modes.get(j) or {}).get('parse_failure_rate'))} |"
                     for j, v in per_judge.items())
    taus = "\n".join(f"- Kendall tau-b `{pair}`: {tau}" for pair, tau in (agreement.get("kendall_tau") or {}).items())
    alpha = agreement.get("krippendorff_alpha")
    selfpref = m.get("self_preference") or []
    split = agreement.get("disconnected_prompts")
    split_md = (f"\n\n{split} prompt(s) have a disconnected comparison graph (first: "
                f"{', '.join(f'`{p}`' for p in agreement.get('disconnected_prompt_ids', [])[:5])}); under "
                "`bradley_terry` their candidates that never met are ordered only through the prior's virtual "
                "opponent." if split else "")
    return (f"| judge | kind | judgments | failure rate | position consistency | score mode | parse failures |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n\n"
            "Score mode: `logprobs` is the expectation over the answer tokens' probabilities at the verdict position; "
            "`sampled` the mean of sampled verdicts parsed from JSON (an endpoint that returns no log-probs); parse "
            "failures are the share of sampled verdicts that did not parse.\n\n"
            f"Agreement between score judges: Krippendorff alpha (interval, z-scored) "
            f"{'n/a (fewer than two score judges)' if alpha is None else alpha}.\n{taus}{split_md}\n\n"
            + (f"Self-preference: {', '.join(f'`{j}`' for j in selfpref)} also generated the candidates; "
               "LLM judges tend to prefer their own outputs." if selfpref else "Self-preference: no judge generated the candidates."))


def _mode(info: dict | None) -> str:
    return "n/a" if not info or info.get("score_mode") in (None, "n/a") else f"`{info['score_mode']}`"


def _na(value) -> str:
    return "n/a" if value is None else str(value)


def _dollars(value) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _usage_md(m: dict) -> str:
    """Tokens and dollars of the run's requests to OpenAI-compatible endpoints."""
    usage = m.get("usage") or {}
    stages = usage.get("stages") or {}
    if not stages:
        return "No requests were sent to OpenAI-compatible endpoints (every model ran in process)."
    rows = "\n".join(f"| {s} | `{r['model']}` | {r['endpoint']} | {r['requests']} | {r['input_tokens']} | "
                     f"{r['output_tokens']}{' (estimated)' if r.get('estimated') else ''} | "
                     f"{_dollars(r.get('usd'))} |"
                     for s, rs in stages.items() for r in rs)
    t = usage.get("total") or {}
    budget = usage.get("budget_usd")
    return ("| stage | model | endpoint | requests | input tokens | output tokens | USD |\n"
            "|---|---|---|---|---|---|---|\n"
            f"{rows}\n\nTotal: {t.get('requests')} requests, {t.get('input_tokens')} input and "
            f"{t.get('output_tokens')} output tokens, ${t.get('usd', 0):.6f} at the configured prices"
            + (f" (budget ${budget:g})" if budget else "")
            + (f"; no price set for {', '.join(f'`{x}`' for x in usage['unpriced_models'])}"
               if usage.get("unpriced_models") else "") + ".")


def _learned_md(fit: dict | None) -> str:
    """`judge.aggregate: learned`: the fitted weights and their held-out accuracy against mean_normalised."""
    if not fit:
        return ""
    held = fit["heldout_accuracy"]
    weights = ", ".join(f"`{j}` {w:.3f}" for j, w in fit["weights"].items())
    return (f"\nWeights fitted by logistic regression on {fit['fit_pairs']} verified pairs ({fit['fit_prompts']} "
            f"prompts): {weights}. On {fit['heldout_pairs']} held-out verified pairs ({fit['heldout_prompts']} "
            f"prompts) the share `learned` orders right is {_share(held['learned'])}, `mean_normalised`'s "
            f"{_share(held['mean_normalised'])} (a tie counts half).\n")


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _label_quality_md(m: dict, figs: dict) -> str:
    """How often each judge and the ensemble prefer the verified-correct answer (pipeline/curation/label_quality.py)."""
    q = m.get("label_quality")
    if not q:
        return ("No prompt of this run has a `verify` spec, so label accuracy is not measured (agreement between "
                "judges is not accuracy); add verifiable prompts, e.g. `bundled:prompts/verifiable.jsonl`.")
    rows = "\n".join(f"| `{r['judge']}` | {r['category']} | {r['pairs']} | {r['prompts']} | {r['accuracy']:.3f} | "
                     f"[{r['low']:.3f}, {r['high']:.3f}] |" for r in q["table"])
    plot = f"\n\n![label quality]({figs['label_quality']})" if "label_quality" in figs else ""
    return f"""The verifier checked {q['verified_candidates']} candidates ({q['passed']} passed). On the
{q['verified_pairs']} verified pairs (one candidate passes, the other fails, same prompt; from
{q['prompts_with_pairs']} prompts) a judge is right when it prefers the passing one (a tie counts half); the
ensemble is the aggregated score. Intervals: 95% bootstrap over prompts.

| judge | family | pairs | prompts | accuracy | 95% interval |
|---|---|---|---|---|---|
{rows or '| (no verified pairs) | | 0 | 0 | | |'}{plot}{_constraints_md(q.get("constraints"))}"""


def _constraints_md(rates: list[dict] | None) -> str:
    """Pass rates per instruction-constraint type (judges/constraints.py), over the checked candidates."""
    if not rates:
        return ""
    rows = "".join(f"\n| `{r['constraint']}` | {r['checked']} | {r['strict_rate']:.3f} | {r['loose_rate']:.3f} |"
                   for r in rates)
    return ("\n\nInstruction constraints (IFEval-style, checked by program; loose as IFEval's loose accuracy):\n\n"
            "| constraint | candidates checked | strict pass rate | loose pass rate |\n|---|---|---|---|" + rows)


def _review_md(m: dict) -> str:
    """The human review section (pipeline/review/labels.py): what the labels changed and how the judges agree with them."""
    r = m.get("review")
    if not r:
        return ""
    a, ag = r["applied"], r["agreement"]
    fmt = lambda v: "n/a" if v is None else v  # noqa: E731
    po = ag["published_order"]
    rows = "\n".join(["| judge | labels | accuracy | Cohen's kappa |", "|---|---|---|---|",
                      *(f"| `{j}` | {v['labels']} | {fmt(v['accuracy'])} | {fmt(v['kappa'])} |"
                        for j, v in ag["judges"].items()),
                      f"| published order (the pipeline's label) | {po['labels']} | {fmt(po['accuracy'])} | n/a |"])
    who = ", ".join(f"{name} ({n} labels)" for name, n in ag["reviewers"].items()) or "none"
    alpha = (f"Krippendorff alpha between reviewers (nominal, over verdicts): {fmt(ag['reviewers_alpha'])}, "
             f"{ag['pairs_with_several_reviewers']} pair(s) labelled by more than one reviewer."
             if len(ag["reviewers"]) > 1 else "One reviewer: no agreement between reviewers to report.")
    return f"""
## Human review
{r['labels']} label(s) under `reviews/` (`prefsynth review`), {ag['pairs_labelled']} pair(s) labelled. Applied (the
latest label of a pair wins): {a['accept']} accepted, {a['flip']} flipped (chosen and rejected swapped, pair_strategy
`review_flip:...`, CHES and rationale cleared), {a['reject']} rejected (dropped); see `review.*` in the funnel.
{r['stale_labels']} label(s) name pairs this run does not have and were ignored.

Judges against the human labels (each reviewer's latest accept or flip on a pair is one label; accept means chosen is
better, flip means rejected is better; a judge's tie counts as a disagreement):

{rows}

Reviewers: {who}. {alpha}
"""


def _figures(run_dir: Path, pairs, manifest: dict) -> dict[str, str]:
    """Draw the card's PNGs under RUN/plots; return {name: relative path}."""
    out = run_dir / "plots"
    cols = pairs.select(["chosen_score", "rejected_score", "margin", "chosen_len", "rejected_len"]).to_pydict()
    figs = {"scores": plots.score_histogram(cols["chosen_score"], cols["rejected_score"], out / "scores.png"),
            "margins": plots.histogram(cols["margin"], out / "margins.png", title="Score margins", xlabel="chosen - rejected score"),
            "lengths": plots.histogram([c - r for c, r in zip(cols["chosen_len"], cols["rejected_len"])], out / "length_diff.png",
                                       title="Length bias", xlabel="chosen - rejected length (tokens)")}
    scored = run_dir / "tables" / "ches.scored.parquet"
    if scored.exists():
        ln = [v for v in schemas.read_table(scored, "pairs").column("ln_ches").to_pylist() if v is not None]
        if ln:
            cut = (manifest.get("ches") or {}).get("cut")
            figs["ches"] = plots.histogram(ln, out / "ln_ches.png", title="LN-CHES of all scored pairs", xlabel="LN-CHES",
                                           cut=cut, cut_label=None if cut is None else f"filter cut {cut:.4g}")
    overall = [r for r in (manifest.get("label_quality") or {}).get("table", []) if r["category"] == "all"]
    if overall:
        figs["label_quality"] = plots.accuracy_bars(overall, out / "label_quality.png")
    return {k: str(v.relative_to(run_dir)) for k, v in figs.items()}


def render(run_dir: str | Path, manifest: dict | None = None) -> str:
    """The card text for a finished run (draws its plots as a side effect)."""
    run_dir = Path(run_dir)
    m = manifest or load_manifest(run_dir)
    pairs = load_pairs(run_dir, m)
    figs = _figures(run_dir, pairs, m)
    cfg, models, rows = m["config"]["resolved"], m["models"], m["rows"]
    funnel = "\n".join(f"| {f['stage']} | {f['filter']} | {unit_label(f)} | {f['rows_in']} | {f['rows_out']} | {f['reason']} |"
                       for f in m["funnel"])
    funnel_errors = "".join(f"\n\n**The funnel does not add up** (a prefsynth bug): {e}" for e in m.get("funnel_errors") or [])
    lb = m.get("length_bias") or {}
    cmr = lb.get("chosen_minus_rejected_len") or {}
    ches = m.get("ches") or {}
    judges = models.get("judges") or [models.get("judge")]
    samples = pairs.slice(0, 3).to_pylist()
    sample_md = "\n\n".join(
        f"**Pair {i + 1}** (`{s['prompt_id']}`, chosen {s['chosen_score']:.3f} vs rejected {s['rejected_score']:.3f})\n\n"
        f"Prompt:\n{_fence(s['prompt'][-1]['content'])}\nChosen:\n{_fence(s['chosen'][0]['content'])}\n"
        f"Rejected:\n{_fence(s['rejected'][0]['content'])}\nRationale:\n{_fence(s['rationale'] or '(none)')}"
        for i, s in enumerate(samples))
    ches_md = (f"Policy `{models.get('ches')}`; filter `{ches.get('filter')}`, cut {ches.get('cut')}; LN-CHES range "
               f"[{ches.get('ln_ches_min')}, {ches.get('ln_ches_max')}].\n\n![LN-CHES]({figs['ches']})"
               if "ches" in figs else "CHES was not computed for this run (`curate.ches.enabled: false`).")
    counts, drops, drop_tables = prompt_drops(run_dir, m, 20)
    drops_md = "\n".join(f"- `{d['prompt_id']}`: {d['filter']} (matches `{d['match']}`)" for d in drops) or "- none"
    if sum(counts.values()) > len(drops):
        drops_md += (f"\n- ... {sum(counts.values()) - len(drops)} more, listed in "
                     + ", ".join(f"`{t}`" for t in drop_tables))
    drops_head = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    body = f"""
# {m['name']}

Synthetic preference pairs built by prefsynth {m['code_version']}: {rows['prompts']} prompts, {rows['candidates']}
candidates, {rows['pairs']} pairs in TRL's conversational format (`prompt`, `chosen`, `rejected`), plus scores,
margins, rationales, CHES and reference log-probs per pair.

## Provenance
- config fingerprint `{m['config_fingerprint']}`, created {m['created_at']}
- generator: `{models['generator']}` (n={cfg['generate']['n']}, temperature {cfg['generate']['temperature']}, top_p {cfg['generate']['top_p']}, max_new_tokens {cfg['generate']['max_new_tokens']}, seed {cfg['seed']})
- judges: {', '.join(f'`{j}`' for j in judges)} (model@revision#template; LLM-judge scores are expectations over the score-token probabilities)
- reward models: {', '.join(f'`{r}`' for r in cfg['judge']['reward_models']) or 'none'}
- rationales: `{models.get('rationale') or 'disabled'}` with template `{models.get('rationale_template')}`
- pairs: strategy `{cfg['pair']['strategy']}`, min_margin {cfg['pair']['min_margin']}, tie_epsilon {cfg['pair']['tie_epsilon']}
- stage fingerprints: {', '.join(f'{k} `{v}`' for k, v in m['stage_fingerprints'].items())}
- reproduce: the resolved config is stored beside this card as [config.yaml](config.yaml):
  `prefsynth run --config config.yaml --out OUT`

## Drop funnel
Within a stage each step starts from the rows the previous one left; a unit such as `prompts -> candidate pairs`
marks a step that turns one unit into another. The last step ends at the published pair count.

| stage | filter | unit | rows in | rows out | reason |
|---|---|---|---|---|---|
{funnel}{funnel_errors}

Prompts dropped before generation ({drops_head}):
{drops_md}

## Scores
Chosen: {_stats(pairs.column('chosen_score').to_pylist())}. Rejected: {_stats(pairs.column('rejected_score').to_pylist())}.
Margin: {_stats(pairs.column('margin').to_pylist())}.

![scores]({figs['scores']})
![margins]({figs['margins']})

## Length bias
Score-length correlation over all scored candidates: Pearson {lb.get('score_length_pearson')}, Spearman {lb.get('score_length_spearman')}.
Chosen minus rejected length (tokens): mean {cmr.get('mean')}, median {cmr.get('median')}, p10 {cmr.get('p10')}, p90 {cmr.get('p90')};
chosen is longer in {lb.get('chosen_longer_fraction')} of pairs.

![length difference]({figs['lengths']})

## Judges
Scores combine by `{m.get('judge_aggregate')}`; overall judge failure rate (ok=false) {m.get('judge_failure_rate')}.
{_learned_md(m.get('judge_aggregate_fit'))}
{_judges_md(m)}

## Label quality
{_label_quality_md(m, figs)}

## Requests and cost
{_usage_md(m)}

## Prompt set
{_prompt_set_md(m)}

## Pair sources and diversity
{_sources_md(m)}{turns_md(pairs)}
{_review_md(m)}
## CHES (likelihood displacement)
{ches_md}

## Sample pairs
{sample_md}

## How to train on this
With prefsynth's trainer (streams the shards; reuses `ref_chosen_logp` / `ref_rejected_logp` when they were
computed with the same model and dtype):
```bash
prefsynth train --data . --model {models['generator'].split('@')[0]} --out dpo
```
With TRL:
```python
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer
train = load_dataset("parquet", data_files="pairs/*.parquet", split="train")
trainer = DPOTrainer(model="{models['generator'].split('@')[0]}", args=DPOConfig(output_dir="dpo"), train_dataset=train)
trainer.train()
```
Columns beyond prompt/chosen/rejected are ignored by TRL; `ref_chosen_logp` / `ref_rejected_logp` are the
policy's summed response log-probs (token rule in prefsynth's `pipeline/core/encoding.py`).

## Files
```json
{json.dumps({'pairs': m['shards'], 'ranked': m.get('ranked_shards', [])}, indent=2)}
```
"""
    return DatasetCard(f"---\n{card_data(m).to_yaml()}\n---\n{body}").content


def write(run_dir: str | Path, manifest: dict | None = None) -> Path:
    path = Path(run_dir) / "README.md"
    write_text(path, render(run_dir, manifest))
    return path
