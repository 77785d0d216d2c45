"""pipeline/verifiable/instructions.py: seeded rows, a split by base task, specs the loader and verifier accept, and
the bundled files are what the generator writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judges.constraints import describe
from pipeline.config import InputConfig
from pipeline.stages.prompts import load_prompts
from pipeline.verifiable.instructions import MENU, make, task_of

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "prompts"


def test_rows_are_seeded_split_by_task_and_carry_their_instruction_text():
    train, held = make(3, n_tasks=20, per_task=3)
    assert (train, held) == make(3, n_tasks=20, per_task=3) and (train, held) != make(4, n_tasks=20, per_task=3)
    assert len(train) + len(held) == 60 and len(held) == 18  # 30% of 20 tasks
    assert not {task_of(r) for r in train} & {task_of(r) for r in held}  # no base task on both sides
    for row in train + held:
        spec = row["verify"]
        assert spec["kind"] == "constraints" and 1 <= len(spec["constraints"]) <= 2
        assert row["messages"][0]["content"].endswith(describe(spec["constraints"]))
        groups = [MENU[name][0] for name in row["category"].split("+")]
        assert len(groups) == len(set(groups))  # two constraints never from one group
    with pytest.raises(ValueError, match="unknown constraint type 'nope'.*fix"):
        make(0, mix=["nope"])


def test_the_bundled_files_are_the_generator_output_and_load_as_prompts(tmp_path):
    train, held = make(0)
    for name, rows in (("train", train), ("heldout", held)):
        path = BUNDLED / f"instructions_{name}.jsonl"
        assert [json.loads(line) for line in path.read_text().splitlines()] == rows, (
            "regenerate: python -m pipeline.verifiable.instructions --seed 0 --out-dir data/prompts")
    table, _ = load_prompts(InputConfig(path=str(BUNDLED / "instructions_heldout.jsonl")), seed=0)
    assert table.num_rows == len(held) and table.column("verify").null_count == 0
