"""Trainer input: streaming shards, the truncation rule, the eval split, the shuffle, bad input."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.train.data import encode_row, eval_prompts, examples, open_source, shuffled

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer


def _row(i, prompt="What is the capital of France?", chosen="Paris.", rejected="Lyon, I think.", **extra):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "prompt_id": f"p{i}", **extra}


def test_a_run_directory_streams_its_verified_shards(pairs_run, tok):
    source = open_source(pairs_run)
    assert source.manifest is not None and len(source.shards) >= 1
    rows = list(examples(source, tok, max_prompt_tokens=256, max_length=768))
    assert len(rows) == source.manifest["rows"]["pairs"]
    assert all(ex.shard_ref is not None for ex in rows)  # the CHES stage wrote reference log-probs
    assert len({ex.key for ex in rows}) == len(rows)


def test_truncation_keeps_the_prompt_end_and_cuts_responses_at_the_end(tok):
    long_prompt = "word " * 300 + "Final question: why?"
    ex = encode_row(tok, _row(0, prompt=long_prompt, chosen="yes " * 200), max_prompt_tokens=32, max_length=64)
    assert len(ex.prompt) == 32 and ex.truncated
    full_prompt = tok.apply_chat_template(
        _row(0, prompt=long_prompt)["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ex.prompt == list(full_prompt)[-32:]  # the end of the conversation survives
    assert len(ex.chosen) == 32 and ex.chosen[-1] != tok.eos_token_id  # cut at the end: no end-of-turn token
    assert ex.rejected[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # short response kept whole
    short = encode_row(tok, _row(1), max_prompt_tokens=64, max_length=128)  # the template's system prompt counts
    assert not short.truncated
    assert short.key != encode_row(tok, _row(1, chosen="Paris!"), max_prompt_tokens=64, max_length=128).key


def test_eval_split_is_by_prompt_and_never_everything(tmp_path):
    rows = [_row(i % 10, chosen=f"a{i}") for i in range(30)]  # 3 pairs for each of 10 prompts
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    source = open_source(tmp_path / "pairs.parquet")
    held = eval_prompts(source, seed=0, fraction=0.3)
    assert held and held < {f"p{i}" for i in range(10)}
    assert eval_prompts(source, seed=0, fraction=0.3) == held  # stable
    assert eval_prompts(source, seed=0, fraction=0.0) == set()
    assert len(eval_prompts(source, seed=0, fraction=0.01)) == 1  # at least one prompt when asked for a split


def test_shuffle_is_a_seeded_permutation():
    items = list(range(100))
    a = list(shuffled(iter(items), seed=1, epoch=0, buffer=16))
    assert sorted(a) == items and a != items
    assert a == list(shuffled(iter(items), seed=1, epoch=0, buffer=16))
    assert a != list(shuffled(iter(items), seed=1, epoch=1, buffer=16))


def test_bad_inputs_name_the_problem(tmp_path, tok):
    with pytest.raises(InputError, match="not a prefsynth run directory"):
        open_source(tmp_path / "missing")
    pq.write_table(pa.Table.from_pylist([{"prompt": "hi", "answer": "x"}]), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['chosen', 'rejected', 'prompt_id'\]"):
        open_source(tmp_path / "bad.parquet")
    row = _row(0)
    row["chosen"] = [{"role": "user", "content": "not an answer"}]
    with pytest.raises(InputError, match="'chosen' must be a list ending in one assistant message"):
        encode_row(tok, row, max_prompt_tokens=32, max_length=64)


def test_pairs_with_chosen_equal_to_rejected_are_counted_skipped_and_refused_when_all(tmp_path, tok):
    from pipeline.train.data import check_degenerate, count_degenerate

    rows = [_row(0), _row(1, chosen="Same.", rejected="Same."), _row(2)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mixed.parquet")
    source = open_source(tmp_path / "mixed.parquet")
    said = []
    assert count_degenerate(source) == (1, 3) and check_degenerate(source, said.append) == 1
    assert "1 of 3 pairs have chosen == rejected" in said[0]
    assert [ex.prompt_id for ex in examples(source, tok, max_prompt_tokens=64, max_length=128)] == ["p0", "p2"]
    pq.write_table(pa.Table.from_pylist([rows[1]]), tmp_path / "mixed.parquet")
    with pytest.raises(InputError, match="all 1 pairs have chosen == rejected"):
        check_degenerate(open_source(tmp_path / "mixed.parquet"))
