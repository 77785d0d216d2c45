import pytest

from pipeline.config import RunConfig, load_config
from pipeline.errors import ConfigError
from tests.conftest import TINY, run_fingerprints


def test_defaults_validate_and_tiny_loads():
    cfg = load_config(TINY)
    assert cfg.generate.n == 3 and cfg.input.limit == 4


def test_unknown_key_is_named_with_known_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "generate.temprature" in msg and "temperature" in msg and str(bad) in msg


def test_bad_value_names_key_value_and_fix():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["generate.n=1"])
    msg = str(err.value)
    assert "config key 'generate.n' has invalid value 1" in msg
    assert "greater than or equal to 2" in msg and "fix: Candidates per prompt" in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown config key 'genrate'"):
        load_config(None, ["genrate.n=4"])


def test_overrides_are_yaml_typed():
    cfg = load_config(None, ["generate.temperature=0", "rationale.enabled=false", "input.limit=7"])
    assert cfg.generate.temperature == 0.0 and cfg.rationale.enabled is False and cfg.input.limit == 7


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["generate.n"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_fields_skip_operational_knobs():
    from pipeline.publish.shards import config_fingerprint
    from pipeline.stages.order import STAGES

    a, b = RunConfig(), load_config(None, ["generate.batch_size=3", "judge.batch_size=2", "publish.chunk_prompts=1"])
    for stage in STAGES:
        assert stage.fields(a) == stage.fields(b), stage.name
    assert config_fingerprint(a) == config_fingerprint(b)
    c = load_config(None, ["generate.n=5"])
    fields = {s.name: s.fields for s in STAGES}
    assert fields["generate"](a) != fields["generate"](c) and config_fingerprint(a) != config_fingerprint(c)
    assert fields["judge"](a) == fields["judge"](c)  # judge depends on generate via its fingerprint


def test_backend_engine_and_endpoint_options_are_operational():
    from pipeline.stages.generate import stage_fingerprint

    a = RunConfig()
    b = load_config(
        None,
        [
            "generate.openai.concurrency=64",
            "generate.openai.timeout_s=5",
            "generate.vllm.enforce_eager=true",
            "generate.vllm.gpu_memory_utilization=0.3",
            "generate.request_log=false",
        ],
    )
    assert stage_fingerprint(a, "p") == stage_fingerprint(b, "p")
    # a different backend samples differently: a different fingerprint
    assert stage_fingerprint(a, "p") != stage_fingerprint(load_config(None, ["generate.backend=openai"]), "p")
    with pytest.raises(ConfigError, match="generate.openai.concurrency"):
        load_config(None, ["generate.openai.concurrency=0"])
    with pytest.raises(ConfigError, match="generate.backend"):
        load_config(None, ["generate.backend=sglang"])


def test_generate_turns_default_leaves_fingerprints_and_bad_values_are_named():
    """At 'last' no stage's fields name turns (run dirs from before it are reused: config_fingerprint of the
    tiny config was f50add5c9aac6cf6 before and after); branching changes the prompts stage's fields."""
    from pipeline.stages.order import STAGES

    a, b = RunConfig(), load_config(None, ["generate.turns=all"])
    assert all("turns" not in stage.fields(a) for stage in STAGES)
    changed = {s.name for s in STAGES if s.fields(a) != s.fields(b)}
    assert changed == {"prompts"}  # the rest see it through the prompts fingerprint
    assert load_config(None, ["generate.turns=[2, 0]"]).generate.turns == [0, 2]
    for bad, says in (("first", "must be 'last', 'all'"), ("[-1]", "integers >= 0"), ("[1, 1]", "not repeat"),
                      ("[]", "non-empty list")):
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"generate.turns={bad}"])
        assert "generate.turns" in str(err.value) and says in str(err.value) and "fix:" in str(err.value)



def _operational_paths(model, prefix=""):
    """Dotted paths of every field declared with `operational(...)`, through nested sections."""
    import typing

    from pydantic import BaseModel

    from pipeline.config.base import operational_fields

    ops = operational_fields(model)
    found = {f"{prefix}{name}" for name in ops}
    for name, field in model.model_fields.items():
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if name not in ops and isinstance(arg, type) and issubclass(arg, BaseModel):
                found |= _operational_paths(arg, f"{prefix}{name}.")
    return found


# a changed value for every operational field (a new one must be added here)
OPERATIONAL_CHANGES = {
    "generate.batch_size": "3", "generate.request_log": "false", "generate.vllm": "{max_model_len: 1024}",
    "generate.openai": "{concurrency: 3}", "judge.batch_size": "3", "judge.openai": "{concurrency: 3}",
    "curate.ches.batch_size": "3", "curate.dedup.batch_size": "3", "curate.dedup.chunk_prompts": "100",
    "rationale.batch_size": "3", "publish.shard_rows": "7", "publish.chunk_prompts": "3",
    "sources.self_critique.batch_size": "3", "sources.conversation.batch_size": "3",
    "input.synth.batch_size": "3", "input.synth.chunk_requests": "5", "budget.usd": "5",
}


def test_an_operational_field_is_marked_once_and_moves_no_fingerprint(pinned_revisions):
    """Every field declared `operational(...)` says so in its description and, changed, leaves the config
    fingerprint and every stage's fingerprint as they were (so a rerun with another batch size reuses the work)."""
    assert _operational_paths(RunConfig) == set(OPERATIONAL_CHANGES)
    base = ["prices={'bundled:smollm2-135m-instruct': {input: 1, output: 1}}", "sources.conversation.enabled=true"]
    before = run_fingerprints(load_config(None, base))
    for path, value in OPERATIONAL_CHANGES.items():
        cfg = load_config(None, [*base, f"{path}={value}"])
        assert run_fingerprints(cfg) == before, path
        section = cfg
        for part in path.split(".")[:-1]:
            section = getattr(section, part)
        leaf = path.split(".")[-1]
        assert type(section).model_fields[leaf].description.endswith("(operational)"), path
    # a real field does move
    assert run_fingerprints(load_config(None, [*base, "generate.max_new_tokens=17"])) != before


def test_yaml_aliases_work_and_an_alias_bomb_is_refused_fast(tmp_path):
    """Anchors a config may use are kept; aliases that expand past the limit are refused in well under a second,
    without the expanded value in the message (issue 39: 20-30 s and a 624 MB error before)."""
    import time

    ok = tmp_path / "ok.yaml"
    ok.write_text("generate: {n: &n 4, max_new_tokens: *n}\n")
    assert load_config(ok).generate.max_new_tokens == 4
    rows = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    rows += [f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\ngenerate:\n  n: *i\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expand to more than 100,000 values") as err:
        load_config(bomb)
    assert time.perf_counter() - start < 5 and len(str(err.value)) < 300 and "lol" not in str(err.value)
    loop = tmp_path / "loop.yaml"
    loop.write_text("generate: &x {n: [1, *x]}\n")
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        load_config(loop)


@pytest.mark.parametrize("override", ["seed=yes", "generate.n=true", "generate.temperature=on", "pair.min_margin=no"])
def test_a_boolean_is_not_a_number(override):
    with pytest.raises(ConfigError, match="is a boolean, not a number") as err:
        load_config(TINY, [override])
    assert override.split("=")[0] in str(err.value)
