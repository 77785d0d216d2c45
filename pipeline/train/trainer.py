"""The DPO trainer: train the policy directly from prefsynth's pairs shards.

`train(cfg, data, out_dir)` runs, or resumes, one training run under `out_dir`:
  1. open the shards (pipeline/train/data.py), hold out eval prompts, stream the rest;
  2. reference log-probs from the shards or one cached pre-pass (pipeline/train/ref.py) with the policy at step 0
     or train.reference;
  3. steps of `batch_size` pairs, as `batch_size / micro_batch_size` accumulated forwards of
     chosen + rejected (+ rationales) together (pipeline/train/logps.py), losses from
     pipeline/train/losses.py; AdamW, linear warmup then constant learning rate;
  4. metrics every step; every `eval_every` steps the eval means with their bootstrap noise and the
     noise-aware over-optimisation watch (pipeline/train/metrics.py); checkpoints every `save_every` steps;
  5. the final model folder (safetensors, LoRA merged) and provenance.json beside it.
Resume is exact: a checkpoint holds the trainable weights, optimiser and scheduler state, RNG
state and the data position; the data order is a pure function of (seed, epoch), so the resumed
run sees the pairs the uninterrupted one would have.
Under torchrun (`train.parallel`, pipeline/train/parallel.py) every rank runs this loop on the same global
batches, trains on its share, and reduces the step's metrics; rank 0 alone logs and writes. The step and the
eval are in pipeline/train/step.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from pipeline.config import fingerprint
from pipeline.core.progress import bar
from pipeline.errors import InputError
from pipeline.train import checkpoint as ckpt
from pipeline.train import parallel
from pipeline.train.config import TrainConfig
from pipeline.train.data import check_degenerate, eval_prompts, examples, open_source, shuffled
from pipeline.train.loop import Batches, optimizer, precision
from pipeline.train.metrics import MetricsLog, OverOptimisationWatch
from pipeline.train.ref import cache_path, reference_logps, shard_refs_usable
from pipeline.train.step import accumulate, boot_seed, evaluate, mean, noise

_noise = noise  # its old home (tests/pipeline/train/test_metrics.py imports it from here)

__all__ = ["accumulate", "load_policy", "precision", "train"]

VERSION = "1"


def _causal_lm(path: str, cfg: TrainConfig, device: str, weights_dtype: torch.dtype):
    """A causal LM on `device` with the attention the trainer's batches need: flash-attention's varlen kernels
    for packed rows on CUDA when installed, else SDPA. The policy and a separate reference load alike, so the
    pre-pass runs the forward training runs."""
    from transformers import AutoModelForCausalLM

    attn = "sdpa"
    if device.startswith("cuda") and cfg.packing:
        try:
            import flash_attn  # noqa: F401  (varlen kernels for packed rows)
            attn = "flash_attention_2"
        except ImportError:
            pass
    return AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype, attn_implementation=attn).to(device)


def load_policy(cfg: TrainConfig, device: str, weights_dtype: torch.dtype):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pipeline.backends.model_ref import resolve

    hf_logging.disable_progress_bar()
    resolved = resolve(cfg.model, field="train.model")
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if not tokenizer.chat_template:
        raise InputError(f"train.model {cfg.model!r} has no chat template; fix: train an instruct/chat model")
    model = _causal_lm(resolved.path, cfg, device, weights_dtype)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    return model, tokenizer, resolved.label


def load_reference(cfg: TrainConfig, tokenizer, device: str, weights_dtype: torch.dtype):
    """(model in eval mode, label) of train.reference; it reads the policy's token ids, so its tokenizer must
    have the same vocabulary."""
    from transformers import AutoTokenizer

    from pipeline.backends.model_ref import resolve

    resolved = resolve(cfg.reference, field="train.reference")
    if AutoTokenizer.from_pretrained(resolved.path).get_vocab() != tokenizer.get_vocab():
        raise InputError(
            f"train.reference {cfg.reference!r} has another tokenizer than train.model {cfg.model!r}; fix: pick a "
            "reference of the same model family (same vocabulary), or drop train.reference"
        )
    return _causal_lm(resolved.path, cfg, device, weights_dtype).eval(), resolved.label


def train(cfg: TrainConfig, data: str | Path, out_dir: str | Path, *, log=print) -> dict:
    """Train (or resume, or report a finished run); return the provenance record. Under torchrun every rank
    calls it (pipeline/train/parallel.py); rank 0 alone logs and writes, and every rank returns the record."""
    out_dir = Path(out_dir)
    dist = parallel.setup(cfg)
    ok = False
    try:
        prov = _train(cfg, data, out_dir, dist, log=log if dist.main else lambda msg: None)
        ok = True
        return prov
    finally:
        parallel.teardown(dist, ok=ok)


def _train(cfg: TrainConfig, data, out_dir: Path, dist: parallel.Dist, *, log) -> dict:
    source = open_source(data)
    check_degenerate(source, log)
    run_key = fingerprint("train", VERSION, cfg.weight_fields(), source.fingerprint)
    done = ckpt.check_out_dir(out_dir, run_key)
    if done is not None:
        log(f"train: {out_dir} already holds this finished run ({done['steps']} steps); nothing to do")
        return done
    device = dist.device
    weights_dtype, autocast, compute_dtype = precision(cfg, device)
    model, tokenizer, label = load_policy(cfg, device, weights_dtype)
    wrapped = parallel.wrap(model, dist, bf16=compute_dtype == "bfloat16" and weights_dtype == torch.float32)
    every = wrapped if dist.mode == "fsdp" else None  # FSDP: every forward through the sharded module
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = dict(max_prompt_tokens=cfg.max_prompt_tokens, max_length=cfg.max_length)
    held = eval_prompts(source, seed=cfg.seed, fraction=cfg.eval_fraction, min_pairs=cfg.overopt.min_eval_pairs)
    is_train = lambda p: p not in held  # noqa: E731
    eval_set = list(examples(source, tokenizer, keep=held.__contains__, **enc))

    ref_model, ref_label = load_reference(cfg, tokenizer, device, weights_dtype) if cfg.reference else (model, label)
    path = cache_path(source, model_label=ref_label, template=tokenizer.chat_template, dtype=compute_dtype,
                      ld_alpha=cfg.ld_alpha, **enc)
    n_train = 0

    def counted():  # every pair once, counting the training ones on the way
        nonlocal n_train
        for ex in examples(source, tokenizer, **enc):
            n_train += ex.prompt_id not in held
            yield ex

    with bar(total=None, desc="reference log-probs", unit="pair") as pbar:
        refs = reference_logps(
            ref_model,
            source,
            counted(),
            path=path,
            use_shards=shard_refs_usable(source, model_label=ref_label, dtype=compute_dtype, ld_alpha=cfg.ld_alpha),
            micro_batch=cfg.micro_batch_size,
            log=log,
            progress=pbar.advance,
            ld_alpha=cfg.ld_alpha,
            packed=cfg.packing,
            logit_chunk=cfg.logit_chunk,
            autocast=autocast,
            pad_id=pad_id,
            dist=dist,
            fwd=every,  # FSDP's wrapped policy; train.reference is refused under FSDP (config)
        )
    del ref_model  # a separate reference is needed only for the pre-pass
    if n_train == 0:
        raise InputError(
            f"--data {data}: no training pairs after holding out {len(held)} eval prompts; "
            "fix: lower train.eval_fraction or build more pairs"
        )
    total_steps = cfg.steps or math.ceil(cfg.epochs * n_train / cfg.batch_size)

    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = optimizer(params, cfg, device)
    watch = OverOptimisationWatch(cfg.overopt)
    state = ckpt.load_latest(out_dir, run_key, model, opt, sched, watch, dist=dist)
    step, epoch, consumed = state["step"], state["epoch"], state["consumed"]
    if step:
        log(f"train: resuming from step {step} (epoch {epoch}, {consumed} pairs into it)")
    if dist.main:
        ckpt.begin(out_dir, run_key, cfg, label, source)
    mlog = MetricsLog(out_dir, tensorboard=cfg.tensorboard, resume_step=step) if dist.main else None
    if getattr(mlog, "note", None):
        log(f"train: {mlog.note}")

    def stream(ep: int):
        return shuffled(
            examples(source, tokenizer, keep=is_train, **enc), seed=cfg.seed, epoch=ep, buffer=cfg.shuffle_buffer
        )

    def evaluate_and_watch(record: dict) -> bool:
        """Evaluate into `record`, feed the watch, log an alarm; True when early_stop ends the run here."""
        ev, sums = evaluate(model, eval_set, refs, cfg, pad_id, autocast, step=record["step"], dist=dist, fwd=every)
        record.update({f"eval/{k}": v for k, v in ev.items()})
        first = watch.eval_pairs is None
        changes, alarms = watch.observe(record["step"], sums, sums["tokens"], seed=boot_seed(cfg, record["step"]))
        for k, e in changes.items():  # what the watch judges: the paired change since the first evaluation
            record.update({f"eval/{k}_change": e.value, **noise(f"eval/{k}_change", se=e.se)})
        if first and watch.note():
            log(f"train: {watch.note()}")
        if watch.holding:
            record["overopt_holding"] = list(watch.holding)
        if alarms:
            record["warning"] = "; ".join(a["warning"] for a in alarms)
        for alarm in alarms:
            log(
                f"train: WARNING at step {alarm['step']}: {alarm['warning']}"
                + ("; stopping early (train.early_stop)" if cfg.early_stop else "")
            )
        return bool(alarms) and cfg.early_stop

    batches = Batches(stream, size=cfg.batch_size, epoch=epoch, consumed=consumed)
    started, record = time.time(), {}
    if step == 0:
        record = {"step": 0}
        if eval_set:
            evaluate_and_watch(record)
        if mlog:
            mlog.write(record)
    with bar(total=total_steps, initial=step, desc="train", unit="step") as pbar:
        while step < total_steps:
            batch = batches.take()
            epoch, consumed = batches.epoch, batches.consumed
            t0 = time.perf_counter()
            n_rat = sum(ex.rationale is not None for ex in batch) if cfg.losses.get("rationale") else 0
            opt.zero_grad(set_to_none=True)
            sums, vals, tokens = accumulate(model, dist.share(batch), refs, cfg, pad_id, autocast,
                                            n_rationales=n_rat, n_pairs=len(batch), fwd=wrapped, dist=dist)
            if dist.on:  # every rank's loss sums, per-pair metrics and tokens, in rank order
                sums, vals, tokens = parallel.reduce_step(dist, sums, vals, tokens)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            opt.step()
            sched.step()
            step += 1
            seconds = time.perf_counter() - t0
            terms = {k: v / (n_rat if k == "rationale" else len(batch)) for k, v in sums.items()}
            record = {
                "step": step,
                "epoch": epoch,
                "loss": sum(cfg.losses[k] * v for k, v in terms.items()),
                **{f"loss/{k}": v for k, v in terms.items()},
                **mean(vals),
                "grad_norm": parallel.full_norm(norm),
                "learning_rate": sched.get_last_lr()[0],
                "tokens": tokens,
                "tokens_per_second": tokens / max(seconds, 1e-9),
                "time": time.time(),
            }
            stop = False
            if eval_set and (step % cfg.eval_every == 0 or step == total_steps):
                stop = evaluate_and_watch(record)
            if mlog:
                mlog.write(record)
            pbar.advance(1, tokens)
            if step % cfg.save_every == 0 or step == total_steps or stop:
                ckpt.save(
                    out_dir,
                    model,
                    opt,
                    sched,
                    watch,
                    step=step,
                    epoch=epoch,
                    consumed=consumed,
                    keep=cfg.keep_checkpoints,
                    dist=dist,
                )
            if stop:
                break
    if mlog:
        mlog.close()
    final = {k: v for k, v in record.items() if k.startswith("eval/")}
    if not final and eval_set:  # resumed after the last checkpoint but before the model was written
        ev, _ = evaluate(model, eval_set, refs, cfg, pad_id, autocast, step=step, dist=dist, fwd=every)
        final = {f"eval/{k}": v for k, v in ev.items()}
    full = ckpt.full_state(model, dist)  # FSDP: the whole state dict gathered on rank 0 (collective)
    if not dist.main:
        return dist.first(None)
    if full is not None:  # FSDP: a plain copy of the policy on rank 0's CPU takes the gathered weights
        model = load_policy(cfg, "cpu", weights_dtype)[0]
        model.load_state_dict(full)
    return dist.first(ckpt.finish(
        out_dir,
        run_key,
        model,
        tokenizer,
        cfg=cfg,
        label=label,
        source=source,
        steps=step,
        total_steps=total_steps,
        final=final,
        warnings=watch.fired,
        watch=watch.summary(),
        seconds=time.time() - started,
        log=log,
    ))
