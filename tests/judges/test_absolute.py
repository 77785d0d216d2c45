import json

import pytest

from judges.absolute import ScoreTokenJudge
from pipeline.errors import ConfigError

CONV = [{"role": "user", "content": "What is the capital of France?"}]


def judge(model, **kw):
    m, t, label = model
    args = dict(template_id="absolute-1to5-v1", min_mass=0.01, max_input_tokens=2048, batch_size=4) | kw
    return ScoreTokenJudge(m, t, label, **args)


@pytest.mark.slow
def test_graded_scores_and_batch_invariance(model):
    j = judge(model)
    items = [(CONV, "Paris."), (CONV, "The capital of France is Paris, on the Seine."), (CONV, "banana " * 30)]
    batched = j.score(items)
    single = [j.score([item])[0] for item in items]
    for b, s in zip(batched, single):
        assert b.ok and 1.0 <= b.score <= 5.0 and abs(b.score - s.score) < 1e-3
        raw = json.loads(b.raw)
        assert raw["mass"] >= 0.01 and len(raw["p"]) == 5
    assert len({round(b.score, 6) for b in batched}) == 3  # graded, not a constant
    assert j.id.endswith("#absolute-1to5-v1")


@pytest.mark.slow
def test_overlong_and_low_mass_inputs_are_not_ok(model):
    long = judge(model, max_input_tokens=64).score([(CONV, "word " * 200)])[0]
    assert not long.ok and long.score is None and "judge.max_input_tokens=64" in long.raw
    strict = judge(model, min_mass=0.999).score([(CONV, "Paris.")])[0]
    assert not strict.ok and strict.score is None


def test_unknown_template_is_a_config_error():
    with pytest.raises(ConfigError, match="judge.templates: 'nope'"):  # refused before the model is touched
        judge((None, None, "m"), template_id="nope")
