"""`prefsynth inspect RUN_DIR`: read a finished run in the terminal (rich).

Shows the summary, the drop funnel, the first prompts the prompt filter dropped (with what they
matched; all of them are in tables/prompt_filter.drops.parquet) and score statistics, then pairs side by side (chosen |
rejected) with prompt and rationale. `--where` is a SQL-like condition over the flat pair columns
(pipeline/review/where.py: parsed, never run as SQL), e.g. "margin < 0.5 AND chosen_len > rejected_len";
`--sample N` picks N matching pairs at random (seeded). Shards are verified first (pipeline/core/rundir.py).
"""

from __future__ import annotations

import polars as pl
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from pipeline.core.funnel import unit_label
from pipeline.core.rundir import load_manifest, load_pairs, prompt_drops
from pipeline.errors import InputError
from pipeline.review.where import EXAMPLE, compile_where, shown

FLAT_COLUMNS = (
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "margin",
    "rationale",
    "pair_strategy",
    "ches",
    "ln_ches",
    "ref_chosen_logp",
    "ref_rejected_logp",
    "chosen_len",
    "rejected_len",
)


def flat_pairs(pairs) -> pl.DataFrame:
    """Pairs with prompt/chosen/rejected as plain text (last user turn, assistant reply)."""
    df = pl.from_arrow(pairs)
    return df.with_columns(
        pl.col("prompt").list.last().struct.field("content").alias("prompt"),
        pl.col("chosen").list.first().struct.field("content").alias("chosen"),
        pl.col("rejected").list.first().struct.field("content").alias("rejected"),
    ).select(FLAT_COLUMNS)


def select(df: pl.DataFrame, where: str | None, sample: int | None, seed: int = 0) -> pl.DataFrame:
    """The rows matching `where` (pipeline/review/where.py: parsed to a polars expression over `df`'s own columns),
    then `sample` of them at random."""
    if where:
        expr = compile_where(where, df.schema)
        try:
            df = df.filter(expr)
        except (Exception, pl.exceptions.PanicException) as exc:  # a type the parser let through, polars' to judge
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"--where {shown(where)} is not a valid filter ({reason}); fix: use a condition over "
                             f"{', '.join(df.columns)}, e.g. {EXAMPLE}") from None
    if sample is not None and df.height > sample:
        df = df.sample(n=sample, seed=seed)
    return df


def _summary(m: dict) -> Panel:
    rows, models = m["rows"], m["models"]
    text = (
        f"[bold]{m['name']}[/] config {m['config_fingerprint']}  prefsynth {m['code_version']}\n"
        f"{rows['prompts']} prompts -> {rows['candidates']} candidates -> {rows['judgments']} judgments -> "
        f"[bold]{rows['pairs']} pairs[/]\n"
        f"generator {models['generator']}\njudge {models['judge']}"
    )
    return Panel(text, title="run")


def _funnel(m: dict) -> Table:
    t = Table(title="drop funnel")
    for col in ("stage.filter", "unit", "in", "out", "removed", "reason"):
        t.add_column(col, justify="right" if col in ("in", "out", "removed") else "left")
    for f in m["funnel"]:
        removed = "" if f.get("unit_in") else str(f["rows_in"] - f["rows_out"])  # no difference across units
        t.add_row(
            f"{f['stage']}.{f['filter']}", unit_label(f), str(f["rows_in"]), str(f["rows_out"]), removed, f["reason"]
        )
    for problem in m.get("funnel_errors") or []:
        t.add_row("[red]ERROR[/]", "", "", "", "", f"funnel does not add up: {problem}")
    return t


def _prompt_drops(run_dir, m: dict, limit: int = 10) -> Table:
    counts, rows, tables = prompt_drops(run_dir, m, limit)
    total = sum(counts.values())
    t = Table(
        title=f"prompt drops: {', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}",
        caption=f"first {len(rows)} of {total}; all in {', '.join(tables)}" if total > len(rows) else None,
    )
    for col in ("prompt_id", "filter", "match", "score"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["prompt_id"], r["filter"], r["match"], "" if r.get("score") is None else f"{r['score']:.3f}")
    return t


def _label_quality(m: dict) -> Table | str:
    q = m.get("label_quality")
    if not q:
        return "label quality: not measured (no prompt has a `verify` spec)"
    t = Table(title=f"label quality: accuracy on {q['verified_pairs']} verified pairs (tie = half; 95% bootstrap)")
    for col in ("judge", "family", "pairs", "prompts", "accuracy", "95% interval"):
        t.add_column(col, justify="right" if col in ("pairs", "prompts", "accuracy") else "left")
    for r in q["table"]:
        t.add_row(r["judge"], r["category"], str(r["pairs"]), str(r["prompts"]), f"{r['accuracy']:.3f}",
                  f"[{r['low']:.3f}, {r['high']:.3f}]")
    return t


def _scores(df: pl.DataFrame) -> Table:
    t = Table(title="scores over published pairs")
    for col in ("column", "mean", "min", "median", "max"):
        t.add_column(col, justify="left" if col == "column" else "right")
    for col in ("chosen_score", "rejected_score", "margin", "ln_ches", "chosen_len", "rejected_len"):
        s = df[col].drop_nulls()
        if s.len():
            t.add_row(col, *(f"{v:.3f}" for v in (s.mean(), s.min(), s.median(), s.max())))
    return t


def _pair(row: dict) -> Table:
    ln = "n/a" if row["ln_ches"] is None else f"{row['ln_ches']:.4g}"
    t = Table(title=f"{row['prompt_id']}  margin {row['margin']:.3f}  ln_ches {ln}", show_lines=True, expand=True)
    t.add_column(f"chosen ({row['chosen_score']:.3f}, {row['chosen_len']} tok)", ratio=1)
    t.add_column(f"rejected ({row['rejected_score']:.3f}, {row['rejected_len']} tok)", ratio=1)
    t.add_row(row["chosen"], row["rejected"])
    t.caption = f"prompt: {row['prompt']}\nrationale: {row['rationale']}"
    return t


def inspect_run(
    run_dir, *, sample: int | None = 3, where: str | None = None, seed: int = 0, console: Console | None = None
) -> int:
    """Print the run; return the number of pairs shown."""
    console = console or Console()
    m = load_manifest(run_dir)
    df = flat_pairs(load_pairs(run_dir, m))
    chosen = select(df, where, sample, seed)  # a bad --where fails before anything is printed
    console.print(_summary(m))
    console.print(_funnel(m))
    console.print(_prompt_drops(run_dir, m))
    console.print(_label_quality(m))
    console.print(_scores(df))
    console.print(f"{chosen.height} pair(s) shown" + (f" matching {where!r}" if where else "") + f" of {df.height}")
    for row in chosen.iter_rows(named=True):
        console.print(_pair(row))
    return chosen.height
