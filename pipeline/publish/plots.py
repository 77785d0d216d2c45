"""The card's figures: PNGs drawn with matplotlib's Agg backend (no display needed).

Each function takes plain columns and a path, so it can be tested without a run. The card links
them by relative path (plots/NAME.png), which works both in the run folder and on the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _bins(values: list[float], n: int = 20) -> int:
    return max(1, min(n, len(set(values))))


def score_histogram(chosen: list[float], rejected: list[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    both = chosen + rejected
    ax.hist(
        [chosen, rejected], bins=_bins(both), label=["chosen", "rejected"], color=["tab:green", "tab:red"], alpha=0.8
    )
    ax.set(xlabel="judge score", ylabel="pairs", title="Chosen and rejected scores")
    ax.legend()
    return _save(fig, path)


def histogram(
    values: list[float], path: Path, *, title: str, xlabel: str, cut: float | None = None, cut_label: str | None = None
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=_bins(values), color="tab:blue", alpha=0.85)
    if cut is not None:
        ax.axvline(cut, color="tab:red", linestyle="--", label=cut_label)
        ax.legend()
    ax.set(xlabel=xlabel, ylabel="pairs", title=title)
    return _save(fig, path)


def accuracy_bars(rows: list[dict], path: Path) -> Path:
    """Label quality: each judge's accuracy against the verifier, with its 95% bootstrap interval."""
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.45 * len(rows)))
    names = [r["judge"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["low"] for a, r in zip(acc, rows)], [r["high"] - a for a, r in zip(acc, rows)]]
    ax.barh(range(len(rows)), acc, xerr=err, color="tab:blue", alpha=0.85, capsize=3)
    ax.axvline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_yticks(range(len(rows)), [n if len(n) <= 40 else n[:37] + "..." for n in names])
    ax.set(xlim=(0, 1), xlabel="accuracy on verified pairs, 95% interval", title="Label quality")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    return _save(fig, path)


def rounds_plot(rows: list[dict], path: Path) -> Path:
    """`prefsynth iterate`: per round, the trained policy's win rate against the base (95% interval) and against the
    previous policy, its mean answer tokens, verifier accuracy and top-k indicators (pipeline/loop/iterate.py)."""
    x = [r["round"] + 1 for r in rows]  # round r trains policy r+1
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
    win = [r["win_rate_vs_base"] for r in rows]
    err = [[0 if w is None else w - r["win_low_vs_base"] for w, r in zip(win, rows)],
           [0 if w is None else r["win_high_vs_base"] - w for w, r in zip(win, rows)]]
    axes[0].errorbar(x, [w if w is not None else float("nan") for w in win], yerr=err, marker="o", capsize=3,
                     label="vs base")
    axes[0].plot(x, [r["win_rate_vs_previous"] for r in rows], marker="s", linestyle="--", label="vs previous")
    axes[0].axhline(0.5, color="grey", linestyle=":")
    axes[0].set(ylim=(0, 1), title="win rate (95% interval)", xlabel="policy")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [r["mean_tokens"] for r in rows], marker="o", label="policy")
    axes[1].plot(x, [r["base_mean_tokens"] for r in rows], color="grey", linestyle=":", label="base")
    axes[1].set(title="mean answer tokens", xlabel="policy")
    axes[1].legend(fontsize=8)
    acc = [r["verifier_accuracy"] for r in rows]
    axes[2].plot(x, [a if a is not None else float("nan") for a in acc], marker="o", label="policy")
    axes[2].plot(x, [r["base_verifier_accuracy"] if r["base_verifier_accuracy"] is not None else float("nan")
                     for r in rows], color="grey", linestyle=":", label="base")
    axes[2].set(ylim=(0, 1), title="verifier accuracy", xlabel="policy")
    axes[2].legend(fontsize=8)
    for name in ("topk_entropy", "topk_mass"):
        axes[3].plot(x, [r[name] if r[name] is not None else float("nan") for r in rows], marker="o", label=name)
    axes[3].set(title="top-k indicators (own answers)", xlabel="policy")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x)
    return _save(fig, path)
