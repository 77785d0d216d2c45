"""Trainer input: streaming shards, the truncation rule, the eval split, the shuffle, bad input."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.train import TrainConfig
from pipeline.train.data import encode_row, eval_prompts, examples, open_source, shuffled
from pipeline.train.metrics import INDICATORS, OverOptimisationWatch

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


def test_the_default_runs_size_holds_out_enough_pairs_for_the_watch(tmp_path):
    # the default run: 36 pairs over 36 prompts; eval_fraction 0.1 alone holds out 1 (the watch needs 3)
    cfg = TrainConfig()
    pq.write_table(pa.Table.from_pylist([_row(i, chosen=f"a{i}") for i in range(36)]), tmp_path / "pairs.parquet")
    source = open_source(tmp_path / "pairs.parquet")
    by_fraction = eval_prompts(source, seed=cfg.seed, fraction=cfg.eval_fraction)
    held = eval_prompts(source, seed=cfg.seed, fraction=cfg.eval_fraction, min_pairs=cfg.overopt.min_eval_pairs)
    assert len(by_fraction) < cfg.overopt.min_eval_pairs <= len(held) == 3  # the watch is on, training keeps 33
    assert by_fraction < held  # the fraction's prompts stay; the top-up is the next in hash order
    assert held == eval_prompts(source, seed=cfg.seed, fraction=cfg.eval_fraction, min_pairs=3)  # deterministic
    watch = OverOptimisationWatch(cfg.overopt)
    watch.update(0, {k: {"value": 1.0, "change": 0.0, "se": 0.0} for k in INDICATORS}, eval_pairs=len(held))
    assert watch.active and watch.note() is None
    # enough already: unchanged; too little data (the top-up would pass a quarter of the pairs): no top-up
    assert eval_prompts(source, seed=0, fraction=0.3, min_pairs=3) == eval_prompts(source, seed=0, fraction=0.3)
    pq.write_table(pa.Table.from_pylist([_row(i, chosen=f"a{i}") for i in range(8)]), tmp_path / "small.parquet")
    small = open_source(tmp_path / "small.parquet")
    assert len(eval_prompts(small, seed=0, fraction=0.1, min_pairs=3)) == 2  # 2 of 8 is the quarter
    assert eval_prompts(small, seed=0, fraction=0.0, min_pairs=3) == set()  # no split asked: none
    # several pairs per prompt: whole prompts join, never a part of one
    rows = [_row(i % 12, chosen=f"a{i}") for i in range(36)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "grouped.parquet")
    grouped = eval_prompts(open_source(tmp_path / "grouped.parquet"), seed=0, fraction=0.01, min_pairs=4)
    assert sum(r["prompt_id"] in grouped for r in rows) >= 4 and len(grouped) == 2


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
