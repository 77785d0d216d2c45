"""Several processes, one training run: torch.distributed setup, DDP or FSDP2 wrapping, rank shares, reductions.

Under `torchrun` (WORLD_SIZE, RANK, LOCAL_RANK in the environment) `setup()` joins the process group (nccl on
GPU, gloo on CPU) and `wrap()` puts the policy behind DistributedDataParallel (`train.parallel: ddp`, Li et al.
2020, "PyTorch Distributed") or FSDP2's `fully_shard` per decoder layer and at the root (`fsdp`: parameters,
gradients and AdamW state sharded, ZeRO-3 style, Rajbhandari et al. 2020; bf16 MixedPrecisionPolicy on GPU only).
Why the update is the single-process one: every rank reads the same seeded pair order and builds the same global
batch of `batch_size` pairs; rank r takes the r-th contiguous share (`share()`), each micro loss is divided by the
*global* pair count and multiplied by the world size, and DDP/FSDP average the gradients across ranks, so the
summed gradient equals the one process's accumulated gradient (the scale is exact in floating point when the
world size is a power of two; tests/pipeline/train/test_parallel.py checks losses and weights to 1e-5).
Forwards outside the training step (reference pre-pass, eval) are spread in rounds (`rounds()`): every rank runs
one chunk per round; under FSDP a rank without a chunk left repeats one and drops its result, so the collectives
inside FSDP's forward match. Checkpoints: pipeline/train/checkpoint.py (rank 0 under DDP, DCP under FSDP).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    mode: str  # "none", "ddp" or "fsdp"
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.mode != "none"

    def share(self, batch: list) -> list:
        """This rank's contiguous share of a global batch (setup() checked that it divides)."""
        n = len(batch) // self.world
        return batch[self.rank * n : (self.rank + 1) * n]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (the object itself when alone)."""
        if not self.on:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()

    def first(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def rounds(self, n: int) -> list[tuple[int, bool]]:
        """(chunk index, keep) for this rank: chunk i goes to rank i % world; a rank short of a chunk in the
        last round runs chunk 0 again and drops it (keep=False), so every rank runs the same number of forwards."""
        if not self.on:
            return [(i, True) for i in range(n)]
        per = -(-n // self.world)
        return [(i, True) if i < n else (0, False) for i in (r * self.world + self.rank for r in range(per))]


_TORCHRUN_FIX = "fix: launch with `torchrun --nproc-per-node N -m flows.cli train ...`, or unset it for one process"


def _env_int(name: str, *, low: int = 0) -> int | None:
    """torchrun's integer variable `name` (None when unset); a ConfigError naming it for any other value."""
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        n = int(v)
    except ValueError:
        n = None
    if n is None or n < low:
        raise ConfigError(f"environment variable {name}={v[:40]!r} is not an integer >= {low} (torchrun sets it); "
                          f"{_TORCHRUN_FIX}")
    return n


def torchrun_rank() -> int:
    """This process's torchrun RANK (0 without torchrun)."""
    return _env_int("RANK") or 0


def check_torchrun_env() -> int | None:
    """WORLD_SIZE, RANK and LOCAL_RANK as torchrun sets them (integers, RANK < WORLD_SIZE, LOCAL_RANK <
    LOCAL_WORLD_SIZE when given), checked before a process group is joined; returns WORLD_SIZE (None without
    torchrun)."""
    world, r, local = _env_int("WORLD_SIZE", low=1), _env_int("RANK"), _env_int("LOCAL_RANK")
    local_world = _env_int("LOCAL_WORLD_SIZE", low=1)
    if r is not None and r >= (world or 1):
        raise ConfigError(f"environment variable RANK={r} is not below WORLD_SIZE={world or 'unset'}; {_TORCHRUN_FIX}")
    if local is not None and local_world is not None and local >= local_world:
        raise ConfigError(f"environment variable LOCAL_RANK={local} is not below LOCAL_WORLD_SIZE={local_world}; "
                          f"{_TORCHRUN_FIX}")
    return world


