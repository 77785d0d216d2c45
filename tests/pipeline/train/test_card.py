"""The trained model's card (pipeline/train/card.py) from a provenance: what fired and why, or that nothing did."""

from huggingface_hub import ModelCard

from pipeline.train import card
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import OverOptConfig, OverOptimisationWatch


def provenance(alarms=(), *, eval_pairs=10, base="bundled:smollm2-135m-instruct@abc123", early_stop=False):
    w = OverOptimisationWatch(OverOptConfig())
    w.eval_pairs = eval_pairs
    return {"model": {"base": base, "path": "OUT/model"}, "losses": {"sigmoid": 1.0}, "beta": 0.1,
            "data": {"shards": ["/x/pairs/train-00000-of-00001.parquet"], "fingerprint": "f00d", "run_name": "demo"},
            "steps": 2 if early_stop else 8, "planned_steps": 8, "stopped_early": early_stop, "seconds": 12.5,
            "final_eval": {"eval/pairs": eval_pairs, "eval/topk_mass": 0.8123, "eval/topk_mass_se": 0.0123,
                           "eval/topk_mass_lo": 0.79, "eval/topk_mass_hi": 0.83, "eval/topk_mass_change": -0.01,
                           "eval/rewards/accuracies": 0.7, "eval/rewards/accuracies_se": 0.14},
            "warnings": list(alarms), "overopt_watch": w.summary(), "config": TrainConfig().model_dump()}


def test_a_card_names_each_alarm_with_its_values_window_and_noise():
    # a real alarm from the watch, not a hand-written one
    w = OverOptimisationWatch(OverOptConfig(drift=False))  # the between-prompt rule: an alarm at the third evaluation
    for i, v in enumerate([1.20, 1.13, 1.06]):
        alarms = w.update(i, {"topk_entropy": {"value": v, "change": v - 1.2, "se": 0.005 if i else 0.0},
                              "topk_mass": {"value": 0.8, "change": 0.0, "se": 0.001 if i else 0.0}}, eval_pairs=10)
    (alarm,) = alarms
    text = card.render(provenance([alarm], early_stop=True))
    assert "**1 alarm(s)**" in text and "The run stopped at the first (`train.early_stop`)" in text
    assert f"- step 2, `topk_entropy` (fell_below_first): {alarm['warning']}" in text
    assert "1.0600 at step 2 (change -0.1400, se 0.0050" in text and "on 2 evaluation(s) in a row" in text
    assert "window 2, z 3, min_change 0.02, on 10 eval pair(s)" in text
    assert "| `topk_mass` | 0.8123 | 0.012 | [0.79, 0.83] |" in text and "topk_mass_change" not in text
    assert "2 steps (stopped early of 8 planned)" in text
    meta = ModelCard(text).data
    assert meta.library_name == "transformers" and meta.base_model is None  # bundled: a GGUF conversion, no Hub id


def test_a_card_says_when_nothing_fired_and_when_the_watch_could_not_run(tmp_path):
    quiet = card.render(provenance(base="HuggingFaceTB/SmolLM2-135M-Instruct@hub"))
    assert "No alarm: neither indicator moved beyond its noise" in quiet and "alarm(s)" not in quiet
    assert ModelCard(quiet).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    off = card.render(provenance(eval_pairs=1))
    assert "**Not judged**: over-optimisation watch off: the eval split has 1 pair(s)" in off
    assert "fix: raise eval_fraction" in off and "No alarm" not in off
    assert card.write(tmp_path, provenance()).read_text() == card.render(provenance())
