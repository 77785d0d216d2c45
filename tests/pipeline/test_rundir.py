"""Run directories: their kind, the output-folder checks, manifest shape and shard paths."""

import json

import pytest

from pipeline.config import RunConfig
from pipeline.core import schemas
from pipeline.core.rundir import check_kind, check_out_dir, load_manifest, run_kind
from pipeline.errors import InputError
from pipeline.publish.incremental import plan
from tests.conftest import write_jsonl


def test_kind_is_read_from_the_folder(tmp_path):
    assert run_kind(tmp_path / "new") is None
    plain = tmp_path / "plain"
    (plain / "tables").mkdir(parents=True)
    grown = tmp_path / "grown"
    (grown / "increments").mkdir(parents=True)
    killed_first_increment = tmp_path / "killed"
    (killed_first_increment / "increments" / "00001" / "tables").mkdir(parents=True)
    assert (run_kind(plain), run_kind(grown), run_kind(killed_first_increment)) == (
        "plain",
        "incremental",
        "incremental",
    )
    check_kind(plain, incremental=False)
    check_kind(grown, incremental=True)
    with pytest.raises(InputError, match="add --incremental"):
        check_kind(grown, incremental=False)
    with pytest.raises(InputError, match="drop --incremental"):
        check_kind(plain, incremental=True)


def test_out_dir_checks_leave_nothing_behind(tmp_path):
    check_out_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []  # probed, not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(InputError, match="cannot be created"):
        check_out_dir(tmp_path / "f" / "sub")


@pytest.mark.parametrize(
    "manifest,problem",
    [
        ([], "JSON list"),
        ({}, "key 'name'"),
        ({"name": 1}, "key 'name'"),
    ],
)
def test_manifest_of_the_wrong_shape_is_named(tmp_path, manifest, problem):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=problem):
        load_manifest(tmp_path)


def test_edited_prompts_under_old_ids_are_counted_not_silently_skipped(tmp_path):
    out = tmp_path / "out"
    inc = out / "increments" / "00001"
    old = [
        {"prompt_id": "x", "messages": [{"role": "user", "content": "old text"}]},
        {"prompt_id": "y", "messages": [{"role": "user", "content": "same"}]},
    ]
    schemas.write_table(schemas.from_rows(old, "prompts"), inc / "tables" / "prompts.parquet", "prompts")
    (out / "manifest.json").write_text(
        json.dumps({"incremental": True, "shards": [], "increments": [{"id": 1, "dir": "increments/00001"}]})
    )
    src = write_jsonl(
        tmp_path / "src.jsonl",
        [{"prompt": "new text", "prompt_id": "x"}, {"prompt": "same", "prompt_id": "y"}, {"prompt": "brand new"}],
    )
    cfg = RunConfig.model_validate({"input": {"path": str(src), "shuffle": False}})
    todo = plan(out, cfg)
    assert todo.edited == ["x"] and todo.new == 1 and todo.inc_dir == out / "increments" / "00002"
    again = plan(out, cfg)  # a killed increment resumes with the same figures
    assert again.edited == ["x"] and again.new == 1
