"""Online training's sampler (pipeline/train/sample.py) and step plan (pipeline/loop/online.py), without loading
weights: two small Llama models built from a config in memory stand in for the policy and the reference, with the
bundled tokenizer (its chat template)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from pipeline.loop.online import sample_seed, step_prompts
from pipeline.train.sample import next_token_logprobs, prompt_ids, sample

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def _tiny_lm(tokenizer, seed: int, sharpness: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaked next-token distributions: a few thousand draws then estimate them well
        model.lm_head.weight.mul_(sharpness)
    return model


def _own_mixture(policy, ref, ids: list[int], b: float, t: float) -> torch.Tensor:
    """The test's own p(y) proportional to (pi(y)^(1-b) * pi_ref(y)^b)^(1/T), from plain probabilities."""
    with torch.no_grad():
        x = torch.tensor([ids])
        p = torch.softmax(policy(x).logits[0, -1].double(), -1)
        r = torch.softmax(ref(x).logits[0, -1].double(), -1)
    w = (p ** (1 - b) * r ** b) ** (1 / t)
    return w / w.sum()


def _tv(counts: Counter, total: int, dist: torch.Tensor, top: int = 20) -> float:
    """Total variation between the draws and `dist` over `dist`'s `top` likeliest tokens and one bucket for the rest
    (the long tail's sampling noise would swamp a per-token comparison)."""
    keep = torch.topk(dist, top).indices.tolist()
    seen = [counts.get(i, 0) / total for i in keep]
    want = [float(dist[i]) for i in keep]
    return 0.5 * (sum(abs(a - b) for a, b in zip(seen, want)) + abs((1 - sum(seen)) - (1 - sum(want))))


def test_next_token_logprobs_is_the_normalised_geometric_mixture():
    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(3, 50, generator=g) * 3, torch.randn(3, 50, generator=g) * 3
    for b, t in ((0.0, 1.0), (0.25, 1.0), (0.5, 0.7), (1.0, 1.3)):
        p, r = torch.softmax(pol.double(), -1), torch.softmax(ref.double(), -1)
        want = (p ** (1 - b) * r ** b) ** (1 / t)
        want = want / want.sum(-1, keepdim=True)
        got = next_token_logprobs(pol, ref, mixture=b, temperature=t).exp().double()
        assert torch.allclose(got, want, atol=1e-6), (b, t)
    with pytest.raises(ValueError, match="reference"):
        next_token_logprobs(pol, None, mixture=0.5, temperature=1.0)


def test_the_sampler_draws_from_the_documented_mixture_at_the_first_and_a_later_position(tokenizer):
    """Empirical frequencies of 2000 draws against the test's own mixture of the two models' probabilities, at the
    first answer token and at the second (given the commonest first token: the reference's KV cache is in play)."""
    policy, ref = _tiny_lm(tokenizer, 1, 100.0), _tiny_lm(tokenizer, 2, 100.0)
    ids = prompt_ids(tokenizer, MESSAGES, 256)
    b, t, n = 0.5, 1.0, 2000
    answers = sample(policy, ref, tokenizer, MESSAGES, k=n, max_new_tokens=2, temperature=t, mixture=b, seed=7,
                     stops=set())
    first = Counter(a.token_ids[0] for a in answers)
    want = _own_mixture(policy, ref, ids, b, t)
    assert _tv(first, n, want) < 0.06
    assert _tv(first, n, _own_mixture(policy, ref, ids, 0.0, t)) > 0.2  # the draws tell the mixture from the policy
    top = first.most_common(1)[0][0]
    second = Counter(a.token_ids[1] for a in answers if a.token_ids[0] == top)
    m = sum(second.values())
    assert m > 200
    assert _tv(second, m, _own_mixture(policy, ref, ids + [top], 0.0, t)) > 0.2
    assert _tv(second, m, _own_mixture(policy, ref, ids + [top], b, t)) < 0.08


def test_mixture_zero_samples_the_policy_and_draws_are_seeded(tokenizer):
    policy = _tiny_lm(tokenizer, 1, 40.0)
    ids = prompt_ids(tokenizer, MESSAGES, 256)
    a = sample(policy, None, tokenizer, MESSAGES, k=1000, max_new_tokens=1, temperature=1.0, mixture=0.0, seed=3,
               stops=set())
    assert _tv(Counter(x.token_ids[0] for x in a), 1000, _own_mixture(policy, policy, ids, 0.0, 1.0)) < 0.08
    again = sample(policy, None, tokenizer, MESSAGES, k=1000, max_new_tokens=1, temperature=1.0, mixture=0.0, seed=3,
                   stops=set())
    other = sample(policy, None, tokenizer, MESSAGES, k=1000, max_new_tokens=1, temperature=1.0, mixture=0.0, seed=4,
                   stops=set())
    assert [x.token_ids for x in a] == [x.token_ids for x in again]
    assert [x.token_ids for x in a] != [x.token_ids for x in other]


def test_an_answer_ends_at_its_stop_token(tokenizer):
    policy = _tiny_lm(tokenizer, 1, 40.0)
    answers = sample(policy, None, tokenizer, MESSAGES, k=100, max_new_tokens=3, temperature=1.0, mixture=0.0,
                     seed=5, stops=set())
    common = Counter(a.token_ids[0] for a in answers).most_common(1)[0][0]
    cut = sample(policy, None, tokenizer, MESSAGES, k=100, max_new_tokens=3, temperature=1.0, mixture=0.0, seed=5,
                 stops={common})
    ended = [a for a in cut if a.token_ids[0] == common]
    assert ended and all(a.finish_reason == "stop" and a.n_tokens == 0 and a.text == "" and len(a.token_ids) == 1
                         for a in ended)
    assert all(a.finish_reason == "length" and a.n_tokens == 3 for a in cut if common not in a.token_ids)


