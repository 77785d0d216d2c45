"""The reward-model trainer: a Bradley-Terry reward model from prefsynth's pairs shards (`prefsynth train-rm`).

`train_rm(cfg, data, out_dir)` runs, or resumes, one run under `out_dir`, on the DPO trainer's infrastructure:
the shards streamed and split by prompt_id (pipeline/train/data.py), the optimiser, schedule and batch stream
(loop.py), checkpoints with exact resume and the model folder (checkpoint.py), metrics.jsonl/TensorBoard and the
bootstrap (metrics.py). What differs is the model and the loss:
- the model: `AutoModelForSequenceClassification` with one label on `cfg.model` (a new linear score head; peft
  LoRA with the head trained in full when `cfg.lora`); pad_token_id set, since SmolLM2 pads with its eos;
- a sequence: the chat template of the prompt plus the response as the assistant turn, rendered as
  judges/reward_model.py (and vLLM's /classify with the same template) render it: pipeline.core.encoding's
  prompt + response ids and the template's tokens after the end-of-turn (SmolLM2: "\\n"). The reward is the score
  head on the last real token's hidden state, pooled as the judge pools, so the judge scores what was trained;
- the loss: pipeline/train/rm_losses.py (Bradley-Terry, margin, soft labels, centring).
Metrics per step and on the held-out prompts: loss, pair accuracy (r+ > r-; eval with a 95% BCa bootstrap
interval over the pairs), reward margin, and the mean and std of all rewards (to centre the model's scores).
Not done here: packing (rows are right-padded) and torchrun (one process; refused under WORLD_SIZE > 1).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from pipeline.config import fingerprint
from pipeline.core.encoding import encode_pair
from pipeline.core.progress import bar
from pipeline.errors import ConfigError, InputError
from pipeline.train import card
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import RMConfig
from pipeline.train.data import check_degenerate, eval_prompts, examples, open_source, shuffled
from pipeline.train.loop import Batches, precision, start
from pipeline.train.metrics import MetricsLog, bootstrap
from pipeline.train.rm_losses import reward_spread, rm_loss, rm_metrics

VERSION = "1"


def template_tail(tokenizer) -> list[int]:
    """The tokens a chat template puts after an assistant turn's end-of-turn token (SmolLM2: "\\n")."""
    prompt = [{"role": "user", "content": "1"}]
    p, r = encode_pair(tokenizer, prompt, "2")
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": "2"}], tokenize=True,
                                         return_dict=False)
    return list(full[len(p) + len(r):]) if list(full[: len(p) + len(r)]) == p + r else []


def load_reward_model(cfg: RMConfig, device: str, weights_dtype: torch.dtype):
    """(model in train mode, tokenizer, label): `cfg.model` under a one-label score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pipeline.backends.model_ref import resolve

    hf_logging.disable_progress_bar()
    resolved = resolve(cfg.model, field="model")
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if not tokenizer.chat_template:
        raise InputError(f"model {cfg.model!r} has no chat template; fix: use an instruct/chat model as the base")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)  # the new score head's initialisation
    prev = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point here, not a warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolved.path, num_labels=1, dtype=weights_dtype)
    finally:
        hf_logging.set_verbosity(prev)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout,
                                                 target_modules=cfg.lora.target_modules, task_type="SEQ_CLS"))
    model.train()
    return model, tokenizer, resolved.label


def pair_rewards(model, chunk, *, pad_id: int, eos_id: int, tail: list[int]):
    """(chosen rewards (n,), rejected rewards (n,), tokens) of a chunk of Examples: one right-padded forward of
    the chosen rows then the rejected rows, pooled at each row's last real token."""
    def seq(prompt, response):  # a cut response lost its end-of-turn token: no template tail after it either
        return prompt + response + (tail if response and response[-1] == eos_id else [])

    seqs = [seq(ex.prompt, ex.chosen) for ex in chunk] + [seq(ex.prompt, ex.rejected) for ex in chunk]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers in place
    hidden = inner.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(len(seqs), device=device), mask.sum(-1) - 1]
    r = inner.score(last).float().squeeze(-1)
    n = len(chunk)
    return r[:n], r[n:], int(mask.sum())


