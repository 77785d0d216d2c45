"""What every candidate source shares: the seed of candidate k, the system prompt, the candidate row.

generate.py (plain sampling), pools.py (model pools), verbalized.py (verbalized sampling) and
self_critique.py (revisions) all make candidates; they import these from here, below all of them,
so none of them imports another (the package has no import cycles: tests/test_imports.py).
"""

from __future__ import annotations

from pipeline.config import fingerprint


def candidate_seed(seed: int, prompt_id: str, k: int) -> int:
    """The seed of a prompt's k-th request: stable across runs, machines and chunkings."""
    return int(fingerprint("candidate-seed", seed, prompt_id, k), 16) % (2**63)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """`messages` with `system_prompt` first, unless the prompt brings its own system turn."""
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def candidate_row(prompt_id: str, candidate_id: str, generator: str, *, text: str, n_tokens: int,
                  finish_reason: str | None, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                  mode: str = "sample", **sampling_extra) -> dict:
    """One row of the candidates table (schemas.CANDIDATES), its sampling settings nested as stored."""
    return {
        "prompt_id": prompt_id,
        "candidate_id": candidate_id,
        "generator": generator,
        "sampling": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
                     "mode": mode, **sampling_extra},
        "text": text,
        "n_tokens": n_tokens,
        "finish_reason": finish_reason,
    }
