"""The CLI on bad input: one clear message naming the problem, exit status 2, nothing started."""

import pytest

from flows.cli import main
from tests.conftest import TINY, write_jsonl


def run(capsys, *args):
    code = main(["run", "--config", str(TINY), *args])
    return code, capsys.readouterr().err


def test_bad_config_key(capsys, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("generate:\n  n: 2\n  max_new_tokns: 9\n")
    code = main(["run", "--config", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'generate.max_new_tokns'" in err and "max_new_tokens" in err
    assert not (tmp_path / "o").exists()


def test_bad_value_via_set(capsys, tmp_path):
    code, err = run(capsys, "--out", str(tmp_path / "o"), "--set", "generate.temperature=hot")
    assert code == 2 and "generate.temperature" in err and "'hot'" in err


def test_bad_jsonl_line(capsys, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "ok2"}, '{"messages": "nope"}'])
    code, err = run(capsys, "--out", str(tmp_path / "o"), "--set", f"input.path={f}")
    assert code == 2 and f"{f}:3" in err and "'messages' must be a non-empty list" in err


def test_empty_prompt_file(capsys, tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    code, err = run(capsys, "--out", str(tmp_path / "o"), "--set", f"input.path={f}")
    assert code == 2 and "holds no valid prompts" in err


def test_missing_model(capsys, tmp_path):
    code, err = run(capsys, "--out", str(tmp_path / "o"), "--set", f"generate.model={tmp_path}/no-model")
    assert code == 2 and "generate.model:" in err and "no-model" in err


def test_missing_judge_model(capsys, tmp_path):
    code, err = run(capsys, "--out", str(tmp_path / "o"), "--set", "judge.model=bundled:nope")
    assert code == 2 and "judge.model: unknown bundled model" in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    from pipeline.config import describe_keys

    for opt in ("--config", "--out", "--set", "--skip-invalid", "--quiet"):
        assert opt in out
    keys = describe_keys()
    assert len(keys) > 40 and all(line.split(" (default")[0].strip() in out for line in keys)
    assert "curate.ches.quantile (default 0.9): " in out


def test_missing_reward_model_fails_in_preflight(capsys, tmp_path):
    code, err = run(capsys, "--out", str(tmp_path / "o"), "--set", "judge.aggregate=median",
                    "--set", f"judge.reward_models=[{tmp_path}/no-rm]")
    assert code == 2 and "judge.reward_models[0]:" in err and not (tmp_path / "o").exists()


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("prefsynth: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_judge_configs_fail_in_preflight_with_one_line(capsys, tmp_path):
    """An unknown judge backend, a served judge without base_url, a budget without prices, a served model without a
    price, an endpoint that does not answer: exit 2 before anything starts, one line naming the key and the fix."""
    out = str(tmp_path / "o")
    code, err = run(capsys, "--out", out, "--set", "judge.backend=remote")
    line = _one_line(err)
    assert code == 2 and "judge.backend" in line and "'remote'" in line and "'openai'" in line and "fix:" in line
    code, err = run(capsys, "--out", out, "--set", "judge.backend=openai")
    line = _one_line(err)
    assert code == 2 and "judge.openai.base_url: not set" in line and "fix: set it" in line
    code, err = run(capsys, "--out", out, "--set", "budget.usd=5")
    line = _one_line(err)
    assert code == 2 and "budget.usd is 5.0 but no prices are set" in line and "fix: set prices.MODEL.input" in line
    served = ["--set", "judge.backend=openai", "--set", "judge.openai.base_url=http://127.0.0.1:9/v1"]
    code, err = run(capsys, "--out", out, *served, "--set", "budget.usd=5",
                    "--set", "prices={other: {input: 1, output: 2}}")
    line = _one_line(err)
    assert code == 2 and "prices: no price for 'bundled:smollm2-135m-instruct' (served at judge.openai)" in line
    assert "fix: set prices.bundled:smollm2-135m-instruct.input" in line
    code, err = run(capsys, "--out", out, *served)
    line = _one_line(err)
    assert code == 2 and "judge.openai.base_url 'http://127.0.0.1:9/v1' does not answer" in line and "fix:" in line
    assert not (tmp_path / "o").exists()


def test_train_summary_names_the_alarm_and_a_watch_that_could_not_run(capsys):
    from flows.cli.commands import print_train_summary

    alarm = ("top-k entropy decreased: from 1.2270 at step 0, below max(4.31 x noise (z 3 widened to Student's t "
             "for 10 eval pairs), 0.02 x the first value = 0.0245) on 2 evaluation(s) in a row: ...; likely "
             "over-optimisation")
    prov = {"steps": 2, "stopped_early": True, "model": {"path": "OUT/model"},
            "warnings": [{"step": 2, "warning": alarm}],
            "final_eval": {"eval/topk_mass": 0.8, "eval/topk_mass_se": 0.01, "eval/topk_mass_change": -0.1},
            "overopt_watch": {"note": None}}
    print_train_summary(prov, "RUN")
    out = capsys.readouterr().out.splitlines()
    assert out == ["trained 2 steps on RUN (stopped early: train.early_stop); model: OUT/model",
                   "eval: topk_mass=0.8", f"warning at step 2: {alarm}"]
    off = {**prov, "stopped_early": False, "warnings": [],
           "overopt_watch": {"note": "over-optimisation watch off: ..."}}
    print_train_summary(off, "RUN")
    assert capsys.readouterr().out.splitlines()[-1] == "note: over-optimisation watch off: ..."
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "overopt.min_change (default 0.02): " in capsys.readouterr().out