def _targets(chunk, cfg: RMConfig, device) -> dict:
    """The loss's per-pair margin and soft label tensors (None when the config does not use them)."""
    out = {}
    if cfg.margin:
        out["margin"] = torch.tensor([cfg.margin * (ex.margin or 0.0) for ex in chunk], device=device)
    if cfg.label_confidence or cfg.label_smoothing:
        default = 1.0 - cfg.label_smoothing
        out["confidence"] = torch.tensor(
            [ex.confidence if cfg.label_confidence and ex.confidence is not None else default for ex in chunk],
            device=device,
        )
    return out


def _forward_loss(model, chunk, cfg: RMConfig, enc: dict, *, n_pairs: int):
    c, r, tokens = pair_rewards(model, chunk, **enc)
    loss, sums = rm_loss(c, r, n_pairs=n_pairs, center=cfg.center_rewards, **_targets(chunk, cfg, c.device))
    return loss, sums, c.detach().cpu(), r.detach().cpu(), tokens


@torch.no_grad()
def evaluate(model, eval_set, cfg: RMConfig, enc: dict, autocast, *, step: int) -> dict:
    """Eval loss, accuracy (with bootstrap se and 95% BCa interval over the pairs), margin, reward mean/std."""
    if not eval_set:
        return {}
    was = model.training
    model.eval()
    loss, cs, rs = 0.0, [], []
    for s in range(0, len(eval_set), cfg.micro_batch_size):
        with autocast():
            part, _, c, r, _ = _forward_loss(model, eval_set[s : s + cfg.micro_batch_size], cfg, enc,
                                             n_pairs=len(eval_set))
        loss += float(part)
        cs.append(c)
        rs.append(r)
    model.train(was)
    c, r = torch.cat(cs), torch.cat(rs)
    record = {"loss": loss, "pairs": len(eval_set), **reward_spread(c, r)}
    for k, v in rm_metrics(c, r).items():
        e = bootstrap(v.double().numpy(), resamples=cfg.resamples, seed=cfg.seed * 1_000_003 + step)
        record[k] = e.value
        if len(v) > 1:  # one pair has no spread to resample
            record.update({f"{k}_se": e.se, f"{k}_lo": e.lo, f"{k}_hi": e.hi} if k == "accuracy" else
                          {f"{k}_se": e.se})
    return record