def plan(cfg) -> tuple[str, int | None]:
    """(mode, world size) from `train.parallel` and torchrun's environment; raises ConfigError on a bad pairing
    or a torchrun variable that is not what torchrun sets (the CLI calls it before the flow starts, so the error
    comes in a second)."""
    world = check_torchrun_env()
    mode = cfg.parallel
    if mode == "auto":
        mode = "ddp" if (world or 1) > 1 else "none"
    if mode == "none":
        if (world or 1) > 1:
            raise ConfigError(
                f"train.parallel 'none' under torchrun with WORLD_SIZE {world}: every process would train alone; "
                "fix: set train.parallel to ddp, fsdp or auto"
            )
        return mode, world
    if world is None:
        raise ConfigError(
            f"train.parallel {mode!r} needs processes started by torchrun (WORLD_SIZE is not set); fix: launch "
            "`torchrun --nproc-per-node N -m flows.cli train ...`, or set train.parallel to none"
        )
    step_pairs = world * cfg.micro_batch_size
    if cfg.batch_size % step_pairs:
        raise ConfigError(
            f"train.batch_size {cfg.batch_size} is not a multiple of world size {world} x micro_batch_size "
            f"{cfg.micro_batch_size} = {step_pairs}; fix: set batch_size to a multiple of {step_pairs} "
            "or lower micro_batch_size"
        )
    for var in ("MASTER_ADDR", "MASTER_PORT"):  # the rendezvous of torch.distributed's env:// (torchrun sets both)
        if not os.environ.get(var) or (var == "MASTER_PORT" and not (_env_int(var) or 0) <= 65535):
            raise ConfigError(f"train.parallel {mode!r} with WORLD_SIZE {world} needs {var} (now "
                              f"{os.environ.get(var)!r:.40}) to join the process group; fix: launch with "
                              "`torchrun --nproc-per-node N -m flows.cli train ...`, or set train.parallel to none")
    return mode, world


def setup(cfg) -> Dist:
    """The run's Dist from `train.parallel` and torchrun's environment; joins the process group when distributed."""
    mode, world = plan(cfg)
    if mode == "none":
        return Dist("none", device="cuda" if torch.cuda.is_available() else "cpu")
    rank, local = torchrun_rank(), _env_int("LOCAL_RANK") or 0
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        # an hour: rank 0 alone saves the final model (an 8B one takes minutes) while the others wait
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=1))
    if rank:
        os.environ["PREFSYNTH_PROGRESS"] = "0"  # one progress bar: rank 0's
    return Dist(mode, rank, world, f"cuda:{local}" if cuda else "cpu")


def teardown(dist: Dist, *, ok: bool) -> None:
    """Leave the process group; after an error without the barrier (the other ranks may never reach it)."""
    if dist.on and torch.distributed.is_initialized():
        if ok:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


class PairForward(torch.nn.Module):
    """The trainer's forward (pipeline/train/logps.py) as one module call, so DDP's and FSDP's hooks run around it
    (forward_logps calls the decoder and the LM head apart, which a wrapper around the causal LM would miss)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, logit_chunk: int = 1024, top_k: int = 0):
        from pipeline.train.logps import forward_logps

        return forward_logps(self.model, batch, logit_chunk=logit_chunk, top_k=top_k)


def wrap(model, dist: Dist, *, bf16: bool = False):
    """The module every forward goes through: the policy behind DDP or fully_shard, or None when alone."""
    if not dist.on:
        return None
    fwd = PairForward(model)
    if dist.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(fwd, device_ids=[torch.cuda.current_device()] if dist.device != "cpu" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from pipeline.train.logps import parts

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mp_policy": mp} if mp is not None else {}
    for layer in parts(model)[0].layers:
        fully_shard(layer, **kw)
    fully_shard(fwd, **kw)
    return fwd


def reshard(fwd) -> None:
    """FSDP keeps the root's parameters gathered after a forward, until a backward reshards them; after forwards
    without one (reference pre-pass, eval) reshard them here, or the next optimiser, clip or checkpoint would see
    the gathered copies instead of the sharded parameters."""
    if fwd is not None and hasattr(fwd, "reshard"):
        fwd.reshard()


def no_sync(wrapped, dist: Dist, last: bool):
    """Skip the gradient all-reduce on all but the last micro batch of a step."""
    if dist.mode == "ddp" and not last:
        return wrapped.no_sync()
    if dist.mode == "fsdp":
        wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def full_norm(norm) -> float:
    """A gradient norm as a float (FSDP's is a DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def reduce_step(dist: Dist, sums: dict, vals: dict, tokens: int):
    """A step's loss sums, per-pair metrics and token count over every rank, added in rank order (rank r holds
    the r-th share of the batch, so the order is the one-process order)."""
    parts = dist.gather((sums, {k: torch.cat(v) for k, v in vals.items()}, tokens))
    total: dict[str, float] = {}
    merged: dict[str, list] = {}
    for s, v, _ in parts:
        for k, x in s.items():
            total[k] = total.get(k, 0.0) + x
        for k, x in v.items():
            merged.setdefault(k, []).append(x)
    return total, merged, sum(p[2] for p in parts)
