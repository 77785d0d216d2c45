import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.errors import InputError
from pipeline.stages.prompts import bundled_data_dir, funnel, load_prompts, prompt_id_of
from tests.conftest import write_jsonl

USER = {"role": "user", "content": "hi"}


def cfg(path, **kw):
    return InputConfig(path=str(path), shuffle=False, **kw)


def test_bundled_seed_set_has_200_prompts_over_8_categories():
    table, report = load_prompts(cfg("bundled:prompts/seed.jsonl"))
    cats = Counter(table.column("category").to_pylist())
    assert table.num_rows >= 200 and not report.invalid and report.duplicates == 0
    required = {"advice", "coding", "math", "reasoning", "writing", "factual_qa", "summarisation", "refusal"}
    assert required <= set(cats) and len(cats) >= 8
    assert None not in cats


def test_jsonl_messages_and_prompt_rows(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, USER], "category": "x"},
        "",
        {"prompt": "what is 2+2?", "prompt_id": "mine"},
    ])
    table, _ = load_prompts(cfg(f))
    rows = table.to_pylist()
    assert rows[0]["prompt_id"] == prompt_id_of(rows[0]["messages"]) and rows[0]["category"] == "x"
    assert rows[1] == {"prompt_id": "mine", "messages": [{"role": "user", "content": "what is 2+2?"}],
                       "source": "p.jsonl", "category": None, "reference": None, "verify": None, "turn": None}


@pytest.mark.parametrize(
    "line,problem",
    [
        ('{"messages": [{"role": "user", "content": "a"}', "invalid JSON"),
        ('{"text": "no prompt"}', "neither 'messages' nor 'prompt'"),
        ('{"messages": [{"role": "robot", "content": "a"}]}', "messages[0].role is 'robot'"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
            "last message must have role 'user'",
        ),
        ('{"prompt": "   "}', "'prompt' must be a non-empty string"),
        ('[1, 2]', "expected a JSON object"),
    ],
)
def test_bad_line_names_file_line_and_problem(tmp_path, line, problem):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(InputError) as err:
        load_prompts(cfg(f))
    assert f"{f}:2" in str(err.value) and problem in str(err.value) and "--skip-invalid" in str(err.value)


def test_skip_invalid_counts_rows(tmp_path):
    f = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a"}, "{oops", {"prompt": "b"}, {"prompt": "a"}])
    table, report = load_prompts(cfg(f, skip_invalid=True))
    assert table.num_rows == 2 and len(report.invalid) == 1 and report.duplicates == 1
    assert f"{f}:2" in report.invalid[0]


def test_empty_input_is_an_error(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    with pytest.raises(InputError, match="holds no valid prompts"):
        load_prompts(cfg(f))


def test_all_invalid_with_skip_is_still_an_error(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", ["{nope"])
    with pytest.raises(InputError, match=r"no valid prompts \(1 invalid rows skipped\)"):
        load_prompts(cfg(f, skip_invalid=True))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(cfg(tmp_path / "nope.jsonl"))
    (tmp_path / "p.csv").write_text("prompt\nhi\n")
    with pytest.raises(InputError, match="unknown format '.csv'"):
        load_prompts(cfg(tmp_path / "p.csv"))


def test_parquet_input_names_row_on_error(tmp_path):
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["one", "", "three"]}), f)
    with pytest.raises(InputError, match=r"row 1: 'prompt' must be a non-empty string"):
        load_prompts(cfg(f))
    table, report = load_prompts(cfg(f, skip_invalid=True))
    assert table.column("messages").to_pylist()[1] == [{"role": "user", "content": "three"}]


def test_datasets_folder_input(tmp_path):
    import datasets

    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(
                [
                    {"messages": [USER], "category": "c"},
                    {"messages": [{"role": "user", "content": "yo"}], "category": "d"},
                ]
            )
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    table, _ = load_prompts(cfg(tmp_path / "ds"))
    assert table.column("category").to_pylist() == ["c", "d"]
    with pytest.raises(InputError, match="input.split 'test'"):
        load_prompts(cfg(tmp_path / "ds", split="test"))


def test_shuffle_and_limit_are_seeded(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(30)])
    a, _ = load_prompts(InputConfig(path=str(f), limit=5), seed=3)
    b, _ = load_prompts(InputConfig(path=str(f), limit=5), seed=3)
    c, _ = load_prompts(InputConfig(path=str(f), limit=5), seed=4)
    assert a.equals(b) and not a.equals(c) and a.num_rows == 5


def test_bundled_data_dir_has_configs():
    assert (bundled_data_dir() / "configs" / "default.yaml").exists()
    assert json.loads((bundled_data_dir() / "prompts" / "seed.jsonl").read_text().splitlines()[0])["category"]


