"""How a (prompt, response) pair becomes token ids: one rule shared by CHES, the reference
log-probs and the trainer, so the log-probs cached in shards match what training computes.

prompt_ids   = chat template of the prompt messages with the generation prompt
               (for SmolLM2: "...<|im_start|>assistant\\n")
response_ids = the tokens the template adds for the assistant turn, up to and including the
               end-of-turn token (SmolLM2: "<|im_end|>"); the template's trailing newline after it
               is not part of the response.
The prompt is the whole history before the answered turn (a multi-turn prompt of `generate.turns`,
pipeline/stages/turns.py, keeps every earlier user and assistant turn), rendered by the template once
with the response, so a template that rewrites earlier turns (Qwen3 and DeepSeek-R1 drop reasoning from
assistant turns before the last user turn) rewrites them the same way in prompt_ids and in the full
conversation: prompt_ids + response_ids is the full conversation tokenised once
(tests/pipeline/test_encoding.py). If a template renders the answered turn itself differently from its
generation prompt (so the full conversation does not start with prompt_ids), the response is tokenised
on its own and the end-of-turn token appended.
"""

from __future__ import annotations


def _ids(tokenizer, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                              return_dict=False))


def encode_pair(tokenizer, prompt: list[dict], response: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) for one conversation and one assistant response."""
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=True)
    full = _ids(tokenizer, [*prompt, {"role": "assistant", "content": response}], generation_prompt=False)
    eos = tokenizer.eos_token_id
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        response_ids = full[len(prompt_ids):]
        if eos in response_ids:
            response_ids = response_ids[: response_ids.index(eos) + 1]
    else:
        response_ids = tokenizer.encode(response, add_special_tokens=False) + [eos]
    return prompt_ids, response_ids
