"""Trainer state on disk: checkpoints, exact resume, the final model folder and its provenance.

Layout of a training `--out` folder:
    train_run.json            the run's key (config fields that change weights + data fingerprint)
    checkpoints/step-000050/  trainable.safetensors, optimizer.pt (optimiser, scheduler, RNG), state.json
    metrics.jsonl, tensorboard/
    model/                    the final model (safetensors; LoRA merged), loadable by transformers and vLLM, and
                              its card README.md (pipeline/train/card.py)
    provenance.json           data manifest fingerprint, shards, losses, steps, final eval metrics,
                              over-optimisation alarms and the watch's settings
Every directory and file is written under a temporary name and renamed when complete, so a kill
never leaves a checkpoint or model folder that looks whole but is not.
Several ranks (pipeline/train/parallel.py): under DDP the trainable weights and AdamW state are the same on every
rank, so rank 0 writes them as above (the one-process layout; a DDP checkpoint resumes at any world size) and
optimizer.pt also holds every rank's RNG state. Under FSDP each rank holds a shard: weights and optimiser state go
through torch.distributed.checkpoint (DCP) into `dcp/` of the same temporary folder, every rank writing its part
(several nodes need a shared filesystem for --out), then rank 0 adds the rest and renames. The final model is
gathered whole on rank 0 (`full_state`) and saved as one ordinary safetensors folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.store import write_json
from pipeline.errors import InputError
from pipeline.train import card


def _ckpt_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def check_out_dir(out_dir: Path, run_key: str) -> dict | None:
    """The provenance of a finished identical run, None for a new or resumable one; raise on a
    folder that holds a different training run."""
    marker = out_dir / "train_run.json"
    if not marker.exists():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise InputError(f"--out {out_dir} is not empty and holds no prefsynth training run; "
                             "fix: choose a new or empty --out folder")
        return None
    key = json.loads(marker.read_text())["run_key"]
    if key != run_key:
        raise InputError(f"--out {out_dir} holds a training run with another config or data (run key {key}, "
                         f"this one {run_key}); fix: choose a new --out folder, or delete it to start over")
    prov = out_dir / "provenance.json"
    return json.loads(prov.read_text()) if prov.exists() and (out_dir / "model").is_dir() else None


def begin(out_dir: Path, run_key: str, cfg, label: str, source) -> None:
    write_json(
        out_dir / "train_run.json",
        {"run_key": run_key, "model": label, "data": [str(s) for s in source.shards], "config": cfg.model_dump()},
    )


def _trainable(model) -> dict[str, torch.Tensor]:
    # named_parameters() lists tied weights once, which safetensors requires
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _rng() -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _dcp_state(model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, opt)
    return {"model": weights, "optim": optim}


def save(out_dir: Path, model, opt, sched, watch, *, step: int, epoch: int, consumed: int, keep: int,
         dist=None) -> Path:
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp")
    main, fsdp = dist is None or dist.main, dist is not None and dist.mode == "fsdp"
    rngs = dist.gather(_rng()) if dist is not None and dist.on else None
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if fsdp:
        import torch.distributed.checkpoint as dcp

        dist.barrier()  # the folder exists before any rank writes into it
        dcp.save(_dcp_state(model, opt), checkpoint_id=str(tmp / "dcp"))
    if not main:
        return final
    blob = {"scheduler": sched.state_dict(), "rng": _rng()}
    if rngs is not None:
        blob["rng_ranks"] = rngs
    if not fsdp:
        save_file(_trainable(model), str(tmp / "trainable.safetensors"))
        blob["optimizer"] = opt.state_dict()
    torch.save(blob, tmp / "optimizer.pt")
    write_json(tmp / "state.json", {"step": step, "epoch": epoch, "consumed": consumed,
                                     "watch": None if watch is None else watch.state()})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _ckpt_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(out_dir: Path, run_key: str, model, opt, sched, watch, dist=None) -> dict:
    dirs = _ckpt_dirs(out_dir)
    if dist is not None:  # every rank resumes from the checkpoint rank 0 sees
        dirs = [Path(p) for p in dist.first([str(d) for d in dirs])]
    if not dirs:
        return {"step": 0, "epoch": 0, "consumed": 0}
    last = dirs[-1]
    blob = torch.load(last / "optimizer.pt", weights_only=False)
    if (last / "dcp").is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if dist is None or dist.mode != "fsdp":
            raise InputError(f"--out {out_dir}: checkpoint {last.name} was written by FSDP (train.parallel: fsdp); "
                             "fix: resume it under torchrun with train.parallel fsdp")
        state = _dcp_state(model, opt)
        dcp.load(state, checkpoint_id=str(last / "dcp"))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        weights = load_file(str(last / "trainable.safetensors"), device=str(model.device))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    rngs = blob.get("rng_ranks")
    rng = rngs[dist.rank] if rngs and dist is not None and len(rngs) == dist.world else blob["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((last / "state.json").read_text())
    if watch is not None:  # the DPO trainer's over-optimisation watch; the reward-model trainer has none
        watch.load(state["watch"])
    return state


def full_state(model, dist) -> dict | None:
    """FSDP: the whole model state dict on rank 0's CPU (a collective: every rank calls it); else None."""
    if dist is None or dist.mode != "fsdp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def finish(
    out_dir: Path,
    run_key: str,
    model,
    tokenizer,
    *,
    cfg,
    label: str,
    source,
    steps: int,
    total_steps: int,
    final: dict,
    warnings: list,
    watch: dict,
    seconds: float,
    log=print,
) -> dict:
    target = out_dir / "model"
    prov = {
        "run_key": run_key,
        "model": {"base": label, "path": str(target)},
        "data": data_record(source),
        "losses": cfg.losses,
        "beta": cfg.beta,
        "steps": steps,
        "planned_steps": total_steps,
        "stopped_early": steps < total_steps,
        "final_eval": final,
        "warnings": warnings,  # over-optimisation alarms: what fired, values, peak, window, noise (metrics.py)
        "overopt_watch": watch,  # the watch's rule and settings, eval pairs, and whether it could run
        "config": cfg.model_dump(),
        "seconds": round(seconds, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # the model's README.md: what was trained, held-out metrics, the watch and its alarms
    write_model(out_dir, model, tokenizer, prov, card.write)
    log(f"train: {steps} steps done; model in {target}, provenance in {out_dir / 'provenance.json'}")
    return prov


def data_record(source) -> dict:
    """What a model's provenance says about its data: shards, their fingerprint, the run's config fingerprint."""
    manifest = source.manifest or {}
    return {
        "shards": [str(s) for s in source.shards],
        "fingerprint": source.fingerprint,
        "manifest_config_fingerprint": manifest.get("config_fingerprint"),
        "run_name": manifest.get("name"),
    }


def write_model(out_dir: Path, model, tokenizer, prov: dict, write_card) -> Path:
    """OUT/model (LoRA merged) with its card `write_card(folder, prov)`, written under a temporary name and
    renamed, then OUT/provenance.json."""
    target, tmp = out_dir / "model", out_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    to_save = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    to_save.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_card(tmp, prov)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    write_json(out_dir / "provenance.json", prov)
    return target
