"""Token and dollar accounting of requests to OpenAI-compatible endpoints, and the run's budget.

Every request an openai backend sends (prompt synthesis, generation, LLM judges, rationales, served reward models)
reports its input and output tokens: the server's `usage`, or, where a server gives none, the
completion's token count and an input estimate (bytes / 4, marked `estimated`). A stage's `Ledger`
books them per (model, endpoint); each checkpointed part records what its chunk used (`take`), so
a stage's meta sums the parts of every attempt that produced its rows, requests answered from the
request log included (they were paid for by the attempt that logged them). The manifest lists the
tokens per stage, model and endpoint; `prices` (USD per million tokens, per model, user-set) turn
them into dollars at publish time.

Budget (`budget.usd`): before a request is sent the ledger reserves the most it can cost, its input
bounded by its UTF-8 bytes (a byte-level BPE token is at least one byte; 16 tokens per message for
the chat template) plus max_tokens x n output tokens, at the model's prices. If what was spent, what
is in flight and that bound would pass the budget, nothing more is sent: `BudgetExceeded` is raised
once the requests in flight have finished and been logged. Spending starts at what the earlier
stages and this stage's finished parts recorded, so a rerun with a larger budget continues where the
last one stopped and ends with the cost (and rows) of a run without a budget.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import BudgetExceeded

# stages that send requests to endpoints, in flow order
METERED = ("synth", "conversation", "self_critique", "generate", "judge", "rationale")
FIELDS = ("requests", "input_tokens", "output_tokens")


def endpoint_name(base_url: str | None) -> str:
    """The endpoint as recorded: scheme, host, port and path, never credentials or a query string ('batch' for a
    batch runner without a server)."""
    if not base_url:
        return "batch"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def price_of(prices: dict, *names: str | None):
    """The first price listed under any of `names` (the config's model reference, the served name, the label)."""
    for name in names:
        if name and name in prices:
            return prices[name]
        if name and "@" in name and name.rsplit("@", 1)[0] in prices:
            return prices[name.rsplit("@", 1)[0]]
    return None


def usd(price, input_tokens: float, output_tokens: float) -> float:
    if price is None:
        return 0.0
    get = (lambda k: price[k]) if isinstance(price, dict) else (lambda k: getattr(price, k))
    return (input_tokens * get("input") + output_tokens * get("output")) / 1e6


def merge(*row_lists) -> list[dict]:
    """Usage rows ({model, endpoint, requests, input_tokens, output_tokens[, estimated]}) summed per
    (model, endpoint)."""
    out: dict[tuple, dict] = {}
    for rows in row_lists:
        for r in rows or []:
            acc = out.setdefault((r["model"], r["endpoint"]), {"model": r["model"], "served": r.get("served"),
                                                                "endpoint": r["endpoint"], **{k: 0 for k in FIELDS}})
            for k in FIELDS:
                acc[k] += r.get(k) or 0
            if r.get("estimated"):
                acc["estimated"] = True
    return sorted(out.values(), key=lambda r: (r["model"], r["endpoint"]))


def row_price(prices: dict, row: dict):
    return price_of(prices, row["model"], row.get("served"))


def rows_usd(rows: list[dict], prices: dict) -> float:
    return sum(usd(row_price(prices, r), r["input_tokens"], r["output_tokens"]) for r in rows)


def recorded(run_dir, stage: str, parts_info: list[dict]) -> list[dict]:
    """Usage already on disk before `stage` runs: the earlier metered stages' metas and this stage's finished parts."""
    rows = []
    for s in METERED[: METERED.index(stage)]:
        meta = Path(run_dir) / "tables" / f"{s}.json"
        if meta.exists():
            try:
                rows.append(json.loads(meta.read_text()).get("usage") or [])
            except ValueError:  # an unreadable meta is rebuilt by its stage; nothing to count from it
                pass
    return merge(*rows, *(info.get("usage") for info in parts_info))


class Ledger:
    """A stage's meter: reserves before each request (the budget), books each answer (the accounting)."""

    def __init__(self, stage: str, *, prices: dict, budget_usd: float | None, spent: list[dict] | None = None,
                 budget_key: str = "budget.usd", budget_name: str | None = None):
        self.stage, self.prices, self.budget, self.budget_key = stage, prices, budget_usd, budget_key
        self.budget_name = budget_name or budget_key  # where the budget came from, said first in the message
        self.base = spent or []
        self.spent = rows_usd(self.base, prices)
        self.reserved = 0.0
        self.stopped: BudgetExceeded | None = None
        self._chunk: list[dict] = []
        self._lock = threading.Lock()

    @classmethod
    def for_stage(cls, run_dir, cfg, stage: str, parts_info: list[dict]) -> "Ledger":
        return cls(stage, prices=cfg.prices, budget_usd=cfg.budget.usd, spent=recorded(run_dir, stage, parts_info))

    def _price(self, backend):
        return price_of(self.prices, backend.ref, backend.model, backend.label)

    def reserve(self, backend, *, chars: int, max_out: int):
        """A ticket for one request, or BudgetExceeded (latched: once the budget says no, every request gets no)."""
        cost = usd(self._price(backend), chars, max_out)
        with self._lock:
            if self.stopped is not None:
                raise BudgetExceeded(str(self.stopped))
            if self.budget is not None and self.spent + self.reserved + cost > self.budget:
                self.stopped = BudgetExceeded(
                    f"{self.budget_name}={self.budget:g} would be passed: spent ${self.spent:.6f} so far (in flight "
                    f"${self.reserved:.6f}), and the next {self.stage} request to {backend.model!r} at "
                    f"{endpoint_name(backend.base_url)} could cost up to ${cost:.6f}; finished work is kept; fix: "
                    f"raise {self.budget_key} (e.g. --set {self.budget_key}={_suggest(self.budget)}) and rerun the "
                    "same command to continue where this run stopped")
                raise self.stopped
            self.reserved += cost
        return (cost, backend, chars)

    def release(self, ticket, usage: dict | None) -> None:
        """The request ended: drop its reservation and book its usage (None: it failed, nothing to book)."""
        cost, backend, chars = ticket
        with self._lock:
            self.reserved -= cost
        if usage is not None:
            if usage.get("input_tokens") is None:  # a server without usage: an estimate, marked as one
                usage = {**usage, "input_tokens": -(-chars // 4), "estimated": True}
            self.book(backend, usage)

    def book(self, backend, usage: dict) -> None:
        """Count one request's usage (a fresh answer, or one read back from the request log)."""
        row = {"model": backend.label, "served": backend.model, "endpoint": endpoint_name(backend.base_url),
               "requests": 1, "input_tokens": int(usage.get("input_tokens") or 0),
               "output_tokens": int(usage.get("output_tokens") or 0)}
        if usage.get("estimated"):
            row["estimated"] = True
        with self._lock:
            self._chunk = merge(self._chunk, [row])
            self.spent += usd(self._price(backend), row["input_tokens"], row["output_tokens"])

    def take(self) -> list[dict]:
        """Usage booked since the last take (what a checkpointed part records)."""
        with self._lock:
            rows, self._chunk = self._chunk, []
        return rows


def _suggest(budget: float) -> str:
    return f"{budget * 2:.4g}"


def summary(metas: dict[str, dict], prices: dict, budget_usd: float | None) -> dict:
    """The manifest's `usage`: tokens (and dollars where priced) per stage, model and endpoint, and totals.
    `metas` maps a stage to its meta, or to a list of metas (increments of a grown dataset) whose usage is summed."""
    stages = {}
    for s in METERED:
        found = metas.get(s) or {}
        rows = merge(*(m.get("usage") for m in (found if isinstance(found, list) else [found])))
        if rows:
            stages[s] = [{**r, "usd": round(usd(row_price(prices, r), r["input_tokens"], r["output_tokens"]), 6)
                          if row_price(prices, r) is not None else None} for r in rows]
    every = merge(*stages.values())
    total = {k: sum(r[k] for r in every) for k in FIELDS}
    total["usd"] = round(rows_usd(every, prices), 6)
    return {"stages": stages, "total": total, "budget_usd": budget_usd,
            "unpriced_models": sorted({r["model"] for r in every if row_price(prices, r) is None})}
