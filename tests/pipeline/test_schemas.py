import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import schemas
from pipeline.errors import SchemaError

PROMPT = {"prompt_id": "p1", "messages": [{"role": "user", "content": "hi"}], "source": "s", "category": None,
          "reference": None, "verify": None, "turn": None}


def test_from_rows_fills_optional_columns_and_checks():
    t = schemas.from_rows([PROMPT], "prompts")
    assert t.schema.equals(schemas.PROMPTS) and t.num_rows == 1


def test_check_names_missing_wrong_type_and_nulls():
    t = pa.table({"prompt_id": pa.array([None], pa.string()), "messages": pa.array([1]), "source": ["s"]})
    with pytest.raises(SchemaError) as err:
        schemas.check(t, "prompts")
    msg = str(err.value)
    assert (
        "missing column 'category'" in msg
        and "missing column 'reference'" in msg
        and "column 'messages' is int64" in msg
        and "'prompt_id' has 1 nulls" in msg
    )


def test_check_rejects_extra_columns():
    t = schemas.from_rows([PROMPT], "prompts").append_column("oops", pa.array([1]))
    with pytest.raises(SchemaError, match=r"unexpected columns \['oops'\]"):
        schemas.check(t, "prompts")


def test_write_is_atomic_and_read_checks(tmp_path):
    path = schemas.write_table(schemas.from_rows([PROMPT], "prompts"), tmp_path / "p.parquet", "prompts")
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]  # no temp file left behind
    assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
    assert schemas.read_table(path, "prompts").to_pylist() == [PROMPT]
    with pytest.raises(SchemaError, match="candidates table does not match"):
        schemas.read_table(path, "candidates")


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(SchemaError):
        schemas.write_table(pa.table({"x": [1]}), tmp_path / "p.parquet", "prompts")
    assert list(tmp_path.iterdir()) == []


def test_judgments_of_an_earlier_version_read_with_a_null_score_mode(tmp_path):
    """A judge table written before score_mode existed (an old run directory) still reads: the column is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pa.schema([f for f in schemas.JUDGMENTS if f.name != "score_mode"])
    rows = [
        {
            "prompt_id": "p",
            "candidate_id": "c",
            "judge": "j",
            "kind": "absolute",
            "aspect": "overall",
            "score": 3.0,
            "rationale": None,
            "raw": "{}",
            "ok": True,
            "position_consistent": None,
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), tmp_path / "judge.parquet")
    table = schemas.read_table(tmp_path / "judge.parquet", "judgments")
    assert table.schema.equals(schemas.JUDGMENTS) and table.column("score_mode").to_pylist() == [None]
    with pytest.raises(SchemaError, match="missing column .ok."):
        schemas.check(pa.Table.from_pylist(rows).drop(["ok"]), "judgments")
