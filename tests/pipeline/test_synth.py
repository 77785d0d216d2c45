"""Prompt synthesis (pipeline/stages/synth.py): Magpie's pre-query text per template family, the filters and
Evol-Instruct's elimination rules on hand-made outputs, the funnel, and each mode on the bundled model."""

import pytest

from pipeline.config import load_config
from pipeline.core import schemas
from pipeline.core.funnel import problems
from pipeline.stages.synth import clean, funnel, pre_query_template, verdict
from tests.conftest import TINY

LLAMA3 = ("{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def test_pre_query_text_of_chatml_and_llama3(tokenizer):
    chatml = pre_query_template(tokenizer, "You are a curious chef.")
    assert chatml == "<|im_start|>system\nYou are a curious chef.<|im_end|>\n<|im_start|>user\n"
    assert pre_query_template(tokenizer).endswith("<|im_end|>\n<|im_start|>user\n")  # the template's default system
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template, tokenizer.bos_token = LLAMA3, "<|begin_of_text|>"
    assert pre_query_template(tokenizer) == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"


@pytest.mark.parametrize(
    "raw,finish,mode,seed,expected",
    [
        ("", "stop", "magpie", None, "empty"),
        ('  "  "  ', "stop", "magpie", None, "empty"),
        ("Tell me about the longest rivers in", "length", "magpie", None, "truncated"),
        ("Sure! Here is a recipe for pancakes.", "stop", "magpie", None, "assistant_like"),
        ("What is 2+2?<|im_start|>assistant\n4", "stop", "magpie", None, "assistant_like"),
        ("As an AI, I can help you plan a trip.", "stop", "topics", None, "assistant_like"),
        ("Lizzy, how might I help you today?", "stop", "magpie", None, "assistant_like"),
        ("No, I cannot rephrase that.", "stop", "topics", None, "assistant_like"),
        ("What an incredible task! Let me think.", "stop", "topics", None, "assistant_like"),
        ("User: How can I help my tomatoes grow faster?", "stop", "topics", None, None),  # a user asking is fine
        ("Why?", "stop", "topics", None, "too_short"),
        ("How do I plant tulip bulbs in autumn?", "stop", "magpie", None, None),
        # Evol-Instruct's elimination rules that need no judge model
        ("Explain photosynthesis to a child", "stop", "evol", "Explain photosynthesis to a child.", "no_change"),
        ("to a child explain photosynthesis", "stop", "evol", "Explain photosynthesis to a child.", "no_change"),
        (
            "In the given prompt, also ask for the cost in euros.",
            "stop",
            "evol",
            "Plan a trip to Rome.",
            "copies_instruction",
        ),
        (
            "Explain the Rewritten Prompt method for travel budgets",
            "stop",
            "evol",
            "Plan a trip.",
            "copies_instruction",
        ),
        (
            "#Rewritten Prompt#: Plan a three-day trip to Rome for a family with a 300 euro budget.",
            "stop",
            "evol",
            "Plan a trip to Rome.",
            None,
        ),  # the label is cleaned off; what is left is a real rewrite
        (
            "Plan a three-day trip to Rome for a family with a 300 euro budget.",
            "stop",
            "evol",
            "Plan a trip to Rome.",
            None,
        ),
    ],
)
def test_filters_drop_what_they_should(raw, finish, mode, seed, expected):
    assert verdict(clean(raw), finish, mode=mode, min_words=3, seed_text=seed) == expected


def test_cleaning_removes_labels_and_quotes():
    assert clean('Request: "How tall is Everest?"') == "How tall is Everest?"
    assert clean("#Rewritten Prompt#: Name three moons of Jupiter.") == "Name three moons of Jupiter."
    assert clean("  What is a prime?  ") == "What is a prime?"


def test_funnel_chains_from_requests_to_kept_prompts():
    reasons = [None, "empty", "truncated", None, "no_change", "copies_instruction", "too_short", None]
    rows = [
        {
            "prompt_id": f"p{i}",
            "slot": f"evol-{i}",
            "messages": [{"role": "user", "content": "x"}],
            "mode": "evol",
            "generator": "g",
            "raw": "x",
            "finish_reason": "stop",
            "dropped": r,
        }
        for i, r in enumerate(reasons)
    ]
    steps = funnel(schemas.from_rows(rows, "synth"), "evol")
    assert [s["filter"] for s in steps] == [
        "empty",
        "truncated",
        "assistant_like",
        "too_short",
        "no_change",
        "copies_instruction",
    ]
    assert steps[0]["rows_in"] == 8 and steps[-1]["rows_out"] == 3 and problems(steps, 3) == []
    assert [s["filter"] for s in funnel(schemas.from_rows(rows[:1], "synth"), "magpie")][-1] == "too_short"


def test_synth_config_fingerprint_only_changes_with_what_it_makes():
    from pipeline.stages import prompts, synth

    base = load_config(TINY, ["input.path=synth:", "input.synth.mode=topics"])
    assert base.input.synthesised and synth.fields(base)["mode"] == "topics"
    same = load_config(
        TINY,
        [
            "input.path=synth:",
            "input.synth.mode=topics",
            "input.synth.batch_size=3",
            "input.synth.seeds=elsewhere.jsonl",
        ],
    )  # operational / another mode's field
    assert synth.fields(same) == synth.fields(base)
    other = load_config(TINY, ["input.path=synth:", "input.synth.mode=topics", "input.synth.topics=[chess]"])
    assert synth.fields(other) != synth.fields(base)
    plain = load_config(TINY)
    assert synth.fields(plain) == {} and "synth" not in prompts.fields(plain)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 200 to 300 s each on a loaded core: 60 generations of 64-160 tokens
@pytest.mark.parametrize("mode", ["magpie", "evol", "topics"])
def test_each_mode_makes_at_least_50_prompts_on_the_bundled_model(tmp_path, mode):
    from pipeline.stages import synth

    cfg = load_config(
        TINY,
        [
            "input.path=synth:",
            f"input.synth.mode={mode}",
            "input.synth.n=96",
            "input.synth.max_new_tokens=64",
            "input.synth.batch_size=32",
        ],
    )
    meta = synth.run(tmp_path, cfg, log=lambda _: None)
    table = schemas.read_table(tmp_path / "tables" / "synth.parquet", "synth")
    kept = [r for r in table.to_pylist() if r["dropped"] is None]
    assert meta["kept"] == len(kept) >= 50, meta["funnel"]
    assert all(r["messages"][-1]["role"] == "user" and r["messages"][-1]["content"].strip() for r in kept)
    assert all(r["mode"] == mode and r["source"] == f"synth:{mode}" and r["generator"] for r in kept)
    if mode == "evol":
        assert all(r["seed_prompt_id"] and r["seed_text"] and r["operation"] for r in kept)
    steps = meta["funnel"]
    assert steps[0]["rows_in"] == 96 and problems(steps, len(kept)) == []
    dropped = {s["filter"]: s["rows_in"] - s["rows_out"] for s in steps}
    assert all(dropped[name] == sum(r["dropped"] == name for r in table.to_pylist()) for name in dropped)
    again = synth.run(tmp_path, cfg, log=lambda _: None)  # complete: reused, same rows
    assert again["fingerprint"] == meta["fingerprint"]
