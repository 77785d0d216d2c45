"""The DPO trainer stage: `train(cfg, data, out_dir)` trains a policy directly from pairs shards; the reward-model
trainer (`prefsynth train-rm`, rm_trainer.py's `train_rm`) trains a Bradley-Terry reward model from the same shards.

One module per concern: config.py (TrainConfig, RMConfig), data.py (streaming shards, tokens, eval split),
ref.py (reference log-probs from shards or a cached pre-pass), logps.py (packed/padded forward,
chunked log-probs), losses.py (DPO family), metrics.py (JSONL/TensorBoard, over-optimisation
watch), tdist.py (Student's t quantiles for the watch), checkpoint.py (checkpoints, resume, final
model, provenance), card.py (the model's card), step.py (a step's accumulated forwards, the eval),
parallel.py (torchrun: DDP, FSDP2, rank shares), loop.py (precision, optimiser and schedule, the batch stream:
shared by both trainers), trainer.py (the DPO loop), rm_losses.py (Bradley-Terry with margin, soft labels,
centring), rm_trainer.py (the reward-model loop), sample.py (on-policy sampling for online training, the Nash-MD
mixture; pipeline/loop/online.py runs the online loop).
"""

from pipeline.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "train"]


def __getattr__(name: str):
    # `train` loads torch: imported on first use, so `prefsynth --help` and the CLI's config checks stay fast
    if name == "train":
        from pipeline.train.trainer import train

        return train
    raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