def test_each_epoch_visits_every_prompt_once_in_a_new_seeded_order():
    n, per = 7, 3
    plan = [step_prompts(n, per, s, seed=0) for s in range(7)]  # 21 positions: three epochs
    flat = [i for step in plan for i in step]
    assert [sorted(flat[e * n:(e + 1) * n]) for e in range(3)] == [list(range(n))] * 3
    assert flat[:n] != flat[n:2 * n]
    assert plan == [step_prompts(n, per, s, seed=0) for s in range(7)]
    assert plan != [step_prompts(n, per, s, seed=1) for s in range(7)]
    assert sample_seed(0, 1, "a") != sample_seed(0, 2, "a") != sample_seed(0, 2, "b")


def test_verifier_labels_pair_the_answer_that_meets_more_constraints_against_one_that_meets_fewer():
    """The online labeller on verifier labels (no model): the 'verified' pair per prompt, chosen scoring higher; a
    prompt whose answers all score alike gives none; judge calls count every checked answer."""
    from pipeline.config import RunConfig
    from pipeline.core import schemas
    from pipeline.loop.online import Labeller

    spec = {"kind": "constraints", "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}},
                                                   {"id": "punctuation:no_comma", "kwargs": {}}]}
    prompts = schemas.from_rows([
        {"prompt_id": p, "messages": [{"role": "user", "content": "Describe rain."}], "verify": json.dumps(spec)}
        for p in ("a", "b")], "prompts")
    texts = {"a": ["rain falls from clouds", "Rain falls, gently", "rain falls, gently"],
             "b": ["Rain, falls", "Clouds, rain"]}
    cands = schemas.from_rows([
        {"prompt_id": p, "candidate_id": f"{p}-{i}", "generator": "m", "text": t, "n_tokens": 4,
         "finish_reason": "stop"} for p, ts in texts.items() for i, t in enumerate(ts)], "candidates")
    pairs, stats = Labeller(RunConfig(), prompts, "verifier")(prompts, cands)
    rows = pairs.to_pylist()
    assert [(r["prompt_id"], r["chosen_id"]) for r in rows] == [("a", "a-0")]
    # strategy 'verified' takes the hardest negative: 'a-2' (one constraint missed), not 'a-1' (both missed)
    assert rows[0]["rejected_id"] == "a-2"
    assert rows[0]["chosen_score"] == 1.0 and rows[0]["rejected_score"] == 0.5
    assert stats["judge_calls"] == 5 and stats["usage"] == []
    with pytest.raises(Exception, match="no prompt of --data carries a `verify` spec"):
        Labeller(RunConfig(), schemas.from_rows([{"prompt_id": "c", "messages": [{"role": "user", "content": "x"}]}],
                                                "prompts"), "verifier")


def test_prompts_sampled_in_one_padded_batch_draw_what_each_draws_alone(tokenizer):
    """Left padding, the attention mask and the positions are right: a short and a long prompt drawn together (the
    short one padded, its positions shifted) give, token for token, the answers each gives alone with its seed, with
    and without the mixture (the reference's cache padded alike)."""
    from pipeline.train.sample import sample_many

    policy, ref = _tiny_lm(tokenizer, 1, 20.0), _tiny_lm(tokenizer, 2, 20.0)
    convs = [MESSAGES, [{"role": "system", "content": "You answer in one short line, with care and no detail."},
                        {"role": "user", "content": "Name a colour that is found in a rainbow, please."}]]
    for b in (0.0, 0.5):
        together = sample_many(policy, ref, tokenizer, convs, k=3, max_new_tokens=5, temperature=1.0, mixture=b,
                               seeds=[11, 12], stops=set())
        alone = [sample(policy, ref, tokenizer, c, k=3, max_new_tokens=5, temperature=1.0, mixture=b, seed=s,
                        stops=set()) for c, s in zip(convs, [11, 12])]
        assert [[a.token_ids for a in x] for x in together] == [[a.token_ids for a in x] for x in alone]
    assert len(prompt_ids(tokenizer, convs[0], 256)) < len(prompt_ids(tokenizer, convs[1], 256))


def test_left_padding_keeps_each_rows_positions():
    from pipeline.train.sample import left_pad

    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos[0].tolist() == [0, 1, 2] and pos[1, -1].item() == 0  # the short row's token at position 0


def test_data_that_is_an_unfinished_run_folder_is_refused_by_name(tmp_path):
    from pipeline.errors import InputError
    from pipeline.loop.online import open_prompts

    (tmp_path / "run" / "tables").mkdir(parents=True)  # a `prefsynth run` stopped before publishing
    with pytest.raises(InputError, match="without manifest.json, so the run has not finished; fix: rerun"):
        open_prompts(tmp_path / "run")
    (tmp_path / "prompts").mkdir()  # a folder of prompt files is still read as prompts
    (tmp_path / "prompts" / "p.jsonl").write_text(json.dumps({"prompt": "Name a colour."}) + "\n")
    assert open_prompts(tmp_path / "prompts")[0].num_rows == 1