def train_rm(cfg: RMConfig, data: str | Path, out_dir: str | Path, *, log=print, stop_after: int | None = None
             ) -> dict:
    """Train (or resume, or report a finished run); return the provenance record. `stop_after`: return after
    that many steps of this call without writing the model (a stand-in for a kill, for tests and benches)."""
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        raise ConfigError(f"train-rm under torchrun (WORLD_SIZE {os.environ['WORLD_SIZE']}): the reward-model "
                          "trainer runs in one process; fix: run `prefsynth train-rm` without torchrun")
    out_dir = Path(out_dir)
    source = open_source(data)
    check_degenerate(source, log)
    run_key = fingerprint("train-rm", VERSION, cfg.weight_fields(), source.fingerprint)
    done = ckpt.check_out_dir(out_dir, run_key)
    if done is not None:
        log(f"train-rm: {out_dir} already holds this finished run ({done['steps']} steps); nothing to do")
        return done
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights_dtype, autocast, _ = precision(cfg, device)
    model, tokenizer, label = load_reward_model(cfg, device, weights_dtype)
    enc = dict(pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, tail=template_tail(tokenizer))
    lengths = dict(max_prompt_tokens=cfg.max_prompt_tokens, max_length=cfg.max_length)
    held = eval_prompts(source, seed=cfg.seed, fraction=cfg.eval_fraction, min_pairs=cfg.min_eval_pairs)
    eval_set = list(examples(source, tokenizer, keep=held.__contains__, **lengths))
    n_train = sum(1 for _ in examples(source, tokenizer, keep=lambda p: p not in held, **lengths))
    if n_train == 0:
        raise InputError(f"--data {data}: no training pairs after holding out {len(held)} eval prompts; "
                         "fix: lower eval_fraction or build more pairs")
    total_steps = cfg.steps or -(-cfg.epochs * n_train // cfg.batch_size)
    params, opt, sched, state = start(model, cfg, device, out_dir, run_key)
    step = state["step"]
    if step:
        log(f"train-rm: resuming from step {step} (epoch {state['epoch']}, {state['consumed']} pairs into it)")
    ckpt.begin(out_dir, run_key, cfg, label, source)
    mlog = MetricsLog(out_dir, tensorboard=cfg.tensorboard, resume_step=step)

    def stream(ep: int):
        pairs = examples(source, tokenizer, keep=lambda p: p not in held, **lengths)
        return shuffled(pairs, seed=cfg.seed, epoch=ep, buffer=cfg.shuffle_buffer)

    batches = Batches(stream, size=cfg.batch_size, epoch=state["epoch"], consumed=state["consumed"])
    started, record, ran = time.time(), {}, 0
    if step == 0:
        record = {"step": 0, **{f"eval/{k}": v for k, v in evaluate(model, eval_set, cfg, enc, autocast,
                                                                      step=0).items()}}
        mlog.write(record)
    with bar(total=total_steps, initial=step, desc="train-rm", unit="step") as pbar:
        while step < total_steps:
            if stop_after is not None and ran >= stop_after:
                mlog.close()
                return {"stopped_at": step}
            batch = batches.take()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            sums, cs, rs, tokens = {}, [], [], 0
            for s in range(0, len(batch), cfg.micro_batch_size):
                with autocast():
                    loss, part, c, r, n_tok = _forward_loss(model, batch[s : s + cfg.micro_batch_size], cfg, enc,
                                                            n_pairs=len(batch))
                loss.backward()
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
                cs.append(c)
                rs.append(r)
                tokens += n_tok
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            opt.step()
            sched.step()
            step, ran = step + 1, ran + 1
            c, r = torch.cat(cs), torch.cat(rs)
            terms = {k: v / len(batch) for k, v in sums.items()}
            record = {
                "step": step,
                "epoch": batches.epoch,
                "loss": terms["bt"] + cfg.center_rewards * terms.get("center", 0.0),
                **{f"loss/{k}": v for k, v in terms.items()},
                **{k: float(v.float().mean()) for k, v in rm_metrics(c, r).items()},
                **reward_spread(c, r),
                "grad_norm": float(norm),
                "learning_rate": sched.get_last_lr()[0],
                "tokens": tokens,
                "tokens_per_second": tokens / max(time.perf_counter() - t0, 1e-9),
                "time": time.time(),
            }
            if eval_set and (step % cfg.eval_every == 0 or step == total_steps):
                ev = evaluate(model, eval_set, cfg, enc, autocast, step=step)
                record.update({f"eval/{k}": v for k, v in ev.items()})
            mlog.write(record)
            pbar.advance(1, tokens)
            if step % cfg.save_every == 0 or step == total_steps:
                ckpt.save(out_dir, model, opt, sched, None, step=step, epoch=batches.epoch,
                          consumed=batches.consumed, keep=cfg.keep_checkpoints)
    mlog.close()
    final = {k: v for k, v in record.items() if k.startswith("eval/")}
    if not final and eval_set:  # resumed after the last checkpoint but before the model was written
        final = {f"eval/{k}": v for k, v in evaluate(model, eval_set, cfg, enc, autocast, step=step).items()}
    prov = {
        "kind": "reward_model",
        "run_key": run_key,
        "model": {"base": label, "path": str(out_dir / "model")},
        "data": ckpt.data_record(source),
        "loss": {k: getattr(cfg, k) for k in ("margin", "label_confidence", "label_smoothing", "center_rewards")},
        "steps": step,
        "planned_steps": total_steps,
        "initial_eval": _initial_eval(out_dir),
        "final_eval": final,
        "config": cfg.model_dump(),
        "seconds": round(time.time() - started, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ckpt.write_model(out_dir, model, tokenizer, prov, card.write_rm)
    log(f"train-rm: {step} steps done; reward model in {out_dir / 'model'}, provenance in "
        f"{out_dir / 'provenance.json'}")
    return prov


def _initial_eval(out_dir: Path) -> dict:
    """The step-0 eval record from metrics.jsonl (it survives a resume)."""
    path = out_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        if rec.get("step") == 0:
            return {k: v for k, v in rec.items() if k.startswith("eval/")}
    return {}
