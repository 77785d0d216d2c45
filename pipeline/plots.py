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
