"""Synth stage: make the prompt set with a model, for runs whose `input.path` is `synth:`.

Three modes (config `input.synth`, pipeline/config/synth.py), each a seeded request per slot:
- `magpie` (Xu et al. 2024, "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned
  LLMs with Nothing"): the model continues its own chat template's *pre-query* text, i.e. the text
  a chat template puts before a user message, so what it writes is a user query. The pre-query text is
  read off the tokenizer's template (`pre_query_template`: the rendered conversation cut where the
  user content would start), which gives, for ChatML (SmolLM2, Qwen)
  `<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n` and for Llama 3
  `<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n` (plus any system turn the
  template writes). Generation stops at the end-of-turn token. On an OpenAI-compatible server this
  is a completions request (vllm serve), with the tokenizer read from the model reference.
- `evol` (Xu et al. 2023, "WizardLM", Evol-Instruct): a seed prompt is rewritten in depth (add a
  constraint, deepen, concretize, require more reasoning steps) or in breadth (a new prompt of the
  same domain), one operation per slot in turn. Elimination rules of the paper that can be
  checked without a judge model drop a rewrite that is the seed again (`no_change`: same words,
  Jaccard >= 0.9) or that copies the instruction's own words (`copies_instruction`: "rewritten
  prompt", "given prompt", ...); its "response is just sorry" rule needs a response and is left out.
- `topics`: one request per cell of a topic x task type x difficulty grid (shuffled with the seed).
Every output is cleaned (labels such as "Rewritten Prompt:" and wrapping quotes removed) and
filtered, each drop counted in the funnel: `empty`, `truncated` (hit max_new_tokens), `assistant_like`
(an answer or a chat-role marker rather than a user request), `too_short`. The table keeps every
slot with its `dropped` reason (null when kept), mode, operation, seed prompt and generator; the
prompts stage reads the kept rows (`synth:` source) and applies exact dedup, then the prompt
filter its near-duplicate and decontamination rules, as for any input. Resumable in checkpointed
parts of `chunk_requests` slots; requests go through the request log (`requests/synth.jsonl`).
"""

from __future__ import annotations

import re
from itertools import product

import numpy as np
import pyarrow as pa

from pipeline.backends import factory, resolve_backend_name
from pipeline.backends.base import Request, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.config import InputConfig, RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.runner import Chunked, Stage, StageRun
from pipeline.errors import ConfigError
from pipeline.stages.prompts import input_identity, load_prompts, prompt_id_of

VERSION = "1"
TEMPLATE_IDS = {"magpie": "magpie-v1", "evol": "evol-instruct-v1", "topics": "topics-v1"}
EVOL = {
    "constraints": "Add one more constraint or requirement to the prompt below.",
    "deepen": "Make the prompt below ask about the topic in more depth.",
    "concretize": "Replace general ideas in the prompt below with more specific ones.",
    "reasoning": "Rewrite the prompt below so that answering it takes several steps of reasoning.",
    "breadth": "Write a new prompt in the same domain as the prompt below, on a different and rarer topic.",
}
EVOL_REQUEST = ("You rewrite prompts for an AI assistant. {operation} Keep it a request a person could ask, "
                "readable on its own, in one or two sentences. Reply with the new prompt only.\n\nPrompt: {prompt}")
TOPIC_REQUEST = ("Write one {difficulty} {task} that a user might send to an AI assistant about {topic}, in one "
                 "sentence. Reply with the user's message only, without answering it.")
LABEL = re.compile(r"^\s*(?:#*\s*(?:rewritten|new|created|evolved)?\s*(?:prompt|request|question|user(?: message)?)"
                   r"\s*#*\s*:\s*|\**(?:prompt|request)\**\s*:\s*)", re.I)
ASSISTANT_LIKE = re.compile(
    r"^(?:sure\b|certainly\b|of course\b|absolutely\b|as an ai\b|i'?m an ai\b|i am an ai\b|"
    r"here(?:'s| is)\b|i'?d be happy\b|great question\b|what an? (?:great|incredible|wonderful|"
    r"interesting)\b|(?:no, )?i (?:cannot|can'?t|can not|won'?t|am unable)\b)"
    r"|\bhow (?:can|may|might) i (?:help|assist) you\b|<\|im_start\|>|<\|start_header_id\|>|"
    r"\bassistant\s*:",
    re.I,
)
COPIED = re.compile(r"rewritten prompt|given prompt|the prompt (?:above|below)|#\s*prompt|new prompt\s*:", re.I)
FILTERS = ("empty", "truncated", "assistant_like", "too_short", "no_change", "copies_instruction")
REASONS = {
    "empty": "nothing left after cleaning",
    "truncated": "hit input.synth.max_new_tokens",
    "assistant_like": "an answer or a chat-role marker, not a user request",
    "too_short": "fewer words than input.synth.min_words",
    "no_change": "evol: the seed prompt again (word Jaccard >= 0.9)",
    "copies_instruction": "evol: copies the rewriting instruction's words",
}


