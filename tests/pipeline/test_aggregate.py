"""Aggregation of judge ensembles and agreement figures on hand-built judgments."""

import math

import pytest

from pipeline.config import load_config
from pipeline.core import schemas
from pipeline.curation.aggregate import agreement, candidate_scores
from pipeline.errors import ConfigError

IDS = {"p": ["p-0", "p-1", "p-2"]}


def j(judge, kind, cid, score, ok=True, consistent=None):
    return {
        "prompt_id": "p",
        "candidate_id": cid,
        "judge": judge,
        "kind": kind,
        "aspect": "a",
        "score": score,
        "ok": ok,
        "position_consistent": consistent,
    }


ROWS = [
    j("A", "absolute", "p-0", 5.0),
    j("A", "absolute", "p-1", 3.0),
    j("A", "absolute", "p-2", 1.0),
    j("R", "reward_model", "p-0", 0.2),
    j("R", "reward_model", "p-1", 0.4),
    j("R", "reward_model", "p-2", -0.6),
    j("P", "pairwise", "p-0|p-1", 0.9, consistent=True),  # p-0 beats p-1
    j("P", "pairwise", "p-0|p-2", 0.8, consistent=False),  # position-inconsistent: a tie
    j("P", "pairwise", "p-1|p-2", 0.2, consistent=True),  # p-2 beats p-1
    j("A", "absolute", "p-9", None, ok=False),
]
TABLE = schemas.from_rows(ROWS, "judgments")


def test_mean_median_of_normalised_scores():
    za = [1.224744871391589, 0.0, -1.224744871391589]  # z of 5, 3, 1
    sd = math.sqrt((0.2**2 + 0.4**2 + 0.6**2) / 3)  # R's mean is 0
    zr = [0.2 / sd, 0.4 / sd, -0.6 / sd]
    got = candidate_scores(TABLE, IDS, "mean_normalised")
    for k in range(3):
        assert got[f"p-{k}"] == pytest.approx((za[k] + zr[k]) / 2)
    assert candidate_scores(TABLE, IDS, "median") == pytest.approx(got)  # two judges: median == mean
    assert candidate_scores(TABLE, IDS, "mean")["p-0"] == pytest.approx((5.0 + 0.2) / 2)


def test_majority_over_pairwise_outcomes():
    # votes (A, R, P): p0 vs p1: (+, -, +) -> +; p0 vs p2: (+, +, tie) -> +; p1 vs p2: (+, +, -) -> +
    got = candidate_scores(TABLE, IDS, "majority")
    assert got == {"p-0": 1.0, "p-1": 0.0, "p-2": -1.0}


def test_bradley_terry_orders_by_wins():
    got = candidate_scores(TABLE, IDS, "bradley_terry")
    assert got["p-0"] > got["p-1"] > got["p-2"] and abs(sum(got.values())) < 1e-9


def test_agreement_figures():
    per_prompt, fig = agreement(TABLE)
    judges = fig["judges"]
    assert judges["P"]["position_consistency"] == pytest.approx(2 / 3, abs=1e-4)  # rounded to 4 places
    assert judges["A"]["failure_rate"] == pytest.approx(0.25) and judges["R"]["position_consistency"] is None
    # Kendall tau-b between A (5,3,1) and R (0.2,0.4,-0.6): pairs C, C, D -> 1/3
    assert fig["kendall_tau"] == {"A ~ R": pytest.approx(1 / 3, abs=1e-4)}
    assert per_prompt["p"] is not None and math.isfinite(per_prompt["p"])
    assert fig["krippendorff_alpha"] == pytest.approx(per_prompt["p"], abs=1e-4)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["judge.reward_models=[/x]"], "reward models have another scale"),
        (["judge.templates=[]"], "no judge configured"),
        (
            ["judge.templates=[]", "judge.pairwise_templates=[pairwise-ab-v1]"],
            "needs an absolute template or a reward model",
        ),
        (["judge.templates=[absolute-9]"], r"judge.templates has unknown ids \['absolute-9'\]"),
    ],
)
def test_judge_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_single_candidate_prompt_has_no_alpha_and_is_dropped_as_too_few_scored():
    """Two judges on a prompt with one candidate: alpha is undefined (it used to be 0.0, a 'low_agreement')."""
    from pipeline.config import PairConfig
    from pipeline.stages.pair import make_pairs

    rows = [
        j("A", "absolute", "p-0", 5.0),
        j("B", "absolute", "p-0", 2.0),
        *(
            {**r, "prompt_id": "q", "candidate_id": r["candidate_id"].replace("p-", "q-")}
            for r in (
                j("A", "absolute", "p-0", 5.0),
                j("A", "absolute", "p-1", 1.0),
                j("B", "absolute", "p-0", 4.0),
                j("B", "absolute", "p-1", 2.0),
            )
        ),
    ]
    judgments = schemas.from_rows(rows, "judgments")
    per_prompt, fig = agreement(judgments)
    assert per_prompt["p"] is None and per_prompt["q"] > 0.5  # q's judges agree on the order
    prompts = schemas.from_rows(
        [{"prompt_id": p, "messages": [{"role": "user", "content": p}]} for p in "pq"], "prompts"
    )
    cands = schemas.from_rows(
        [
            {
                "prompt_id": c[0],
                "candidate_id": c,
                "generator": "g",
                "text": f"text {c}",
                "n_tokens": 2,
                "finish_reason": "stop",
            }
            for c in ("p-0", "q-0", "q-1")
        ],
        "candidates",
    )
    pairs, funnel = make_pairs(
        prompts, cands, judgments, PairConfig(min_margin=0), method="mean_normalised", min_agreement=0.5
    )
    steps = {f["filter"]: (f["rows_in"], f["rows_out"]) for f in funnel}
    assert steps["low_agreement"] == (2, 2) and steps["too_few_scored"] == (2, 1)
    assert [r["prompt_id"] for r in pairs.to_pylist()] == ["q"]


def test_disconnected_comparison_graphs_are_reported():
    # pairwise judge only: on p the p-0|p-2 judgment failed, so p-2 is compared with nobody (not a
    # component: it gets no score); d has two separate pairs {0, 1} and {2, 3}
    rows = [
        j("P", "pairwise", "p-0|p-1", 0.9, consistent=True),
        j("P", "pairwise", "p-0|p-2", None, ok=False),
        {**j("P", "pairwise", "p-0|p-1", 0.8, consistent=True), "prompt_id": "d", "candidate_id": "d-0|d-1"},
        {**j("P", "pairwise", "p-2|p-3", 0.3, consistent=True), "prompt_id": "d", "candidate_id": "d-2|d-3"},
    ]
    _, fig = agreement(schemas.from_rows(rows, "judgments"))
    assert fig["disconnected_prompts"] == 1 and fig["disconnected_prompt_ids"] == ["d"]
    got = candidate_scores(
        schemas.from_rows(rows, "judgments"),
        {"p": ["p-0", "p-1", "p-2"], "d": ["d-0", "d-1", "d-2", "d-3"]},
        "bradley_terry",
    )
    assert "p-2" not in got  # never compared: no score
    assert got["d-0"] == pytest.approx(got["d-3"]) and got["d-0"] > got["d-1"]  # each winner 1-0 in its component
