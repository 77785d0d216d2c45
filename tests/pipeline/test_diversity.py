"""Diversity figures and the verbalized-sampling reply parser."""

import pytest
import torch

from pipeline.core import schemas
from pipeline.curation.diversity import distinct_n, diversity_by_mode, embedding_distance
from pipeline.sampling.verbalized import parse, request_messages


def test_distinct_n_counts_unique_ngrams():
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["same words", "same words"], 2) == pytest.approx(0.5)
    assert distinct_n(["x"], 2) is None


def test_embedding_distance_is_mean_pairwise_one_minus_cosine():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    # cosines: (1,2)=0, (1,3)=(2,3)=0.7071 -> distances 1, 0.2929, 0.2929
    assert embedding_distance(e) == pytest.approx((1 + 2 * (1 - 0.5 ** 0.5)) / 3, rel=1e-6)
    assert embedding_distance(e[:1]) is None


def test_diversity_by_mode_groups_by_prompt_and_mode():
    def cand(pid, k, text, mode):
        return {"prompt_id": pid, "candidate_id": f"{pid}-{mode}-{k}", "generator": "g", "text": text, "n_tokens": 3,
                "finish_reason": "stop", "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": k,
                                                      "mode": mode}}
    rows = [cand("p", 0, "a b c", "sample"), cand("p", 1, "a b c", "sample"),
            cand("p", 2, "x y z", "verbalized"), cand("p", 3, "u v w", "verbalized"),
            cand("q", 4, "lonely", "verbalized")]  # one candidate: no figure for q
    table = schemas.from_rows(rows, "candidates")
    vectors = {"a b c": [1.0, 0.0], "x y z": [0.0, 1.0], "u v w": [1.0, 0.0]}
    out = diversity_by_mode(table, lambda texts: torch.tensor([vectors[t] for t in texts]))
    assert out["sample"] == {"prompts": 1, "distinct_1": 0.5, "distinct_2": 0.5, "embedding_distance": 0.0}
    assert out["verbalized"] == {"prompts": 1, "distinct_1": 1.0, "distinct_2": 1.0, "embedding_distance": 1.0}


def test_diversity_by_mode_embeds_a_seeded_sample_of_prompts_and_counts_words_over_all():
    rows = [{"prompt_id": f"p{i}", "candidate_id": f"p{i}-{k}", "generator": "g", "text": f"w{i} same", "n_tokens": 2,
             "finish_reason": "stop", "sampling": None} for i in range(6) for k in range(2)]
    embedded = []

    def embed(texts):
        embedded.append(texts)
        return torch.nn.functional.normalize(torch.ones(len(texts), 2), dim=-1)

    table = schemas.from_rows(rows, "candidates")
    out = diversity_by_mode(table, embed, max_prompts=2, seed=3)["sample"]
    assert len(embedded[0]) == 4  # 2 prompts x 2 candidates, not all 12 candidates
    assert out["prompts"] == 6 and out["embedded_prompts"] == 2 and out["distinct_1"] == 0.5
    assert diversity_by_mode(table, embed, max_prompts=2, seed=3)["sample"] == out  # seeded: the same sample
    assert embedded[1] == embedded[0]
    assert "embedded_prompts" not in diversity_by_mode(table, embed, max_prompts=6)["sample"]


def test_parse_reads_tagged_blocks_json_and_tolerates_truncation():
    reply = ("<response><text>Paris is the capital.</text><probability>0.6</probability></response>\n"
             "<response><text>It is Paris.</text><probability>1.7</probability></response>\n"
             "<response><text>Paris is the capital.</text><probability>0.1</probability></response>\n"
             "<response><text>France's capital, Paris")
    assert parse(reply, 5) == [
        ("Paris is the capital.", 0.6),
        ("It is Paris.", None),
        ("France's capital, Paris", None),
    ]
    assert parse(reply, 2) == [("Paris is the capital.", 0.6), ("It is Paris.", None)]
    js = 'Sure: {"responses": [{"text": "A", "probability": 0.5}, {"text": "B"}]}'
    assert parse(js, 3) == [("A", 0.5), ("B", None)]
    assert parse("I cannot do that.", 3) == []


def test_request_rewrites_only_the_last_user_turn():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Name a colour."}]
    out = request_messages(msgs, 4)
    assert out[0] == msgs[0] and out[1]["content"].startswith("List 4 different answers")
    assert out[1]["content"].endswith(": Name a colour.") and len(out) == 2


def test_parse_reads_numbered_and_lettered_lists_as_small_models_write_them():
    # replies of the bundled 135M model to the verbalized-v2 request
    assert parse(
        '1. "Baboon" - (Probability: 0.5, Goodness: 1)\n2. "Bats" - (Probability: 0.999, Goodness: 1)', 3
    ) == [('"Baboon"', 0.5), ('"Bats"', 0.999)]
    assert parse("1. 1. Plan your sleep\n2. 2. Dim the lights", 3) == [
        ("Plan your sleep", None),
        ("Dim the lights", None),
    ]
    assert parse("Sure:\n\nA) Smarti\nB) Muffit\nC) Whisker\nD) Crookie", 3) == [
        ("Smarti", None),
        ("Muffit", None),
        ("Whisker", None),
    ]
    assert parse("1. Go to bed early (probability: 40%)\n2. No screens", 3) == [
        ("Go to bed early", 0.4),
        ("No screens", None),
    ]