def pre_query_template(tokenizer, system_prompt: str | None = None) -> str:
    """The chat template's text up to where a user message's content starts."""
    sentinel = "\u0000PREFSYNTH-QUERY\u0000"
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": sentinel}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if sentinel not in text:
        raise ConfigError(
            "input.synth.mode magpie: the model's chat template does not place a user message's text "
            "verbatim; fix: use mode evol or topics with this model"
        )
    return text[: text.index(sentinel)]


def clean(text: str) -> str:
    """A synthesised prompt without labels, wrapping quotes or trailing role text."""
    text = LABEL.sub("", text.strip()).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def verdict(text: str, finish_reason: str, *, mode: str, min_words: int, seed_text: str | None = None) -> str | None:
    """Why a cleaned output is dropped (a FILTERS name, checked in that order), or None to keep it."""
    if not text:
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if ASSISTANT_LIKE.search(text):
        return "assistant_like"
    if len(text.split()) < min_words:
        return "too_short"
    if mode == "evol" and seed_text is not None:
        a, b = _words(text), _words(seed_text)
        if a and b and len(a & b) / len(a | b) >= 0.9:
            return "no_change"
        if COPIED.search(text):
            return "copies_instruction"
    return None


def plan(cfg: RunConfig, tokenizer=None) -> list[dict]:
    """One dict per slot: slot id, the request's messages or raw prefix, and its provenance."""
    s = cfg.input.synth
    rng = np.random.default_rng(int(fingerprint("synth-plan", cfg.seed), 16) % (2**63))
    slots = []
    if s.mode == "magpie":
        prefix = pre_query_template(tokenizer, s.system_prompt)
        for i in range(s.n):
            slots.append(
                {
                    "slot": f"magpie-{i:07d}",
                    "messages": [],
                    "prefix": prefix,
                    "operation": None,
                    "seed_prompt_id": None,
                    "seed_text": None,
                    "category": None,
                }
            )
    elif s.mode == "evol":
        seeds, _ = load_prompts(InputConfig(path=s.seeds, shuffle=True), seed=cfg.seed)
        rows = [r for r in seeds.to_pylist() if r["messages"][-1]["role"] == "user"]
        for i in range(s.n):
            seed_row, op = rows[i % len(rows)], s.operations[i % len(s.operations)]
            text = seed_row["messages"][-1]["content"]
            slots.append(
                {
                    "slot": f"evol-{i:07d}",
                    "prefix": None,
                    "operation": op,
                    "messages": [{"role": "user", "content": EVOL_REQUEST.format(operation=EVOL[op], prompt=text)}],
                    "seed_prompt_id": seed_row["prompt_id"],
                    "seed_text": text,
                    "category": seed_row["category"],
                }
            )
    else:
        grid = list(product(s.topics, s.task_types, s.difficulties))
        order = rng.permutation(len(grid))
        for i in range(s.n):
            topic, task, level = grid[int(order[i % len(grid)])]
            slots.append(
                {
                    "slot": f"topics-{i:07d}",
                    "prefix": None,
                    "operation": f"{task}, {level}",
                    "messages": [
                        {"role": "user", "content": TOPIC_REQUEST.format(difficulty=level, task=task, topic=topic)}
                    ],
                    "seed_prompt_id": None,
                    "seed_text": None,
                    "category": topic,
                }
            )
    return slots


