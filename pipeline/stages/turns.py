"""Conversations as prompts: the assistant turns of a multi-turn input to branch at (`generate.turns`).

An input conversation keeps every turn. Its assistant turns are numbered from 0 in order (turn k is the
(k+1)-th assistant message); a conversation that ends with a user message has one more, the open turn
that no one has answered yet. Branching at turn k makes one prompt: the conversation before that turn
(every earlier user and assistant message, ending with the user message turn k answers), so generation,
judging and pairing treat it as any other prompt and the published pair's `prompt` is the full history in
TRL's conversational format (the per-turn pairs of multi-turn DPO, e.g. Xiong et al. 2024, "Building Math
Agents with Multi-Turn Iterative Preference Learning", where the preference is over one turn given the
history before it).

- `last` (the default) answers the conversation as given: it must end with a user turn, the prompt keeps
  its id and `turn` stays null, exactly as before turns existed.
- `all` branches at every assistant turn, the open one included; a list of indices at those turns only.
  Each branch's prompt_id is `<conversation id>-t<k>` and its `turn` is k; a conversation without a picked
  turn contributes no prompt (the prompts funnel's `turns` step counts it). A reference answer or verify
  spec belongs to the conversation's last turn, so earlier branches carry neither.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import schemas
from pipeline.errors import InputError

LAST = "last"


def branch_points(messages: list[dict]) -> list[int]:
    """The message index of every assistant turn: each assistant message, then the open turn (index
    len(messages)) when the conversation ends with a user message."""
    points = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if messages[-1]["role"] == "user":
        points.append(len(messages))
    return points


def picked_turns(turns, n_turns: int) -> list[int]:
    """The turn indices `turns` ('all' or a list) picks among a conversation's `n_turns` assistant turns."""
    return list(range(n_turns)) if turns == "all" else [t for t in turns if t < n_turns]


def branches(row: dict, turns, where: str) -> list[dict]:
    """The prompts-table rows of one validated input row under `generate.turns`; InputError naming `where`
    for a conversation that cannot be branched as asked."""
    messages = row["messages"]
    if turns == LAST:
        if messages[-1]["role"] != "user":
            raise InputError(
                f"{where}: the last message must have role 'user' (it is {messages[-1]['role']!r}); fix: end "
                "the conversation with the user turn to answer, or set generate.turns to 'all' or a list of "
                "assistant turn indices to branch at its assistant turns"
            )
        return [{**row, "turn": None}]
    points = branch_points(messages)
    out = []
    for t in picked_turns(turns, len(points)):
        at = points[t]
        history = messages[:at]
        if not history or history[-1]["role"] != "user":
            before = f"messages[{at - 1}] is {history[-1]['role']!r}" if history else "nothing is before it"
            raise InputError(
                f"{where}: assistant turn {t} (messages[{at}]) does not answer a user message ({before}); fix: "
                "alternate user and assistant turns, or leave this turn out of generate.turns"
            )
        last = t == len(points) - 1
        out.append(
            {
                **row,
                "prompt_id": f"{row['prompt_id']}-t{t}",
                "messages": history,
                "turn": t,
                "reference": row.get("reference") if last else None,
                "verify": row.get("verify") if last else None,
            }
        )
    return out


def alternates(messages: list[dict]) -> bool:
    """True when, after an optional leading system message, user and assistant turns alternate starting
    with a user turn, and the last is a user turn (a prompt ready for the next assistant reply)."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return bool(turns) and all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(turns)) \
        and turns[-1]["role"] == "user"


def with_turns(pairs: pa.Table, prompts: pa.Table) -> pa.Table:
    """`pairs` with each row's `turn` taken from its prompt (every pair source: judged, augmented, critiqued)."""
    turn = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("turn").to_pylist()))
    values = pa.array([turn.get(p) for p in pairs.column("prompt_id").to_pylist()], pa.int32())
    return pairs.set_column(pairs.schema.get_field_index("turn"), schemas.PAIRS.field("turn"), values)


def conversation_ids(prompts: pa.Table) -> list[str] | None:
    """Per prompt, the conversation it branches from (its prompt_id without '-t<k>'); None when no prompt
    branches (generate.turns 'last'), so filters that use it behave as before turns existed."""
    turns = prompts.column("turn").to_pylist()
    if all(t is None for t in turns):
        return None
    ids = prompts.column("prompt_id").to_pylist()
    return [p if t is None else p.removesuffix(f"-t{t}") for p, t in zip(ids, turns)]


def turns_md(pairs: pa.Table) -> str:
    """The card's view of branched conversations: pairs per judged turn and per conversation length (messages
    in the prompt, system included); empty when no pair carries a turn."""
    rows = [(t, len(p)) for t, p in zip(pairs.column("turn").to_pylist(), pairs.column("prompt").to_pylist())]
    rows = [r for r in rows if r[0] is not None]
    if not rows:
        return ""
    by_turn: dict[int, list[int]] = {}
    for t, n in rows:
        by_turn.setdefault(t, []).append(n)
    by_len: dict[int, int] = {}
    for _, n in rows:
        by_len[n] = by_len.get(n, 0) + 1
    lines = ["", "Pairs by the assistant turn they judge (`turn`, 0 is the first reply; generate.turns) and the "
             "length of the conversation before it:", "", "| turn | pairs | prompt messages |", "|---|---|---|",
             *(f"| {t} | {len(ns)} | {min(ns)}-{max(ns)} |" for t, ns in sorted(by_turn.items())), "",
             "| prompt messages | pairs |", "|---|---|", *(f"| {n} | {c} |" for n, c in sorted(by_len.items()))]
    return "\n".join(lines) + "\n"
