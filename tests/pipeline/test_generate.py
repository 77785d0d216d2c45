import pytest
import torch

from pipeline.backends.hf import SeededSampler, TransformersBackend
from pipeline.config import GenerateConfig
from pipeline.core import schemas
from pipeline.stages.generate import candidate_seed, generate_candidates

PROMPTS = schemas.from_rows(
    [
        {"prompt_id": "short", "messages": [{"role": "user", "content": "Name a colour."}]},
        {
            "prompt_id": "longer",
            "messages": [{"role": "user", "content": "Write one sentence about the sea and the wind at night."}],
        },
        {
            "prompt_id": "sys",
            "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello?"}],
        },
    ],
    "prompts",
)


def backend(batch_size):
    return TransformersBackend("bundled:smollm2-135m-instruct", batch_size=batch_size)


def test_sampler_greedy_and_tiny_top_p_pick_argmax():
    scores = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    for sampler in (SeededSampler([1, 2], 0.0, 1.0), SeededSampler([1, 2], 1.0, 1e-6)):
        out = sampler(None, scores)
        assert out.argmax(-1).tolist() == [1, 0] and torch.isinf(out).sum() == 4


def test_sampler_matches_the_distribution_and_is_per_row():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().repeat(4000, 1)
    picks = SeededSampler(list(range(4000)), 1.0, 1.0)(None, logits).argmax(-1)
    freq = torch.bincount(picks, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)
    # top_p=0.7 keeps {0.5, 0.3}: token 2 is never drawn, and 0/1 split 5:3
    picks = SeededSampler(list(range(4000)), 1.0, 0.7)(None, logits).argmax(-1)
    freq = torch.bincount(picks, minlength=3).float() / 4000
    assert freq[2] == 0 and abs(freq[0] - 0.625) < 0.03
    # a row's draw depends only on its own seed, not on its neighbours
    a = SeededSampler([7, 8, 9], 1.0, 1.0)(None, logits[:3]).argmax(-1)
    b = SeededSampler([9, 7], 1.0, 1.0)(None, logits[:2]).argmax(-1)
    assert a[0] == b[1] and a[2] == b[0]


@pytest.mark.slow
def test_candidates_table_and_batch_independence():
    cfg = GenerateConfig(n=3, max_new_tokens=12, temperature=0.9)
    one, skipped = generate_candidates(PROMPTS, cfg, backend(1), seed=5)
    three, _ = generate_candidates(PROMPTS, cfg, backend(3), seed=5)
    assert not skipped and one.schema.equals(schemas.CANDIDATES) and one.num_rows == 9
    assert one.column("text").to_pylist() == three.column("text").to_pylist()  # batching never changes a candidate
    rows = one.to_pylist()
    assert [r["candidate_id"] for r in rows[:3]] == ["short-00", "short-01", "short-02"]
    assert rows[1]["sampling"]["seed"] == candidate_seed(5, "short", 1)
    assert all(0 < r["n_tokens"] <= 12 and r["finish_reason"] in {"stop", "length"} for r in rows)
    assert any(r["finish_reason"] == "length" and r["n_tokens"] == 12 for r in rows)
    assert len({r["text"] for r in rows if r["prompt_id"] == "longer"}) > 1  # sampling, not greedy copies
    other, _ = generate_candidates(PROMPTS, cfg, backend(3), seed=6)
    assert other.column("text").to_pylist() != one.column("text").to_pylist()


@pytest.mark.slow
def test_prompt_over_context_budget_is_skipped_with_reason():
    # templated lengths: short 34, longer 42, sys 20 tokens
    cfg = GenerateConfig(n=2, max_new_tokens=4, max_prompt_tokens=36)
    table, skipped = generate_candidates(PROMPTS, cfg, backend(2), seed=0)
    assert skipped == {"longer": "prompt has 42 tokens > generate.max_prompt_tokens=36"}
    assert table.column("prompt_id").to_pylist() == ["short", "short", "sys", "sys"]


@pytest.mark.slow
def test_model_pool_draws_distinct_members_principles_and_sampling_ranges():
    from pipeline.sampling.pools import pool_plan

    m = "bundled:smollm2-135m-instruct"
    cfg = GenerateConfig(
        n=2,
        max_new_tokens=8,
        pool=[
            {"model": m, "system_prompt": "Answer in French.", "temperature": [0.5, 0.9]},
            {"model": m, "system_prompt": "Answer in one word.", "top_p": [0.8, 0.9]},
            {"model": m, "temperature": [1.0, 1.2], "top_p": [0.5, 0.6]},
        ],
    )
    plans = {pid: pool_plan(pid, cfg, 5) for pid in ("short", "longer", "sys", "x", "y")}
    assert all(len({m for m, _, _ in p}) == 2 for p in plans.values())  # k distinct members of m
    assert len({tuple(m for m, _, _ in p) for p in plans.values()}) > 1  # members vary by prompt
    assert plans["short"] == pool_plan("short", cfg, 5) != pool_plan("short", cfg, 6)
    for p in plans.values():
        for member, t, top_p in p:
            lo_t, hi_t = cfg.pool[member].temperature or (cfg.temperature, cfg.temperature)
            lo_p, hi_p = cfg.pool[member].top_p or (cfg.top_p, cfg.top_p)
            assert lo_t <= t <= hi_t and lo_p <= top_p <= hi_p
    b = backend(4)
    seen = []
    real = b.generate
    b.generate = lambda reqs, **kw: seen.extend(reqs) or real(reqs, **kw)
    table, skipped = generate_candidates(PROMPTS, cfg, None, seed=5, backend_for=lambda i: b)
    assert not skipped and table.num_rows == 6 and table.schema.equals(schemas.CANDIDATES)
    rows = table.to_pylist()
    assert all(r["generator"] == b.label for r in rows)
    assert [(r["sampling"]["temperature"], r["sampling"]["top_p"]) for r in rows[:2]] == [
        (t, p) for _, t, p in plans["short"]
    ]
    systems = {r.messages[0]["content"] for r in seen if r.messages[0]["role"] == "system"}
    assert "Answer in French." in systems or "Answer in one word." in systems
    # a prompt with its own system message keeps it: no principle is stacked on top
    assert all(len(r.messages) == 2 for r in seen if r.messages[-1]["content"] == "Hello?")
    with pytest.raises(ValueError, match="pool has 3 members but n=4"):
        GenerateConfig(n=4, pool=cfg.pool)
