"""`prefsynth card` and `prefsynth inspect` on a real run directory (copied from the tiny run)."""

import shutil

import pytest

from flows.cli import main

pytestmark = pytest.mark.slow

SECTIONS = ("## Provenance", "## Drop funnel", "## Scores", "## Length bias", "## Judges", "## CHES",
            "## Sample pairs", "## How to train on this", "## Files")
PLOTS = ("scores.png", "margins.png", "length_diff.png", "ln_ches.png")


@pytest.fixture
def run(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def test_card_regenerates_every_section_and_real_plots(run, capsys):
    import matplotlib.image as mpimg
    from huggingface_hub import DatasetCard

    (run / "README.md").unlink()
    shutil.rmtree(run / "plots")
    assert main(["card", str(run)]) == 0
    text = (run / "README.md").read_text()
    for section in SECTIONS:
        assert section in text, section
    for name in PLOTS:
        path = run / "plots" / name
        assert f"](plots/{name})" in text and path.stat().st_size > 5000
        img = mpimg.imread(path)
        assert img.shape[0] > 200 and img.std() > 0.05  # drawn, not blank
    card = DatasetCard(text)
    assert card.data.configs[0]["data_files"][0]["split"] == "train"
    assert "[config.yaml](config.yaml)" in text and (run / "config.yaml").exists()
    assert "prefsynth train --data . --model bundled:smollm2-135m-instruct --out dpo" in text
    assert "Prompts dropped before generation (near_duplicate " in text


def test_config_beside_the_card_reproduces_the_run_config(run):
    import yaml

    from pipeline.config import load_config
    import json

    manifest = json.loads((run / "manifest.json").read_text())
    assert load_config(run / "config.yaml").model_dump() == manifest["config"]["resolved"]
    assert yaml.safe_load((run / "config.yaml").read_text())["generate"]["n"] == 3


def test_inspect_filters_and_samples(run, capsys):
    assert main(["inspect", str(run), "--where", "margin > 0 AND chosen_score > rejected_score", "--sample", "1"]) == 0
    out = capsys.readouterr().out
    assert "drop funnel" in out and "1 pair(s) shown matching" in out and "rationale: The better response" in out
    assert "prompt drops: near_duplicate" in out
    assert main(["inspect", str(run), "--where", "margin < 0"]) == 0
    assert "0 pair(s) shown" in capsys.readouterr().out


def test_inspect_bad_where_names_the_expression(run, capsys):
    assert main(["inspect", str(run), "--where", "margn > 1"]) == 2
    err = capsys.readouterr().err
    assert "--where 'margn > 1' is not a valid filter" in err and "margin" in err


@pytest.mark.parametrize("command", ["card", "inspect"])
def test_missing_shard_is_named(run, capsys, command):
    shard = next((run / "pairs").glob("*.parquet"))
    shard.unlink()
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert f"shard {shard} listed in manifest.json is missing" in err


@pytest.mark.parametrize("command", ["card", "inspect"])
def test_corrupted_shard_is_named(run, capsys, command):
    shard = next((run / "pairs").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert f"shard {shard} is corrupted" in err


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a finished prefsynth run" in capsys.readouterr().err
