import pytest

from judges.pairwise import PairwiseJudge, combine, to_candidates
from pipeline.errors import ConfigError

CONV = [{"role": "user", "content": "What is the capital of France?"}]


def test_swap_back_mapping_both_ways():
    # order 1: x in slot A; order 2: y in slot A
    assert to_candidates(slot_a_wins=True, first_in_slot_a=True) == 1
    assert to_candidates(slot_a_wins=True, first_in_slot_a=False) == -1
    assert to_candidates(slot_a_wins=False, first_in_slot_a=False) == 1
    # x wins in both orders: A in order 1, B in order 2 -> consistent +1
    assert combine(0.8, 0.2) == (1, pytest.approx(0.8), True)
    # y wins in both orders -> consistent -1
    assert combine(0.3, 0.9) == (-1, pytest.approx(0.2), True)
    # slot A wins both times: pure position bias -> inconsistent, a tie
    assert combine(0.8, 0.8) == (0, pytest.approx(0.5), False)
    assert combine(0.1, 0.1) == (0, pytest.approx(0.5), False)


def test_exactly_half_is_no_verdict_and_mirrors_agree():
    # 0.5 used to count as a win for slot B: (0.6, 0.5) was a consistent win for x, its mirror
    # image (0.4, 0.5) an inconsistent tie
    assert combine(0.6, 0.5) == (0, pytest.approx(0.55), False)
    assert combine(0.4, 0.5) == (0, pytest.approx(0.45), False)
    assert combine(0.5, 0.5) == (0, pytest.approx(0.5), True)  # no preference in either order: a consistent tie
    grid = [0.0, 0.2, 0.4999, 0.5, 0.5001, 0.7, 1.0]
    for p1 in grid:
        for p2 in grid:
            o, p, c = combine(p1, p2)
            # the same judgments with the candidates' contents swapped: P(A) becomes 1 - P(A) in each order
            o2, q, c2 = combine(1 - p1, 1 - p2)
            assert (o2, c2) == (-o, c) and q == pytest.approx(1 - p)
            # the same judgments listed as the pair (y, x): the orders trade places
            o3, r, c3 = combine(p2, p1)
            assert (o3, c3) == (-o, c) and r == pytest.approx(1 - p)
            assert o == 0 or c  # a decided outcome is always position-consistent


@pytest.mark.slow
def test_both_orders_on_the_real_model(model):
    m, tok, label = model
    judge = PairwiseJudge(
        m, tok, label, template_id="pairwise-ab-v1", min_mass=0.01, max_input_tokens=2048, batch_size=4
    )
    x, y = "The capital of France is Paris.", "I think it is Berlin."
    forward, backward = judge.judge([(CONV, x, y), (CONV, y, x)])
    assert forward.ok and backward.ok and forward.position_consistent == backward.position_consistent
    assert forward.outcome == -backward.outcome
    assert abs(forward.p_first_wins - (1 - backward.p_first_wins)) < 1e-3
    assert '"p_a_swapped_order"' in forward.raw and judge.id.endswith("#pairwise-ab-v1")


def test_unknown_pairwise_template():
    with pytest.raises(ConfigError, match="judge.pairwise_templates: 'nope'"):  # refused before the model is touched
        PairwiseJudge(None, None, "m", template_id="nope", min_mass=0.01, max_input_tokens=64, batch_size=1)
