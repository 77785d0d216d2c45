"""The training forward on the real bundled model: packed == padded, chunked == full logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.backends.model_ref import resolve
from pipeline.train.logps import build_batch, forward_logps, ld_weights
from pipeline.train.losses import PairLogps, combined_loss

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    path = resolve("bundled:smollm2-135m-instruct").path
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").train()


def _seqs(tokenizer_len=49152):
    g = torch.Generator().manual_seed(1)
    r = lambda n: torch.randint(5, 4000, (n,), generator=g).tolist()  # noqa: E731
    # mixed lengths; a one-token response and a one-token prompt are the edge cases of the position rule
    return [(r(9), r(5)), (r(3), r(17)), (r(14), r(1)), (r(1), r(8)), (r(6), r(6)), (r(11), r(3))]


def _loss_and_grads(model, seqs, *, packed, chunk):
    model.zero_grad(set_to_none=True)
    weights = [None] * len(seqs)
    weights[0], weights[1] = ld_weights(len(seqs[0][1]), len(seqs[1][1]), 0.5)  # LD-DPO weights on one pair
    out = forward_logps(model, build_batch(seqs, packed=packed, token_weights=weights), logit_chunk=chunk)
    lp = out["logp"]
    pairs = PairLogps(lp[0::2], lp[1::2], lp[0::2].detach() + 0.3, lp[1::2].detach() - 0.2,
                      out["tokens"][0::2], out["tokens"][1::2])
    loss, _ = combined_loss(
        pairs,
        {"sigmoid": 1.0, "nll": 0.5},
        beta=0.1,
        label_smoothing=0.0,
        ipo_length_average=True,
        n_pairs=3,
        n_rationales=0,
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), float(loss.detach()), grads


def test_packed_and_padded_give_the_same_loss_and_gradients(policy):
    """float32: loss within 1e-5 relative, the whole gradient within 1e-5 relative (L2). Per parameter,
    float32 summation order alone moves small layer-norm gradients by ~1e-4 (and LM-head chunk sizes
    move the whole gradient by ~4e-5), so exactness of masking and chunking is checked in float64:
    packed with 7-position chunks and padded in one chunk agree to 1e-10 on every parameter."""
    seqs = _seqs()
    lp_pad, loss_pad, g_pad = _loss_and_grads(policy, seqs, packed=False, chunk=1024)
    lp_pack, loss_pack, g_pack = _loss_and_grads(policy, seqs, packed=True, chunk=1024)
    assert torch.allclose(lp_pack, lp_pad, rtol=1e-5, atol=1e-4), (lp_pack, lp_pad)
    assert loss_pack == pytest.approx(loss_pad, rel=1e-5)
    assert g_pack.keys() == g_pad.keys() and len(g_pad) > 10
    flat = lambda g: torch.cat([g[n].flatten() for n in sorted(g)])  # noqa: E731
    assert float((flat(g_pack) - flat(g_pad)).norm() / flat(g_pad).norm()) < 1e-5
    policy.double()
    try:
        _, loss64_pad, g64_pad = _loss_and_grads(policy, seqs, packed=False, chunk=1024)
        _, loss64_pack, g64_pack = _loss_and_grads(policy, seqs, packed=True, chunk=7)  # many LM-head chunks
    finally:
        policy.float()
    assert loss64_pack == pytest.approx(loss64_pad, rel=1e-12)
    worst = max(float((g64_pack[n] - g64_pad[n]).norm() / g64_pad[n].norm()) for n in g64_pad)
    assert worst < 1e-10, worst


@torch.no_grad()
def test_chunked_log_probs_equal_a_full_logits_computation(policy):
    seqs = _seqs()
    out = forward_logps(policy, build_batch(seqs, packed=True), logit_chunk=5, top_k=10)
    for s, (p, r) in enumerate(seqs):
        ids = torch.tensor([p + r])
        logits = policy(input_ids=ids).logits[0].float()
        logprobs = torch.log_softmax(logits[len(p) - 1 : len(p) + len(r) - 1], -1)
        want = logprobs.gather(1, torch.tensor(r).unsqueeze(1)).sum()
        assert float(out["logp"][s]) == pytest.approx(float(want), rel=1e-5, abs=1e-4)
        assert float(out["tokens"][s]) == len(r)
        probs = logprobs.exp()
        top = probs.topk(10, -1).values
        assert float(out["topk_mass"][s]) == pytest.approx(float(top.sum()), rel=1e-4)
        q = top / top.sum(-1, keepdim=True)
        assert float(out["topk_entropy"][s]) == pytest.approx(float(-(q * q.log()).sum()), rel=1e-4)


def test_ld_weights_discount_only_the_longer_tail():
    c, r = ld_weights(3, 5, 0.25)
    assert c == [1.0, 1.0, 1.0] and r == [1.0, 1.0, 1.0, 0.25, 0.25]
