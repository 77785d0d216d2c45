"""docs/architecture.md stays true: its worked example of a new stage runs as written, and the layers it draws
are the ones tests/test_imports.py enforces."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

from pipeline.config import load_config
from pipeline.core import schemas
from tests.test_imports import LAYERS

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example() -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (code,) = [b for b in blocks if b.startswith("# example: a stage module")]
    module = types.ModuleType("max_chars_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


def test_the_worked_example_stage_commits_its_table_and_reuses_it(tmp_path):
    example = _example()
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": "x" * n}], "source": "test"}
            for i, n in enumerate((10, 2500, 1999, 2001))]
    schemas.write_table(schemas.from_rows(rows, "prompts"), tmp_path / "tables" / "prompts.parquet", "prompts")
    cfg = load_config(None)
    logs: list[str] = []
    meta = example.STAGE.run(tmp_path, cfg, "prompts-fp", log=logs.append)
    kept = schemas.read_table(tmp_path / "tables" / "max_chars.parquet", "prompts")
    assert kept.column("prompt_id").to_pylist() == ["p0", "p2"]
    assert meta["dropped"] == 2 and meta["funnel"][0]["rows_out"] == 2
    assert json.loads((tmp_path / "tables" / "max_chars.json").read_text())["fingerprint"] == meta["fingerprint"]
    assert any("2 prompts over 2000 characters dropped" in line for line in logs)
    logs.clear()
    again = example.STAGE.run(tmp_path, cfg, "prompts-fp", log=logs.append)  # same fingerprint: reused
    assert again["fingerprint"] == meta["fingerprint"] and not any("dropped" in line for line in logs)
    other = example.STAGE.run(tmp_path, cfg, "another-prompts-fp", log=logs.append)  # upstream changed: rerun
    assert other["fingerprint"] != meta["fingerprint"]


def test_the_layers_drawn_are_the_layers_enforced():
    drawn = DOC.read_text().split("## Layers", 1)[1].split("```")[1]
    lines = [line.split("  ")[0].strip() for line in drawn.strip().splitlines()]
    expanded = [{p.strip() if p.strip().startswith(("pipeline", "flows", "judges")) else f"pipeline.{p.strip()}"
                 for p in line.split("|")} for line in lines]
    assert expanded == [set(layer) for layer in LAYERS]
