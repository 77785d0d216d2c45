"""A whole run on synthesised prompts (input.path 'synth:'): synth -> prompts -> ... -> pairs, with the
synthesis in the funnel, the manifest and the card, resumable like any stage."""

import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY, cli_in_process, run_cli

pytestmark = pytest.mark.slow
ARGS = ["--set", "input.path=synth:", "--set", "input.synth.mode=topics", "--set", "input.synth.n=6",
        "--set", "input.synth.max_new_tokens=40"]


def test_a_run_on_synthesised_prompts_builds_pairs(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("run", "--config", str(TINY), "--out", str(out), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows"]["pairs"] >= 1 and pq.read_table(out / "pairs").num_rows == m["rows"]["pairs"]
    synth_steps = [f for f in m["funnel"] if f["stage"] == "synth"]
    assert m["funnel"][0]["stage"] == "synth" and synth_steps[0]["rows_in"] == 6
    assert (
        m["prompt_set"]["synth"]["mode"] == "topics"
        and m["prompt_set"]["synth"]["kept"] == synth_steps[-1]["rows_out"]
    )
    assert "synth" in m["stage_fingerprints"]
    prompts = pq.read_table(out / "tables" / "prompts.parquet").to_pylist()
    assert prompts and all(p["source"] == "synth:topics" and p["messages"][-1]["role"] == "user" for p in prompts)
    card = (out / "README.md").read_text()
    assert "## Prompt set" in card and "Synthesised by" in card and "mode `topics`" in card
    again = run_cli("run", "--config", str(TINY), "--out", str(out), *ARGS)
    assert again.returncode == 0 and "synth: complete output exists" in again.stderr


def test_synthesis_cannot_grow_an_incremental_dataset(tmp_path):
    proc = cli_in_process("run", "--config", str(TINY), "--out", str(tmp_path / "grow"), "--incremental", *ARGS)
    assert proc.returncode == 2 and "cannot grow a dataset" in proc.stderr and "Traceback" not in proc.stderr
