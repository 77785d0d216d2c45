"""Trainer configuration: one typed model, each field documented once (docs/architecture.md rule 3).

YAML (`prefsynth train --config FILE`) plus `--set key=value` overrides, validated like the run
config: an unknown key or a bad value raises `ConfigError` naming the key, the value and the fix.
`TrainConfig.data_fields()` lists what changes the trained weights (for the provenance record);
batch split (micro batches), logging and checkpoint cadence do not change them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import _Section, load_model
from pipeline.train.metrics import OverOptConfig

LOSSES = ("sigmoid", "ipo", "robust", "hinge", "rdpo", "nll", "rationale")


class LoraConfig(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules to adapt; 'all-linear' or a list of names."
    )


class OnlineConfig(_Section):
    """`prefsynth train --online` (pipeline/loop/online.py): each step samples, labels, pairs and trains."""

    prompts_per_step: int = Field(4, ge=1, description="Prompts sampled per step (in a seeded order per epoch).")
    k: int = Field(4, ge=2, description="Answers sampled per prompt per step from the current policy.")
    max_new_tokens: int = Field(64, ge=1, description="Longest sampled answer, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (applied after the mixture).")
    mixture: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Nash-MD geometric mixture weight b: tokens are drawn from pi^(1-b) * pi_ref^b, renormalised "
        "(online IPO-MD with losses {ipo: 1}); 0 samples the policy (online DPO / online IPO).",
    )
    labels: Literal["run", "verifier"] = Field(
        "run",
        description="Who labels the sampled answers: 'run' the judges of the --data run's config (in process or "
        "served, reward models, the verifier where prompts carry a `verify` spec) aggregated and paired as that "
        "run's judge.aggregate and pair.strategy say; 'verifier' the verifier alone (pair strategy 'verified').",
    )
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="Dollars this online run may spend on served judges' requests (at the --data run's prices), "
        "counted over every step, a resumed run's included; null: the --data run's budget.usd. Operational: raise it "
        "and rerun the same command to continue.",
    )


class TrainConfig(_Section):
    model: str = Field(
        "bundled:smollm2-135m-instruct", description="Policy to train: bundled:NAME, a local model folder or a Hub id."
    )
    reference: str | None = Field(
        None,
        description="DPO reference model (bundled:NAME, a local folder or a Hub id) whose log-probs the loss "
        "compares against, computed once in the pre-pass; it must share train.model's tokenizer. null: the policy "
        "at step 0 (train.model). `iterate.reference: base` sets it to the base model (a fixed reference across "
        "rounds). Not with parallel: fsdp yet.",
    )
    seed: int = Field(0, description="Seed for data order, the eval split and initialisation of LoRA weights.")
    losses: dict[str, float] = Field(
        default_factory=lambda: {"sigmoid": 1.0},
        description="Loss terms and their weights, summed: sigmoid (DPO; conservative DPO with label_smoothing), "
        "ipo, robust, hinge, rdpo (label_confidence as a soft target), nll (RPO-style NLL on chosen, per token), "
        "rationale (DCPO rationale likelihood).",
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature beta (tau for IPO).")
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Conservative DPO (sigmoid) and robust DPO: assumed probability that a label is flipped.",
    )
    ipo_length_average: bool = Field(
        True,
        description="IPO on per-token averaged log-ratios (as TRL and the IPO "
        "authors' experiments); false uses summed log-ratios (the paper's Eq. 17 as written).",
    )
    ld_alpha: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="LD-DPO length desensitisation: response tokens "
        "past the shorter response's length count with weight alpha; null turns it off.",
    )
    max_prompt_tokens: int = Field(256, ge=8, description="Prompt tokens kept; longer prompts keep their last tokens.")
    max_length: int = Field(
        768, ge=16, description="Prompt + response tokens kept; longer responses are cut at the end."
    )
    eval_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of prompt_ids held out for evaluation "
        "(at least one prompt when > 0 and the data has two or more; topped up in hash order to "
        "overopt.min_eval_pairs pairs while that stays within a quarter of the pairs).",
    )
    batch_size: int = Field(8, ge=1, description="Pairs per optimiser step.")
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Pairs per forward pass (null: batch_size); "
        "batch_size/micro_batch_size accumulated passes give the big batch's update.",
    )
    learning_rate: float = Field(5e-6, gt=0, description="AdamW learning rate (constant after warmup).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null turns it off.")
    epochs: int = Field(1, ge=1, description="Passes over the training split (ignored when steps is set).")
    steps: int | None = Field(None, ge=1, description="Optimiser steps to run; overrides epochs.")
    shuffle_buffer: int = Field(1024, ge=1, description="Pairs held in the streaming shuffle buffer.")
    packing: bool = Field(
        True,
        description="Pack sequences without padding (varlen attention on GPU with "
        "flash-attn, block-diagonal masks otherwise).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="'auto': float32 weights with bf16 autocast on GPU, float32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters (peft) instead of all weights: "
        "{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}; merged into the saved model.",
    )
    logit_chunk: int = Field(1024, ge=16, description="Response positions per LM-head chunk (memory, not results).")
    eval_every: int = Field(10, ge=1, description="Evaluate on the held-out split every N steps.")
    top_k: int = Field(10, ge=1, description="k of the top-k entropy and mass over-optimisation indicators.")
    early_stop: bool = Field(False, description="Stop when the over-optimisation watch fires (rule: overopt.*).")
    overopt: OverOptConfig = Field(
        default_factory=OverOptConfig,
        description="The over-optimisation watch's noise-aware rule (pipeline/train/metrics.py).",
    )
    save_every: int = Field(50, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (oldest removed).")
    tensorboard: bool = Field(True, description="Also write metrics for TensorBoard (needs the tensorboard package).")
    online: OnlineConfig | None = Field(
        None,
        description="Online DPO/IPO (`prefsynth train --online`): prompts from --data, answers sampled from the "
        "current policy every step and labelled by the run's judges; null trains offline on --data's pairs. "
        "Keys: prompts_per_step, k, max_new_tokens, temperature, mixture, labels, budget_usd.",
    )
    parallel: Literal["auto", "none", "ddp", "fsdp"] = Field(
        "auto",
        description="Several processes under torchrun: ddp (replicated weights), fsdp (FSDP2 fully_shard: weights, "
        "gradients and AdamW state sharded); none: one process; auto: ddp when WORLD_SIZE > 1, else none. "
        "batch_size must be a multiple of world size x micro_batch_size (pipeline/train/parallel.py).",
    )

    @model_validator(mode="after")
    def _check(self):
        unknown = sorted(set(self.losses) - set(LOSSES))
        if unknown:
            raise ValueError(f"losses has unknown term(s) {unknown}; fix: use any of {list(LOSSES)}")
        if not any(self.losses.get(k, 0) for k in ("sigmoid", "ipo", "robust", "hinge", "rdpo")):
            raise ValueError("losses has no preference term with a non-zero weight; fix: add e.g. sigmoid: 1.0")
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}; fix: make it one"
            )
        if self.reference is not None and self.parallel == "fsdp":
            raise ValueError(
                f"reference {self.reference!r} with parallel 'fsdp': a separate reference model is not sharded yet; "
                "fix: use parallel: ddp, or drop reference (the policy at step 0 is the reference)"
            )
        if self.max_prompt_tokens >= self.max_length:
            raise ValueError(
                f"max_prompt_tokens {self.max_prompt_tokens} leaves no room for a response under "
                f"max_length {self.max_length}; fix: raise max_length"
            )
        if self.online is not None and self.parallel in ("ddp", "fsdp"):
            raise ValueError(
                f"online with parallel {self.parallel!r}: online training samples in one process; fix: drop "
                "parallel (or set it to none) and run without torchrun"
            )
        return self

    def weight_fields(self) -> dict:
        """The fields that change the trained weights (for provenance and the ref-logp cache). The watch's
        settings and eval cadence do only when early_stop lets the watch end the run; overopt.min_eval_pairs
        always does when there is an eval split, since it can grow the split."""
        ops = {
            "micro_batch_size",
            "logit_chunk",
            "save_every",
            "keep_checkpoints",
            "tensorboard",
            "gradient_checkpointing",
            "packing",
            "parallel",
        }
        if self.reference is None:
            ops.add("reference")  # the default reference is train.model: keys of runs from before the field hold
        if self.online is None:
            ops.add("online")  # offline runs keep the keys they had before the field existed
        fields = self.model_dump(exclude=ops if self.early_stop else ops | {"eval_every", "overopt"})
        if self.online is not None:
            fields["online"].pop("budget_usd")  # how much may be spent, not what is trained
        if not self.early_stop and self.eval_fraction > 0:  # it sizes the eval split (data.eval_prompts)
            fields["overopt"] = {"min_eval_pairs": self.overopt.min_eval_pairs}
        return fields


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    return load_model(TrainConfig, path, overrides)


class RMConfig(_Section):
    """`prefsynth train-rm`: a Bradley-Terry reward model (pipeline/train/rm_trainer.py) from the same pairs shards."""

    model: str = Field(
        "bundled:smollm2-135m-instruct",
        description="Base model under the reward head (a new linear score head, num_labels 1, on its last hidden "
        "state; an existing one-label reward model keeps its head): bundled:NAME, a local folder or a Hub id.",
    )
    seed: int = Field(0, description="Seed for data order, the eval split and the score head's initialisation.")
    margin: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the pairs' `margin` column in the loss -log s(r+ - r- - margin * row margin) (Llama "
        "2's margin loss); 0 is the plain Bradley-Terry loss; rows without a margin use 0.",
    )
    label_confidence: bool = Field(
        False,
        description="Use the pairs' `label_confidence` column c as a soft label: -(c log s(d) + (1-c) log s(-d)); "
        "rows without one use 1 - label_smoothing.",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Soft label 1 - e for every pair (or rows "
                                   "without a label_confidence): the assumed probability that a label is flipped.")
    center_rewards: float = Field(0.0, ge=0.0, description="Weight of the centring term mean((r+ + r-)^2) (TRL's "
                                  "center_rewards_coefficient; 0.01 is usual): rewards stay near zero mean.")
    max_prompt_tokens: int = Field(256, ge=8, description="Prompt tokens kept; longer prompts keep their last tokens.")
    max_length: int = Field(768, ge=16, description="Prompt + response tokens kept; longer responses are cut.")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of prompt_ids held out for evaluation "
                                 "(all pairs of a prompt on one side), topped up to min_eval_pairs pairs in hash "
                                 "order while that stays within a quarter of the pairs.")
    min_eval_pairs: int = Field(8, ge=0, description="Held-out pairs wanted for the eval accuracy "
                                "(see eval_fraction).")
    batch_size: int = Field(8, ge=1, description="Pairs per optimiser step.")
    micro_batch_size: int | None = Field(None, ge=1, description="Pairs per forward pass (null: batch_size).")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate (constant after warmup).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null turns it off.")
    epochs: int = Field(1, ge=1, description="Passes over the training split (ignored when steps is set).")
    steps: int | None = Field(None, ge=1, description="Optimiser steps to run; overrides epochs.")
    shuffle_buffer: int = Field(1024, ge=1, description="Pairs held in the streaming shuffle buffer.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="'auto': float32 weights with bf16 autocast on GPU, float32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (peft, task SEQ_CLS; the score head "
                                    "trained in full) instead of all weights; merged into the saved model.")
    eval_every: int = Field(10, ge=1, description="Evaluate on the held-out split every N steps.")
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples for the eval accuracy's interval.")
    save_every: int = Field(50, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (oldest removed).")
    tensorboard: bool = Field(True, description="Also write metrics for TensorBoard (needs the tensorboard package).")

    @model_validator(mode="after")
    def _check(self):
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}; fix: make it one")
        if self.max_prompt_tokens >= self.max_length:
            raise ValueError(f"max_prompt_tokens {self.max_prompt_tokens} leaves no room for a response under "
                             f"max_length {self.max_length}; fix: raise max_length")
        return self

    def weight_fields(self) -> dict:
        """The fields that change the trained weights (the run key): not the batch split, cadence or logging."""
        return self.model_dump(exclude={"micro_batch_size", "save_every", "keep_checkpoints", "tensorboard",
                                        "gradient_checkpointing", "eval_every", "resamples"})


def load_rm_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RMConfig:
    return load_model(RMConfig, path, overrides)
