"""The stages of a dataset build, in the order they run: the one place that says it.

Each stage is declared next to its logic (`STAGE` in its module, pipeline/core/runner.py says how);
flows/build_dataset.py walks this tuple and then publishes. `check_order` (run at import) makes
sure every stage's inputs and upstream fingerprints come from stages earlier in the tuple.
"""

from __future__ import annotations

from pipeline.core.runner import Stage
from pipeline.stages import ches, generate, judge, pair, prompt_filter, prompts, rationale, self_critique, synth
from pipeline.stages import conversation as simulate

STAGES: tuple[Stage, ...] = (
    synth.STAGE,  # only when input.path is synth: (prompts made by a model)
    simulate.STAGE,  # only with sources.conversation (prompts grown into simulated conversations)
    prompts.STAGE,
    prompt_filter.STAGE,
    self_critique.STAGE,  # a pair source; commits an empty table when off
    generate.STAGE,
    judge.STAGE,
    pair.STAGE,
    ches.STAGE,
    rationale.STAGE,
)


def check_order(stages: tuple[Stage, ...]) -> None:
    """Raise if a stage reads a table, or takes a fingerprint, of a stage that does not run before it."""
    seen: set[str] = set()
    for s in stages:
        static = s.after if not callable(s.after) else ()
        for name in [r.stage for r in s.reads] + list(static):
            if name not in seen:
                raise TypeError(f"stage {s.name} uses stage {name!r}, which does not run before it")
        if s.name in seen:
            raise TypeError(f"stage {s.name} is declared twice")
        seen.add(s.name)


check_order(STAGES)
