"""What the DPO trainer (trainer.py) and the reward-model trainer (rm_trainer.py) share around their steps.

- `precision`: weights dtype and autocast for a config's `dtype` and the device;
- `optimizer`: AdamW with a linear warmup, then a constant learning rate; `start`: it over the trainable weights, with
  the latest checkpoint loaded (a resume);
- `Batches`: global batches from the seeded shuffled stream, across epochs. Its position (epoch, pairs consumed
  in it) is what a checkpoint stores; the order is a pure function of (seed, epoch) (pipeline/train/data.py), so a
  resumed run skips exactly the pairs it already trained on.
Checkpoints, resume and the model folder are pipeline/train/checkpoint.py; the metrics log is metrics.py.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


def precision(cfg, device: str) -> tuple[torch.dtype, object, str]:
    """(weights dtype, autocast context factory, compute dtype name) for a config and device."""
    if cfg.dtype == "bfloat16":
        return torch.bfloat16, contextlib.nullcontext, "bfloat16"
    if cfg.dtype == "auto" and device.startswith("cuda"):  # float32 master weights, bf16 matmuls
        return torch.float32, lambda: torch.autocast("cuda", dtype=torch.bfloat16), "bfloat16"
    return torch.float32, contextlib.nullcontext, "float32"


def start(model, cfg, device: str, out_dir, run_key: str, watch=None, dist=None) -> tuple[list, object, object, dict]:
    """(trainable parameters, optimiser, scheduler, resume state): the optimiser over the model's trainable weights,
    then the latest checkpoint under `out_dir` of run `run_key` loaded into all of them (a fresh run: step 0)."""
    from pipeline.train import checkpoint as ckpt

    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = optimizer(params, cfg, device)
    return params, opt, sched, ckpt.load_latest(out_dir, run_key, model, opt, sched, watch, dist=dist)


def optimizer(params: list, cfg, device: str):
    """(AdamW, its scheduler): `cfg.learning_rate` after `cfg.warmup_steps` of linear warmup."""
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=cuda)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))
    return opt, sched


class Batches:
    """Batches of `size` examples from `stream(epoch)`, starting `consumed` examples into `epoch`; an exhausted
    epoch rolls over to the next one inside a batch."""

    def __init__(self, stream: Callable[[int], Iterator], *, size: int, epoch: int = 0, consumed: int = 0):
        self.stream, self.size, self.epoch, self.consumed = stream, size, epoch, consumed
        self._it = stream(epoch)
        for _ in range(consumed):
            next(self._it)

    def take(self) -> list:
        batch = []
        while len(batch) < self.size:
            try:
                batch.append(next(self._it))
                self.consumed += 1
            except StopIteration:
                self.epoch, self.consumed = self.epoch + 1, 0
                self._it = self.stream(self.epoch)
        return batch
