"""Multi-turn prompts are encoded by one rule (pipeline/core/encoding.py): CHES's log-probs and the trainer's
equal a one-sequence computation written here (the full conversation rendered and tokenised once, the
response's tokens found by character offsets, their log-probs summed), also under a chat template that
rewrites earlier turns (drops reasoning from earlier assistant turns, as Qwen3's and DeepSeek-R1's do)."""

import pytest
import torch

from pipeline.core import schemas
from pipeline.stages.ches import score_pairs
from pipeline.train.data import encode_row
from pipeline.train.logps import build_batch, forward_logps

pytestmark = pytest.mark.slow

HISTORY = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a fruit that is red."},
    {"role": "assistant", "content": "<think>apples are red</think>An apple."},
    {"role": "user", "content": "And one that is yellow?"},
    {"role": "assistant", "content": "<think>bananas</think>A banana."},
    {"role": "user", "content": "Which has more potassium?"},
]
CHOSEN, REJECTED = "The banana has more potassium.", "Apples, clearly."

# ChatML that keeps only the text after </think> in assistant turns before the last message
REWRITING = (
    "{% for m in messages %}{% set c = m['content'] %}"
    "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ c }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@torch.inference_mode()
def one_sequence_logp(model, tokenizer, prompt: list[dict], response: str) -> float:
    """Render prompt + response once; the response tokens are those inside its last assistant turn, up to and
    including its <|im_end|>."""
    text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    start = text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    end = text.index("<|im_end|>", start) + len("<|im_end|>")
    assert text[start:end] == response + "<|im_end|>"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    picked = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= start and b <= end and b > a]
    assert picked == list(range(picked[0], picked[-1] + 1))
    logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[i - 1, ids[i]] for i in picked))


@pytest.mark.parametrize("template", ["bundled", "rewrites_earlier_turns"])
def test_ches_and_trainer_logps_of_a_multi_turn_pair_equal_one_sequence(model, template):
    lm, tokenizer, _ = model
    original = tokenizer.chat_template
    if template != "bundled":
        tokenizer.chat_template = REWRITING
    try:
        row = {"prompt": HISTORY, "chosen": [{"role": "assistant", "content": CHOSEN}],
               "rejected": [{"role": "assistant", "content": REJECTED}], "prompt_id": "c-t2", "chosen_id": "a",
               "rejected_id": "b", "chosen_score": 2.0, "rejected_score": 1.0, "margin": 1.0,
               "pair_strategy": "best_vs_worst", "chosen_len": 1, "rejected_len": 1, "turn": 2}
        want = [one_sequence_logp(lm, tokenizer, HISTORY, text) for text in (CHOSEN, REJECTED)]
        scored = score_pairs(schemas.from_rows([row], "pairs"), lm, tokenizer, batch_size=2).to_pylist()[0]
        assert [scored["ref_chosen_logp"], scored["ref_rejected_logp"]] == pytest.approx(want, abs=2e-3)
        ex = encode_row(tokenizer, row, max_prompt_tokens=4096, max_length=8192)
        assert not ex.truncated
        for packed in (True, False):
            batch = build_batch([(ex.prompt, ex.chosen), (ex.prompt, ex.rejected)], packed=packed)
            with torch.no_grad():
                got = forward_logps(lm, batch)["logp"].tolist()
            assert got == pytest.approx(want, abs=2e-3), packed
    finally:
        tokenizer.chat_template = original
