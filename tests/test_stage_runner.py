"""The declared stage runner (pipeline/core/runner.py): same outputs as the code before it, a new stage costs a
declaration and its work, and the table contracts are enforced."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.core import schemas
from pipeline.core.runner import Chunked, ContractError, Read, Stage
from pipeline.stages.order import STAGES, check_order
from tests.conftest import TINY, assert_same_rows, run_fingerprints

# Built by the code before the stage runner (commit 501c3ca plus a test fix) with
# `prefsynth run --config data/configs/tiny.yaml --out RUN`: every stage table and the pairs shard.
BEFORE = Path(__file__).parent / "fixtures" / "tiny_outputs"
# nullable columns added after the fixture was built (prompts.verify; prompts.turn and pairs.turn, null under the
# default generate.turns 'last')
ADDED_SINCE = {"verify", "turn"}
REVISION = re.compile(r"@[0-9a-f]{12}\b")


def _same_column(name: str, col: str, old: pa.ChunkedArray, new: pa.ChunkedArray) -> None:
    a, b = old.to_pylist(), new.to_pylist()
    if pa.types.is_floating(old.type):  # float math may differ in the last bits on another CPU
        for i, (x, y) in enumerate(zip(a, b)):
            if x is None or y is None:
                same = x is None and y is None
            elif math.isnan(x) or math.isnan(y):
                same = math.isnan(x) and math.isnan(y)
            else:
                same = math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4)  # a margin is a difference of two scores
            assert same, f"{name}.{col} row {i}: {x} before, {y} now"
    else:
        if pa.types.is_string(old.type):  # a model's revision hashes its converted config.json, which names the
            a, b = (_without_revision(a), _without_revision(b))  # transformers version that converted it
        assert_same_rows(b, a, f"{name}.{col}")  # JSON columns (a judge's distribution) to 1e-4 too


def _without_revision(values: list) -> list:
    return [REVISION.sub("@<revision>", v) if isinstance(v, str) else v for v in values]


@pytest.mark.slow
def test_tiny_outputs_are_the_rows_the_code_before_the_stage_runner_wrote(tiny_run):
    files = sorted(BEFORE.glob("*.parquet"))
    assert len(files) >= 12
    for old_path in files:
        name = old_path.name
        shard = name.startswith("pairs-")  # the published shard; the rest are RUN/tables/
        new_path = tiny_run / "pairs" / name.removeprefix("pairs-") if shard else tiny_run / "tables" / name
        old, new = pq.read_table(old_path), pq.read_table(new_path)
        assert old.num_rows == new.num_rows and set(old.schema.names) <= set(new.schema.names), name
        for col in set(new.schema.names) - set(old.schema.names):  # columns added since: null on this input
            assert col in ADDED_SINCE and new.column(col).null_count == new.num_rows, (name, col)
        for col in old.schema.names:
            _same_column(name, col, old.column(col), new.column(col))


# -- a new stage: a declaration and its work -----------------------------------------------------------------


def _prompts(run_dir: Path, n: int = 3) -> None:
    rows = [
        {"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"say {i}"}], "source": "t"} for i in range(n)
    ]
    schemas.write_table(schemas.from_rows(rows, "prompts"), run_dir / "tables" / "prompts.parquet", "prompts")


def _shout(*, fail_on: str | None = None, loads: list | None = None, drop_column: str | None = None) -> Stage:
    """A trivial stage: the prompts with their user turns upper-cased, chunked and checkpointed."""

    def make_work(run):
        if loads is not None:
            loads.append(1)  # where a real stage would load its model

        def work(subset):
            if fail_on in subset.column("prompt_id").to_pylist():
                raise RuntimeError(f"killed at {fail_on}")
            rows = subset.to_pylist()
            for r in rows:
                r["messages"] = [{**m, "content": m["content"].upper()} for m in r["messages"]]
            return schemas.from_rows(rows, "prompts"), {"n": len(rows)}

        return work

    def summarise(run, table, extras):
        run.log(f"shout: {table.num_rows} prompts")
        table = table.drop_columns([drop_column]) if drop_column else table
        return table, {"funnel": [], "parts": len(extras)}

    return Stage(
        name="shout",
        reads=(Read("prompts", "prompts", ("prompt_id", "messages")),),
        writes="prompts",
        after=("prompts",),
        fingerprint=lambda cfg, prompts_fp: f"shout-{prompts_fp}",
        chunked=Chunked(rows="prompts", make_work=make_work, summarise=summarise),
    )


def _cfg():
    return load_config(TINY, overrides=["publish.chunk_prompts=2"])


def test_a_new_stage_runs_resumes_and_is_reused_through_the_runner(tmp_path):
    _prompts(tmp_path)
    loads, logs = [], []
    with pytest.raises(RuntimeError, match="killed at p2"):
        _shout(fail_on="p2").run(tmp_path, _cfg(), "fp1", log=logs.append)
    assert not (tmp_path / "tables" / "shout.parquet").exists()  # nothing committed, the first chunk kept
    meta = _shout(loads=loads).run(tmp_path, _cfg(), "fp1", log=logs.append)
    assert any("resuming, 2 of 3 prompts already done" in m for m in logs)
    assert meta["rows"] == 3 and meta["parts"] == 2 and meta["seconds"] >= 0 and loads == [1]
    table = schemas.read_table(tmp_path / "tables" / "shout.parquet", "prompts")
    assert [m[0]["content"] for m in table.column("messages").to_pylist()] == ["SAY 0", "SAY 1", "SAY 2"]
    again = _shout(loads=loads).run(tmp_path, _cfg(), "fp1", log=logs.append)
    assert again == meta and loads == [1] and "not redone" in logs[-1]  # reused: no model loaded
    _shout(loads=loads).run(tmp_path, _cfg(), "fp2", log=logs.append)  # another upstream fingerprint: redone
    assert loads == [1, 1]
    check_order((*STAGES, _shout()))  # it may follow the pipeline's stages
    with pytest.raises(TypeError, match="stage shout uses stage 'prompts', which does not run before it"):
        check_order((_shout(), *STAGES))


def test_the_pipeline_order_is_checked():
    names = [s.name for s in STAGES]
    assert names.index("prompt_filter") < names.index("generate") < names.index("judge") < names.index("pair")
    by_name = {s.name: s for s in STAGES}
    with pytest.raises(TypeError, match="stage judge uses stage 'generate', which does not run before it"):
        check_order((by_name["prompts"], by_name["judge"], by_name["generate"]))


# -- contracts ------------------------------------------------------------------------------------------------


def test_a_missing_input_column_names_stage_table_and_column(tmp_path):
    (tmp_path / "tables").mkdir()
    pq.write_table(pa.table({"prompt_id": ["p0"]}), tmp_path / "tables" / "prompts.parquet")
    with pytest.raises(ContractError, match=r"stage shout: reads column 'messages' of the prompts table .*prompts\."):
        _shout().run(tmp_path, _cfg(), "fp")


def test_a_missing_input_table_says_which_stage_to_run(tmp_path):
    with pytest.raises(ContractError, match="stage shout: its input .*prompts.parquet .*run the 'prompts' stage"):
        _shout().run(tmp_path, _cfg(), "fp")


def test_committing_without_a_declared_column_fails_and_commits_nothing(tmp_path):
    _prompts(tmp_path)
    with pytest.raises(ContractError, match="stage shout: its prompts table lacks declared output column 'source'"):
        _shout(drop_column="source").run(tmp_path, _cfg(), "fp")
    assert not (tmp_path / "tables" / "shout.json").exists()


def test_reading_an_undeclared_table_fails(tmp_path):
    _prompts(tmp_path)
    stage = Stage(
        name="sneaky",
        reads=(),
        writes="prompts",
        fingerprint=lambda cfg: "fp",
        build=lambda run: (run.read("prompts"), {}),
    )
    with pytest.raises(ContractError, match=r"stage sneaky: reads tables/prompts.parquet, not declared in its reads="):
        stage.run(tmp_path, _cfg())


def test_declaring_a_column_the_schema_lacks_fails_at_declaration():
    with pytest.raises(TypeError, match="stage bad: reads prompts.text, which the prompts schema lacks"):
        Stage(name="bad", reads=(Read("prompts", "prompts", ("text",)),), writes="prompts",
              fingerprint=lambda cfg: "fp", build=lambda run: None)


def test_the_documented_example_stage_runs_as_written(tmp_path):
    """docs/stages.md's worked example ("One way to be a stage"), executed as the module it shows."""
    import types

    page = (Path(__file__).parents[1] / "docs" / "stages.md").read_text()
    code = page.split("# pipeline/stages/flag.py\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("flag")
    exec(compile(code, "docs/stages.md:pipeline/stages/flag.py", "exec"), module.__dict__)
    rows = [
        {"prompt_id": "a", "messages": [{"role": "user", "content": "I want a Refund now"}], "source": "t"},
        {"prompt_id": "b", "messages": [{"role": "user", "content": "hello"}], "source": "t"},
        {"prompt_id": "c", "messages": [{"role": "user", "content": "refund please"}], "source": "t"},
    ]
    table = schemas.from_rows(rows, "prompts")
    schemas.write_table(table, tmp_path / "tables" / "prompt_filter.parquet", "prompts")
    logs = []
    meta = module.STAGE.run(tmp_path, _cfg(), "fp", log=logs.append)
    flagged = schemas.read_table(tmp_path / "tables" / "flag.parquet", "prompts")
    assert flagged.column("prompt_id").to_pylist() == ["a", "c"] and meta["rows"] == 2
    assert "flag: 2 of 3 prompts flagged" in logs
    check_order((*STAGES, module.STAGE))


def test_fingerprints_are_those_of_the_code_before_the_layout_move(pinned_revisions):
    """The bundled configs' config fingerprint and every stage's fingerprint (chained in stage order, as a run's
    tables/<stage>.json record them) equal those the flat layout computed (tests/fixtures/fingerprints_before_layout
    .json, made before the move): moving modules reuses every finished run. A model's revision hashes its converted
    folder, which differs between transformers versions, so it is pinned here on both sides."""
    import json

    before = json.loads((Path(__file__).parent / "fixtures" / "fingerprints_before_layout.json").read_text())
    for name, expected in before.items():
        config, stages = run_fingerprints(load_config(Path(__file__).parents[1] / "data" / "configs" / f"{name}.yaml"))
        assert config == expected["config"], name
        assert stages == expected["stages"], name
