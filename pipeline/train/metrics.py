"""Training metrics: a JSONL log (plus TensorBoard) and the over-optimisation watch.

Over-optimisation indicators follow "Understanding Likelihood Over-optimisation in Direct
Alignment Algorithms" (Shi et al. 2024): on the eval split, at every response position, the
top-k (k=10) probability mass (the share of probability on the k likeliest next tokens) and the
top-k entropy (entropy of those k probabilities renormalised). The paper observes that output
diversity collapses when the model over-optimises: mass keeps falling, or entropy turns down after
a rise. `OverOptimisationWatch` warns on either pattern, and the trainer may stop early on it.
"""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per record to `metrics.jsonl`; mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, *, tensorboard: bool, resume_step: int = 0):
        self.path = out_dir / "metrics.jsonl"
        if self.path.exists():  # a resumed run drops records past its checkpoint: no step is logged twice
            kept = [line for line in self.path.read_text().splitlines()
                    if resume_step and line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: `pip install tensorboard` (the `train` extra)
                self.note = "tensorboard is not installed; metrics go to metrics.jsonl only"
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class OverOptimisationWatch:
    """Feeds on eval (top-k entropy, top-k mass) values; `update` returns a warning or None.

    - entropy turned down after rising: entropy once rose more than `tol` above its first value and
      has now fallen on `patience` consecutive evaluations;
    - mass keeps falling: mass fell on `patience` consecutive evaluations and by more than `tol`
      in total over them.
    """

    def __init__(self, *, patience: int = 2, tol: float = 1e-3):
        self.patience, self.tol = patience, tol
        self.entropy: list[float] = []
        self.mass: list[float] = []

    def state(self) -> dict:
        return {"entropy": self.entropy, "mass": self.mass}

    def load(self, state: dict) -> None:
        self.entropy, self.mass = list(state["entropy"]), list(state["mass"])

    def _falling(self, values: list[float]) -> bool:
        tail = values[-(self.patience + 1):]
        return len(tail) == self.patience + 1 and all(b < a for a, b in zip(tail, tail[1:]))

    def update(self, entropy: float, mass: float) -> str | None:
        self.entropy.append(entropy)
        self.mass.append(mass)
        rose = max(self.entropy[:-self.patience] or [self.entropy[0]]) > self.entropy[0] + self.tol
        if rose and self._falling(self.entropy):
            return (f"top-k entropy turned down after rising ({self.entropy[0]:.4f} -> peak "
                    f"{max(self.entropy):.4f} -> {entropy:.4f}): likely over-optimisation")
        if self._falling(self.mass) and self.mass[-self.patience - 1] - mass > self.tol:
            return (f"top-k mass fell on {self.patience} evaluations in a row ({self.mass[-self.patience - 1]:.4f} -> "
                    f"{mass:.4f}): likely over-optimisation")
        return None