def synthesise(slots: list[dict], backend, cfg: RunConfig, *, progress=None) -> pa.Table:
    """Pure core: the synth table rows of `slots` (kept and dropped), one seeded request each, same order."""
    s = cfg.input.synth
    requests = [
        Request(
            sl["messages"], (int(fingerprint("synth-seed", cfg.seed, sl["slot"]), 16) % (2**63),), prefix=sl["prefix"]
        )
        for sl in slots
    ]
    results = backend.generate(
        requests,
        sampling=SamplingParams(s.temperature, s.top_p, s.max_new_tokens),
        max_prompt_tokens=cfg.generate.max_prompt_tokens,
        progress=progress,
    )
    rows = []
    for sl, result in zip(slots, results):
        raw, finish = ("", "skipped") if isinstance(result, Skipped) else (result[0].text, result[0].finish_reason)
        text = clean(raw)
        dropped = verdict(text, finish, mode=s.mode, min_words=s.min_words, seed_text=sl["seed_text"])
        messages = [{"role": "user", "content": text or raw or "(empty)"}]
        rows.append(
            {
                "prompt_id": prompt_id_of(messages),
                "slot": sl["slot"],
                "messages": messages,
                "source": f"synth:{s.mode}",
                "category": sl["category"],
                "mode": s.mode,
                "operation": sl["operation"],
                "seed_prompt_id": sl["seed_prompt_id"],
                "seed_text": sl["seed_text"],
                "generator": backend.label,
                "raw": raw,
                "finish_reason": finish,
                "dropped": dropped,
            }
        )
    return schemas.from_rows(rows, "synth")


def funnel(table: pa.Table, mode: str) -> list[dict]:
    """Requests -> kept prompts, one step per filter in the order they are checked."""
    reasons = table.column("dropped").to_pylist()
    n = len(reasons)
    out = []
    for name in FILTERS:
        if name in ("no_change", "copies_instruction") and mode != "evol":
            continue
        dropped = reasons.count(name)
        out.append(step("synth", name, n, n - dropped, REASONS[name], unit="prompts"))
        n -= dropped
    return out


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output (none when the input is not synthesised)."""
    return {"seed": cfg.seed, **cfg.input.synth.output_fields()} if cfg.input.synthesised else {}


def stage_fingerprint(cfg: RunConfig) -> str:
    s = cfg.input.synth
    model = resolve(s.model or cfg.generate.model, field="input.synth.model")
    seeds = input_identity(s.seeds) if s.mode == "evol" else None
    return fingerprint(
        "synth",
        VERSION,
        cfg.seed,
        s.output_fields(),
        model.revision,
        resolve_backend_name(cfg.generate.backend),
        seeds,
    )


def _tokenizer(cfg: RunConfig, backend):
    tok = getattr(backend, "tokenizer", None)
    if tok is None:  # an OpenAI-compatible server: the template comes from the model reference
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(resolve(cfg.input.synth.model or cfg.generate.model).path)
    return tok


def _slots(run: StageRun) -> pa.Table:
    """The stage's work units: one row per synthesis request, keyed by slot id (the `prompt_id` column),
    not by the prompts they produce."""
    s = run.cfg.input.synth
    return pa.table({"prompt_id": pa.array([f"{s.mode}-{i:07d}" for i in range(s.n)], pa.string())})


def _make_work(run: StageRun):  # the model loads only when a chunk is left to do
    cfg, s = run.cfg, run.cfg.input.synth
    backend = factory.generator(cfg, s.model or cfg.generate.model, field="input.synth.model",
                                batch_size=s.batch_size, run=run)
    slots = {sl["slot"]: sl for sl in plan(cfg, _tokenizer(cfg, backend) if s.mode == "magpie" else None)}
    return lambda subset: (
        synthesise(
            [slots[k] for k in subset.column("prompt_id").to_pylist()], backend, cfg, progress=run.pbar.advance
        ),
        {},
    )


def _summarise(run: StageRun, table: pa.Table, extras: list[dict]):
    s = run.cfg.input.synth
    steps = funnel(table, s.mode)
    kept = steps[-1]["rows_out"]
    run.log(f"synth: {kept} of {s.n} {s.mode} prompts kept")
    dropped = [r for r in table.select(["dropped", "raw"]).to_pylist() if r["dropped"]]
    examples = {name: [r["raw"][:200] for r in dropped if r["dropped"] == name][:3] for name in FILTERS}
    return table, {
        "mode": s.mode,
        "template": TEMPLATE_IDS[s.mode],
        "model": resolve(s.model or run.cfg.generate.model, field="input.synth.model").label,
        "requests": s.n,
        "kept": kept,
        "funnel": steps,
        "drop_examples": {k: v for k, v in examples.items() if v},
    }


STAGE = Stage(
    name="synth",
    reads=(),
    writes="synth",
    fields=fields,
    fingerprint=stage_fingerprint,
    chunked=Chunked(
        rows=_slots,
        make_work=_make_work,
        summarise=_summarise,
        chunk=lambda run, slots: run.cfg.input.synth.chunk_requests,
        before=factory.opens_request_log(lambda cfg: cfg.generate.request_log),
    ),
    when=lambda cfg: cfg.input.synthesised,  # prompts made by a model, before the prompts stage
    shardable=True,
)
run = STAGE.run
