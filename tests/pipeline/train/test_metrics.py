"""The over-optimisation watch and the metrics log."""

import json

from pipeline.train.metrics import MetricsLog, OverOptimisationWatch


def feed(entropy, mass):
    w = OverOptimisationWatch(patience=2, tol=1e-3)
    return [w.update(e, m) for e, m in zip(entropy, mass)]


def test_entropy_turning_down_after_a_rise_warns_once_it_has_fallen_twice():
    out = feed([1.00, 1.10, 1.20, 1.15, 1.10], [0.8] * 5)
    assert out[:4] == [None] * 4
    assert out[4] and "entropy turned down" in out[4]


def test_entropy_falling_without_a_rise_is_not_the_pattern():
    assert feed([1.2, 1.1, 1.0, 0.9], [0.8] * 4) == [None] * 4


def test_mass_falling_on_consecutive_evaluations_warns():
    out = feed([1.0] * 4, [0.84, 0.83, 0.80, 0.78])
    assert out[:2] == [None, None] and out[2] and "mass fell" in out[2]


def test_noise_level_changes_do_not_warn():
    assert feed([1.0, 1.0004, 1.0002, 1.0001], [0.8, 0.8, 0.8, 0.8]) == [None] * 4
    assert feed([1.0] * 4, [0.8, 0.79995, 0.7999, 0.79985]) == [None] * 4  # falling, but by less than tol


def test_watch_state_survives_a_resume():
    a = OverOptimisationWatch()
    for e in (1.0, 1.2):
        a.update(e, 0.8)
    b = OverOptimisationWatch()
    b.load(json.loads(json.dumps(a.state())))
    assert b.update(1.1, 0.8) == a.update(1.1, 0.8)


def test_a_resumed_log_drops_records_past_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(5):
        log.write({"step": step, "loss": 1.0 / (step + 1)})
    MetricsLog(tmp_path, tensorboard=False, resume_step=2).write({"step": 3, "loss": 0.0})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    MetricsLog(tmp_path, tensorboard=False, resume_step=0)  # a fresh start: nothing kept
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_bundled_example_train_config_is_valid():
    from pipeline.prompts import bundled_data_dir
    from pipeline.train.config import load_train_config

    cfg = load_train_config(bundled_data_dir() / "configs" / "train.yaml")
    assert cfg.losses == {"sigmoid": 1.0, "nll": 0.1} and cfg.micro_batch_size == 4
