"""The `--where` language (pipeline/review/where.py): what the README promises works, nothing reaches a file, and a
filter of any size is refused in milliseconds with the limit named (issue 39)."""

import time

import polars as pl
import pytest

from pipeline.errors import InputError
from pipeline.review.inspect_run import select
from pipeline.review.where import MAX_CHARS, MAX_DEPTH, MAX_TERMS
from tests.conftest import cli_in_process
from tests.hostile import fake_run

FRAME = pl.DataFrame({"margin": [0.2, 1.0, None, 3.0], "chosen_len": [5, 3, 2, 1], "rejected_len": [3, 4, 2, 0],
                      "label": ["flip", None, "reject", "flip"], "prompt": ["Hi there", "a%b", "x", "it's"],
                      "row": [0, 1, 2, 3]})


def rows(where: str) -> list[int]:
    return select(FRAME, where, None)["row"].to_list()


@pytest.mark.parametrize("where, want", [
    ("margin < 0.5 AND chosen_len > rejected_len", [0]),  # README, inspect
    ("margin < 0.5 AND label IS NULL", []),  # README, review
    ("label IS NULL", [1]),
    ("label = 'flip'", [0, 3]),
    ("NOT label = 'flip'", [2]),  # null stays unknown, as in SQL
    ("margin > 0 AND chosen_len >= rejected_len OR label <> 'flip'", [0, 2, 3]),
    ("(margin > 0.5 OR margin IS NULL) AND row % 2 = 1", [1, 3]),
    ("chosen_len IN (1, 3)", [1, 3]),
    ("chosen_len IN (1.0, 3.5)", [3]),
    ("label NOT IN ('flip')", [2]),
    ("prompt LIKE 'Hi%'", [0]),
    ("prompt LIKE 'a\\%b' OR prompt LIKE '_'", [2]),  # no escape clause: `\` is a literal character
    ("prompt ILIKE 'hi %'", [0]),
    ("prompt = 'it''s'", [3]),
    ("margin BETWEEN 0.5 AND 3", [1, 3]),
    ("margin NOT BETWEEN 0.5 AND 3", [0]),
    ("chosen_len - rejected_len >= 2 AND -margin < 0", [0]),
    ("chosen_len / rejected_len > 1", [0, 3]),
    ("abs(margin - 1) < 0.5 OR length(prompt) = 1 OR lower(prompt) = 'hi there'", [0, 1, 2]),
    ('"margin" > 2.5e0', [3]),
    ("margin = NULL", []),
    ("TRUE", [0, 1, 2, 3]),
    ("margin > 0 and label is not null", [0, 3]),
])
def test_the_documented_language_filters_like_sql(where, want):
    assert rows(where) == want


@pytest.mark.parametrize("where, reason", [
    ("margin > (SELECT count(*) FROM read_csv('/etc/hostname'))", "reads other tables"),
    # the case: a quote inside a SQL comment hid the subquery from the old pattern check
    ("margin > 0 -- '\nOR margin > (SELECT 1 FROM read_csv('secret.csv'))", "unexpected '.'"),
    ("margin > 0 /* ' */ OR read_csv('secret.csv') IS NULL", "not a valid filter"),
    ("read_parquet('x.parquet') IS NULL", "reads other tables"),
    ("margin > 0 UNION SELECT 1", "reads other tables"),
    ("foo(margin) > 1", "unknown function 'foo'"),
    ("margn > 1", "no column 'margn'"),
    ("prompt > 1", "compares text with a number"),
    ("margin", "not a condition"),
    ("margin <<< (", "expected a column or a value"),
    ("margin > 0 AND", "at the end"),
    ("label LIKE 3", "quoted pattern"),
    ("margin IN (label)", "literal values"),
    ("prompt + 1 > 0", "+ needs a number"),
])
def test_anything_else_is_refused_with_the_reason(where, reason):
    with pytest.raises(InputError) as err:
        rows(where)
    line = str(err.value)
    assert reason in line and "fix:" in line and "\n" not in line, line


def test_size_bounds_refuse_fast_and_name_the_limit():
    """6,000 ORs crashed polars SQL (SIGSEGV) and 3,000 stalled it for 70 s; now both are refused before polars."""
    cases = {" OR ".join(["margin = 1"] * 6000): f"limit of {MAX_CHARS}",
             " OR ".join(["margin = 1"] * 300): f"more than {MAX_TERMS} columns and values",
             "(" * 40 + "margin > 0" + ")" * 40: f"more than {MAX_DEPTH} levels",
             "NOT " * 40 + "TRUE": f"more than {MAX_DEPTH} levels",
             "-" * 40 + "margin > 0": f"more than {MAX_DEPTH} levels"}
    for where, limit in cases.items():
        start = time.perf_counter()
        with pytest.raises(InputError, match="fix:") as err:
            rows(where)
        assert limit in str(err.value) and len(str(err.value)) < 400 and time.perf_counter() - start < 1
    within = " OR ".join(f"row = {i}" for i in range(MAX_TERMS // 2))  # the largest filter accepted
    assert rows(within) == [0, 1, 2, 3]
    assert rows("row IN (" + ", ".join(map(str, range(1500))) + ")") == [0, 1, 2, 3]  # IN values are not terms


def test_inspect_refuses_hidden_subqueries_and_huge_filters_in_one_line(tmp_path):
    run = fake_run(tmp_path)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    # the quote in the comment opens a string here (no comments in the language): refused either way
    for where, expect in ((f"margin > 0 -- '\nOR margin > (SELECT 1 FROM read_csv('{secret}'))", "not a valid"),
                          (f"margin > (SELECT count(*) FROM read_csv('{secret}'))", "reads other tables"),
                          (" OR ".join(["margin = 1"] * 6000), "over the limit of"),
                          (" OR ".join(["margin = 1"] * 3000), "over the limit of")):
        proc = cli_in_process("inspect", str(run), "--where", where)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0] and "fix:" in lines[0], proc.stderr
    proc = cli_in_process("inspect", str(run), "--where", "margin > 1 AND pair_strategy LIKE 'best%'")
    assert proc.returncode == 0 and "3 pair(s) shown" in proc.stdout, proc.stdout + proc.stderr
