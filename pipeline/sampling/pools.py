"""Model pools: each prompt gets its `n` candidates from n distinct members of an m-model pool.

UltraFeedback (Cui et al. 2023) samples 4 of 17 models per prompt so that candidates differ in
quality and style, not only in sampling noise. Here the members drawn for a prompt, and each
request's temperature/top_p when a member gives ranges, come from seeded generators keyed by
(run seed, prompt_id): a candidate depends on the config, never on batching or resumes. A
member's `system_prompt` is its principle (prepended to prompts without a system message).
Requests are grouped by (member, sampling) so each backend gets whole batches.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pipeline.backends.base import Request, SamplingParams, Skipped
from pipeline.sampling.candidate import candidate_row, candidate_seed, with_system


def pool_plan(prompt_id: str, cfg, seed: int) -> list[tuple[int, float, float]]:
    """[(member index, temperature, top_p)] for the prompt's n candidates, in candidate order."""
    rng = np.random.default_rng(candidate_seed(seed, prompt_id, 2000))
    members = rng.permutation(len(cfg.pool))[: cfg.n]
    plan = []
    for m in members:
        member = cfg.pool[int(m)]
        t = round(float(rng.uniform(*member.temperature)), 3) if member.temperature else cfg.temperature
        p = round(float(rng.uniform(*member.top_p)), 3) if member.top_p else cfg.top_p
        plan.append((int(m), t, p))
    return plan


def pool_candidates(
    rows: list[dict], cfg, backend_for, *, seed: int, progress=None
) -> tuple[list[dict], dict[str, str]]:
    """Candidate rows and {prompt_id: skip reason}; `backend_for(member_index)` gives that member's backend."""
    groups: dict[tuple, list] = defaultdict(list)  # (member, temperature, top_p) -> [(row, k, Request)]
    for row in rows:
        for k, (m, t, p) in enumerate(pool_plan(row["prompt_id"], cfg, seed)):
            system = cfg.pool[m].system_prompt or cfg.system_prompt
            req = Request(with_system(row["messages"], system), (candidate_seed(seed, row["prompt_id"], k),))
            groups[(m, t, p)].append((row, k, req))
    found: dict[tuple[str, int], dict] = {}
    skipped: dict[str, str] = {}
    for (m, t, p), items in groups.items():
        backend = backend_for(m)
        sampling = SamplingParams(t, p, cfg.max_new_tokens)
        results = backend.generate(
            [req for _, _, req in items], sampling=sampling, max_prompt_tokens=cfg.max_prompt_tokens, progress=progress
        )
        for (row, k, req), result in zip(items, results):
            if isinstance(result, Skipped):
                skipped[row["prompt_id"]] = f"{cfg.pool[m].model}: {result.reason}"
                continue
            c = result[0]
            found[(row["prompt_id"], k)] = candidate_row(
                row["prompt_id"],
                f"{row['prompt_id']}-{k:02d}",
                backend.label,
                text=c.text,
                n_tokens=c.n_tokens,
                finish_reason=c.finish_reason,
                temperature=t,
                top_p=p,
                max_new_tokens=cfg.max_new_tokens,
                seed=req.seeds[0],
            )
    # a prompt any member skipped is skipped whole: its candidates would not be from n models
    out = [found[(r["prompt_id"], k)] for r in rows if r["prompt_id"] not in skipped for k in range(cfg.n)]
    return out, skipped
