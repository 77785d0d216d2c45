"""Conversation stage: simulated follow-ups grow each input prompt into a multi-turn conversation.

With `sources.conversation.enabled` (pipeline/config/sources.py), before the prompts stage: the policy
(generate.model with generate's sampling) answers the open user turn, then a user simulator (any backend,
`sources.conversation.simulator`) writes the next user turn from the conversation so far, until the
conversation has `user_turns` user turns; it ends with the last, unanswered user turn. The prompts stage
reads these conversations as its source and branches them at `generate.turns` (pipeline/stages/turns.py),
so each pair is a preference over one turn given a simulated history (the simulated-user setup of
multi-turn preference data, e.g. Shani et al. 2024, "Multi-turn Reinforcement Learning from Preference
Human Feedback", and the user simulators of MT-Bench-101 / Parrot).

The simulator's system prompt is SIMULATOR_SYSTEM (template id `user-simulator-v1`), filled with the
configured persona and goal; its request shows the conversation as `USER:` / `ASSISTANT:` lines and asks
for the user's next message only. A reply is cleaned (a leading `USER:` label and wrapping quotes
removed); an empty reply, or an answer or simulated turn that hit the context limit, ends that
conversation early at its last user turn (counted in the funnel). Every request is seeded with a hash of
(run seed, prompt_id, round, role), so a conversation depends on the models and config only.
"""

from __future__ import annotations

import re

from pipeline.backends import factory, resolve_backend_name
from pipeline.backends.base import Request, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.config import RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.runner import Stage, StageRun
from pipeline.sampling.candidate import with_system
from pipeline.stages.prompts import input_identity, load_prompts

VERSION = "1"
TEMPLATE_ID = "user-simulator-v1"
SIMULATOR_SYSTEM = (
    "You play the user in a conversation with an AI assistant. You are {persona}. Your goal: {goal}. "
    "Write only the user's next message: one or two short sentences, in the first person, as the user would "
    "type it. Do not answer for the assistant and do not add labels."
)
LEAD_IN = re.compile(r"^(?:(?:here(?:'s| is)|sure)[^:\n]{0,60}:\s*)?(?:user\s*:\s*)?", re.I)
SIMULATOR_REQUEST = "The conversation so far:\n\n{transcript}\n\nWrite the user's next message."


def _seed(seed: int, prompt_id: str, round_: int, role: str) -> int:
    return int(fingerprint("conversation", seed, prompt_id, round_, role), 16) % (2**63)


def transcript(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages if m["role"] != "system")


def clean(text: str) -> str:
    """A simulated user turn without a lead-in ("Here's my next message:"), role label or wrapping quotes."""
    text = LEAD_IN.sub("", text.strip()).strip()
    if len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return text.strip('"').strip()  # double quotes around it, or opening one left by the token cap


def simulate(seeds: list[dict], cfg: RunConfig, policy, simulator, *, progress=None) -> tuple[list[dict], int]:
    """Pure core: (the seed rows grown into conversations, how many ended early). Each round the policy answers
    every live conversation, then the simulator writes each one's next user turn."""
    c, g = cfg.sources.conversation, cfg.generate
    system = SIMULATOR_SYSTEM.format(persona=c.persona, goal=c.goal)
    rows = [dict(r, messages=list(r["messages"])) for r in seeds]
    live = list(range(len(rows)))
    ended = 0
    for round_ in range(1, c.user_turns):
        answers = policy.generate(
            [Request(with_system(rows[i]["messages"], g.system_prompt),
                     (_seed(cfg.seed, rows[i]["prompt_id"], round_, "assistant"),)) for i in live],
            sampling=SamplingParams(g.temperature, g.top_p, g.max_new_tokens),
            max_prompt_tokens=g.max_prompt_tokens,
            progress=progress,
        )
        answered = [(i, a[0].text.strip()) for i, a in zip(live, answers) if not isinstance(a, Skipped)]
        answered = [(i, text) for i, text in answered if text]
        asks = [
            Request([{"role": "system", "content": system},
                     {"role": "user", "content": SIMULATOR_REQUEST.format(
                         transcript=transcript([*rows[i]["messages"], {"role": "assistant", "content": text}]))}],
                    (_seed(cfg.seed, rows[i]["prompt_id"], round_, "user"),))
            for i, text in answered
        ]
        turns = simulator.generate(
            asks,
            sampling=SamplingParams(c.temperature, 1.0, c.max_new_tokens),
            max_prompt_tokens=g.max_prompt_tokens,
            progress=progress,
        )
        nxt = []
        for (i, answer), turn in zip(answered, turns):
            follow = "" if isinstance(turn, Skipped) else clean(turn[0].text)
            if follow:
                rows[i]["messages"] += [{"role": "assistant", "content": answer}, {"role": "user", "content": follow}]
                nxt.append(i)
        ended += len(live) - len(nxt)
        live = nxt
    return rows, ended


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output (none when it is off)."""
    if not cfg.sources.conversation.enabled:
        return {}
    g = cfg.generate
    return {
        "seed": cfg.seed,
        "input": cfg.input.model_dump(exclude={"skip_invalid", "synth"}),
        "conversation": cfg.sources.conversation.fingerprinted(),
        "policy": g.model_dump(include={"model", "temperature", "top_p", "max_new_tokens", "system_prompt",
                                        "max_prompt_tokens"}),
    }


def stage_fingerprint(cfg: RunConfig, synth_fp: str | None = None) -> str:
    c, g = cfg.sources.conversation, cfg.generate
    source = synth_fp if cfg.input.synthesised else input_identity(cfg.input.path)
    models = [resolve(g.model, field="generate.model").revision,
              resolve(c.simulator or g.model, field="sources.conversation.simulator").revision]
    return fingerprint("conversation", VERSION, TEMPLATE_ID, fields(cfg), source, resolve_backend_name(g.backend),
                       *models)


def _build(run: StageRun):
    cfg, c, g = run.cfg, run.cfg.sources.conversation, run.cfg.generate
    seeds, _ = load_prompts(cfg.input, seed=cfg.seed, run_dir=run.run_dir)
    policy = factory.generator(cfg, g.model, field="generate.model", batch_size=g.batch_size, run=run)
    same = (c.simulator or g.model) == g.model
    simulator = policy if same else factory.generator(cfg, c.simulator, field="sources.conversation.simulator",
                                                      batch_size=c.batch_size, run=run)
    rows, ended = simulate(seeds.to_pylist(), cfg, policy, simulator)
    for r in rows:
        r["source"] = f"conversation:{r['source']}"
    table = schemas.from_rows(rows, "prompts")
    full = table.num_rows - ended
    run.log(f"conversation: {table.num_rows} conversations, {full} with {c.user_turns} user turns")
    return table, {
        "simulator": resolve(c.simulator or g.model).label,
        "policy": policy.label,
        "template": TEMPLATE_ID,
        "user_turns": c.user_turns,
        "ended_early": ended,
        "funnel": [step("conversation", "ended_early", table.num_rows, table.num_rows,
                        f"conversations that reached fewer than sources.conversation.user_turns={c.user_turns} user "
                        f"turns ({ended}: an empty simulated turn or the context limit); they are kept",
                        unit="prompts")],
    }


STAGE = Stage(
    name="conversation",
    reads=(),
    writes="prompts",
    after=lambda cfg: ("synth" if cfg.input.synthesised else None,),
    fields=fields,
    fingerprint=stage_fingerprint,
    build=_build,
    when=lambda cfg: cfg.sources.conversation.enabled,
)
run = STAGE.run