def test_non_utf8_file_names_the_line(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin1.jsonl:2: not UTF-8 text"):
        load_prompts(cfg(f))


def test_json_array_file(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"prompt": "a"}, {"messages": [USER]}, {"prompt": ""}]))
    with pytest.raises(InputError, match=r"p.json item 2: 'prompt' must be a non-empty string"):
        load_prompts(cfg(f))
    table, report = load_prompts(cfg(f, skip_invalid=True))
    assert table.num_rows == 2 and len(report.invalid) == 1


def test_reference_answers_are_read_and_checked(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "reference": "4"}, {"prompt": "hi"}])
    table, _ = load_prompts(cfg(f))
    assert table.column("reference").to_pylist() == ["4", None]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "2+2?", "reference": 4}])
    with pytest.raises(InputError, match=r"bad.jsonl:1: 'reference' must be a non-empty string"):
        load_prompts(cfg(bad))


def test_reused_prompt_id_with_other_text_is_an_error_not_a_duplicate(tmp_path):
    f = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"prompt": "a?", "prompt_id": "x"}, {"prompt": "a?", "prompt_id": "x"}, {"prompt": "b?", "prompt_id": "x"}],
    )
    with pytest.raises(InputError, match=rf"{f}:3: prompt_id 'x' was already used by {f}:1 for a different prompt"):
        load_prompts(cfg(f))
    table, report = load_prompts(cfg(f, skip_invalid=True))
    assert table.column("prompt_id").to_pylist() == ["x"] and table.to_pylist()[0]["messages"][0]["content"] == "a?"
    assert report.duplicates == 1 and len(report.conflicts) == 1 and not report.invalid
    from pipeline.stages.prompts import funnel

    steps = {s["filter"]: (s["rows_in"], s["rows_out"]) for s in funnel(report, table.num_rows)}
    assert steps["duplicate_prompts"] == (3, 2) and steps["prompt_id_conflicts"] == (2, 1) and steps["limit"] == (1, 1)


def test_a_non_utf8_line_is_one_invalid_row(tmp_path):
    f = tmp_path / "enc.jsonl"
    f.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n{"prompt": "b"}\n')
    with pytest.raises(InputError, match=rf"{f}:2: not UTF-8"):
        load_prompts(cfg(f))
    table, report = load_prompts(cfg(f, skip_invalid=True))
    assert [m[0]["content"] for m in table.column("messages").to_pylist()] == ["a", "b"]
    assert len(report.invalid) == 1 and ":2: not UTF-8" in report.invalid[0]


def _chat(n: int, *, open_end: bool = False) -> list[dict]:
    """A conversation of n user/assistant exchanges (plus a final unanswered user turn with open_end)."""
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(n):
        msgs += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return msgs + ([{"role": "user", "content": f"q{n}"}] if open_end else [])


def test_turns_all_branches_a_three_turn_conversation_at_each_assistant_turn(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": _chat(3), "prompt_id": "c", "reference": "a2 is right"}])
    table, report = load_prompts(cfg(f), turns="all")
    rows = table.to_pylist()
    assert [r["prompt_id"] for r in rows] == ["c-t0", "c-t1", "c-t2"] and [r["turn"] for r in rows] == [0, 1, 2]
    for t, r in enumerate(rows):  # the history before turn t, ending with the user turn it answers
        assert r["messages"] == _chat(3)[: 2 + 2 * t]
        assert r["messages"][-1] == {"role": "user", "content": f"q{t}"}
    assert [r["reference"] for r in rows] == [None, None, "a2 is right"]  # the reference is the last turn's
    assert report.conversations == 1
    steps = {s["filter"]: s for s in funnel(report, table.num_rows, "all")}
    assert (steps["turns"]["rows_in"], steps["turns"]["rows_out"]) == (1, 3)


def test_turn_indices_pick_turns_and_the_open_turn_counts(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": _chat(2, open_end=True), "prompt_id": "c"},
                                           {"messages": _chat(1), "prompt_id": "d"}])
    table, _ = load_prompts(cfg(f), turns=[1, 2])
    assert [(r["prompt_id"], r["turn"], len(r["messages"])) for r in table.to_pylist()] == [
        ("c-t1", 1, 4), ("c-t2", 2, 6)]  # d has no turn 1 or 2: no prompt
    last, _ = load_prompts(cfg(write_jsonl(tmp_path / "o.jsonl", [{"messages": _chat(2, open_end=True)}])))
    assert last.column("turn").to_pylist() == [None] and len(last.column("messages")[0]) == 6  # as before turns


@pytest.mark.parametrize(
    "messages,turns,problem",
    [
        (_chat(2), [5], "no conversation of input.path"),
        ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}], "all",
         "assistant turn 0 (messages[0]) does not answer a user message"),
        (_chat(1), "last", "last message must have role 'user'"),
    ],
)
def test_bad_turns_are_one_line_errors(tmp_path, messages, turns, problem):
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    with pytest.raises(InputError) as err:
        load_prompts(cfg(f), turns=turns)
    assert problem in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)
