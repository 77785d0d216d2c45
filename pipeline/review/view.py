"""What `prefsynth review` shows, as plain functions over a run; flows/review/app.py only renders them.

- `ReviewView(run_dir)` verifies the run like every reader (pipeline/core/rundir.py) and loads its pairs
  as the pipeline built them, before review (pipeline/review/labels.py `sources`), once, as one flat polars
  frame: the columns of `prefsynth inspect --where` plus `pair_id`, `label` (the latest verdict, or
  null) and `row`. Labels are re-read when a file under RUN/reviews/ changes (another reviewer's
  server may append too).
- `page`: the filter (inspect's language, pipeline/review/where.py: parsed, bounded), sort and slice happen
  here, on the server; only one page of rows, with texts cut short, goes to the browser. The filtered and sorted
  order is cached per (filter, sort, labels), so paging through a filter is one slice
  (bench/review.py: 100k pairs).
- `pair`: one pair in full, every judgment of its two candidates (pairwise verdicts included) and
  its label history.
- `unpaired`: prompts that produced no pair, their candidates and the funnel step that dropped
  them. The reason comes from running the pair stage's own pure core (`pair.pairs_from_scores`) on
  that prompt alone, so it is the stage's rule, not a second copy of it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.compute as pc

from pipeline.config import PairConfig
from pipeline.core import schemas
from pipeline.core.rundir import load_manifest, verify_shards
from pipeline.errors import InputError
from pipeline.review import labels as review
from pipeline.review.inspect_run import FLAT_COLUMNS, flat_pairs, select
from pipeline.stages.pair import pairs_from_scores

SORTABLE = ("row", "prompt_id", "chosen_score", "rejected_score", "margin", "ches", "ln_ches", "ref_chosen_logp",
            "ref_rejected_logp", "chosen_len", "rejected_len", "pair_strategy", "label")
LIST_COLUMNS = ("pair_id", "prompt_id", "prompt", "chosen_score", "rejected_score", "margin", "ln_ches", "chosen_len",
                "rejected_len", "pair_strategy", "label")
SNIPPET = 140


@dataclass
class Page:
    rows: list[dict]
    total: int  # pairs matching the filter
    page: int
    pages: int


def _snip(text: str | None, n: int = SNIPPET) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


class ReviewView:
    def __init__(self, run_dir):
        self.run = Path(run_dir)
        self.manifest = load_manifest(self.run)
        parent = self.run.resolve().parent
        if parent.name == "increments" and (parent.parent / "manifest.json").is_file():
            raise InputError(f"{run_dir} is one increment of a growing dataset; fix: review the dataset folder, "
                             f"`prefsynth review {parent.parent}`")
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self._load()

    def _load(self) -> None:
        """(Re)load the pairs before review; the manifest is re-read when `prefsynth card` / `run` rewrites it."""
        self._manifest_stamp = self._file_stamp(self.run / "manifest.json")
        verify_shards(self.run, self.manifest)
        self.sources = review.sources(self.run, self.manifest)
        self.pairs = schemas.concat([s.pairs for s in self.sources], "pairs")
        ids = review.pair_ids(self.pairs)
        self.index = {pid: i for i, pid in enumerate(ids)}
        self.source_of = [k for k, s in enumerate(self.sources) for _ in range(s.pairs.num_rows)]
        self.base = flat_pairs(self.pairs).with_columns(pl.Series("pair_id", ids, dtype=pl.String),
                                                        pl.Series("row", range(len(ids)), dtype=pl.Int64))
        self._judgments: dict[int, pl.DataFrame | None] = {}
        self.__dict__.pop("_unpaired", None)
        self._stamp = None
        self.refresh()

    @staticmethod
    def _file_stamp(path: Path):
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    # -- labels ----------------------------------------------------------------------------------------
    def _label_stamp(self):
        folder = self.run / review.FOLDER
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.jsonl"))) \
            if folder.is_dir() else ()

    def refresh(self) -> None:
        """Re-read the labels when a label file changed since the last read, and the manifest (and, when
        what it was published from changed, the pairs) when it was rewritten."""
        with self._lock:  # the app filters in worker threads (`ordered`)
            self._refresh()

    def _refresh(self) -> None:
        if self._file_stamp(self.run / "manifest.json") != self._manifest_stamp:
            old, self.manifest = self.manifest, load_manifest(self.run)
            keys = ("increments", "stage_fingerprints")
            if any(old.get(k) != self.manifest.get(k) for k in keys):
                return self._load()
            self._manifest_stamp = self._file_stamp(self.run / "manifest.json")
        stamp = self._label_stamp()
        if stamp == self._stamp:
            return
        self.log = review.read(self.run)
        self.verdicts = review.latest(self.log.labels)
        labels = pl.DataFrame({"pair_id": list(self.verdicts), "label": [v.verdict for v in self.verdicts.values()]},
                              schema={"pair_id": pl.String, "label": pl.String})
        self.frame = self.base.join(labels, on="pair_id", how="left").sort("row")
        self._cache.clear()
        self._agreement = None
        self._stamp = stamp

    def add_label(self, reviewer: str, pid: str, verdict: str, note: str = "") -> review.Label:
        row = self.pairs.slice(self.index[pid], 1).select(["prompt_id", "chosen_id", "rejected_id",
                                                            "pair_strategy"]).to_pylist()[0]
        label = review.new_label(reviewer, row, verdict, note)
        review.append(self.run, label)
        self.refresh()
        return label

    def pending(self) -> bool:
        """Labels on disk that the published shards do not reflect yet."""
        return self.log.digest != ((self.manifest.get("review") or {}).get("labels_sha256") or "")

    def agreement(self) -> dict:
        """Judges against the labels so far (pipeline/review/labels.py `agreement`), cached until labels change."""
        if self._agreement is None:
            self._agreement = review.agreement(self.log.labels, self.pairs, review.judgments(self.sources))
        return self._agreement

    # -- the pairs table -------------------------------------------------------------------------------
    def ordered(self, where: str | None, sort: str = "row", desc: bool = False) -> pl.DataFrame:
        """The frame filtered (pipeline/review/where.py) and sorted, cached. The app calls this from worker threads:
        the lock guards the cache and the labels' reload, never the filtering, so one slow filter blocks no other
        request."""
        if sort not in SORTABLE:
            raise InputError(f"sort column {sort!r} is not one of {', '.join(SORTABLE)}; fix: pick one of them")
        with self._lock:
            self.refresh()
            key = ((where or "").strip(), sort, desc, self._stamp)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            frame = self.frame
        df = select(frame, key[0] or None, None)
        df = df.sort([sort, "row"], descending=[desc, False], nulls_last=True)
        with self._lock:
            self._cache[key] = df
            if len(self._cache) > 8:
                self._cache.popitem(last=False)
        return df

    def page(self, *, where: str | None = None, sort: str = "row", desc: bool = False, page: int = 1,
             size: int = 50) -> Page:
        df = self.ordered(where, sort, desc)
        size = min(max(size, 1), 500)
        pages = max(1, -(-df.height // size))
        page = min(max(page, 1), pages)
        rows = df.slice((page - 1) * size, size).select(LIST_COLUMNS).to_dicts()
        for r in rows:
            r["prompt"] = _snip(r["prompt"])
        return Page(rows, df.height, page, pages)

    def neighbours(self, pid: str, where: str | None, sort: str,
                   desc: bool) -> tuple[str | None, str | None, int, int]:
        """(previous pair_id, next pair_id, 1-based position, total) of `pid` in the filtered order."""
        ids = self.ordered(where, sort, desc)["pair_id"]
        pos = ids.index_of(pid)
        if pos is None:
            return None, (ids[0] if ids.len() else None), 0, ids.len()
        return (ids[pos - 1] if pos > 0 else None), (ids[pos + 1] if pos + 1 < ids.len() else None), pos + 1, ids.len()

    # -- one pair ---------------------------------------------------------------------------------------
    def _judge(self, k: int) -> pl.DataFrame | None:
        if k not in self._judgments:
            path = self.sources[k].tables / "judge.parquet"
            self._judgments[k] = pl.from_arrow(schemas.read_table(path, "judgments")) if path.is_file() else None
        return self._judgments[k]

    def pair(self, pid: str) -> dict | None:
        i = self.index.get(pid)
        if i is None:
            return None
        row = self.pairs.slice(i, 1).to_pylist()[0]
        c, r = row["chosen_id"], row["rejected_id"]
        judged = self._judge(self.source_of[i])
        judgments = []
        if judged is not None:
            mine = judged.filter((pl.col("prompt_id") == row["prompt_id"])
                                 & pl.col("candidate_id").is_in([c, r, f"{c}|{r}", f"{r}|{c}"]))
            side = {c: "chosen", r: "rejected", f"{c}|{r}": "chosen vs rejected", f"{r}|{c}": "rejected vs chosen"}
            judgments = [{**j, "side": side[j["candidate_id"]]}
                         for j in mine.sort(["judge", "candidate_id"]).to_dicts()]
        history = [lab for lab in self.log.labels if lab.pair_id == pid]
        current = self.verdicts.get(pid)
        return {"pair_id": pid, "row": row, "judgments": judgments, "labels": history,
                "verdict": current.verdict if current else None}

    # -- prompts without a pair ---------------------------------------------------------------------------
    def unpaired_ids(self) -> list[tuple[int, str]]:
        """(source index, prompt_id) of every prompt in the run's prompt tables that has no pair."""
        if not hasattr(self, "_unpaired"):
            out = []
            for k, src in enumerate(self.sources):
                path = src.tables / "prompts.parquet"
                if not path.is_file():
                    continue
                have = set(src.pairs.column("prompt_id").to_pylist())
                ids = schemas.read_table(path, "prompts").column("prompt_id").to_pylist()
                out += [(k, p) for p in ids if p not in have]
            self._unpaired = out
        return self._unpaired

    def unpaired(self, page: int = 1, size: int = 20) -> tuple[list[dict], int, int]:
        """(items of the page, total, page): each item's prompt, candidates with scores, and why it has no pair."""
        todo = self.unpaired_ids()
        pages = max(1, -(-len(todo) // size))
        page = min(max(page, 1), pages)
        return [self._why(k, p) for k, p in todo[(page - 1) * size: page * size]], len(todo), page

    def _read(self, k: int, name: str, schema: str):
        path = self.sources[k].tables / f"{name}.parquet"
        return schemas.read_table(path, schema) if path.is_file() else None

    def _why(self, k: int, pid: str) -> dict:
        tables = self.sources[k].tables
        meta_path = tables.parent / "manifest.json"
        manifest = json.loads(meta_path.read_text()) if meta_path.is_file() else self.manifest
        prompts = self._read(k, "prompts", "prompts")
        prompts = prompts.filter(pc.equal(prompts.column("prompt_id"), pid))
        item = {"prompt_id": pid, "prompt": prompts.column("messages").to_pylist()[0], "candidates": [], "reason": ""}
        kept = self._read(k, "prompt_filter", "prompts")
        if kept is not None and pid not in set(kept.column("prompt_id").to_pylist()):
            drop = next((d for d in manifest.get("prompt_drops") or [] if d.get("prompt_id") == pid), {})
            item["reason"] = (f"prompt_filter.{drop.get('filter', '?')}: dropped before generation"
                              + (f" (matches {drop['match']})" if drop.get("match") else ""))
            return item
        cands = self._read(k, "generate", "candidates")
        if cands is None:
            item["reason"] = "unknown: the run has no tables/generate.parquet"
            return item
        cands = pl.from_arrow(cands.select(["prompt_id", "candidate_id", "text", "n_tokens"])).filter(
            pl.col("prompt_id") == pid)
        scores = self._read(k, "pair.scores", "scores")
        scored = pl.from_arrow(scores).filter(pl.col("prompt_id") == pid) if scores is not None else None
        judged = self._judge(k)
        per_judge = judged.filter(pl.col("prompt_id") == pid) if judged is not None else None
        for c in cands.to_dicts():
            c["score"] = next(iter(scored.filter(pl.col("candidate_id") == c["candidate_id"])["score"]), None) \
                if scored is not None else None
            c["judgments"] = per_judge.filter(pl.col("candidate_id") == c["candidate_id"]).to_dicts() \
                if per_judge is not None else []
            item["candidates"].append(c)
        if cands.height == 0:
            gen = tables / "generate.json"
            skipped = (json.loads(gen.read_text()).get("skipped") or {}).get(pid) if gen.is_file() else None
            item["reason"] = f"generate: no candidates ({skipped or 'see generate.* in the funnel'})"
            return item
        if scored is None:
            item["reason"] = "unknown: the run has no tables/pair.scores.parquet"
            return item
        item["reason"] = self._pair_reason(k, pid, cands, scored, manifest)
        return item

    def _pair_reason(self, k: int, pid: str, cands: pl.DataFrame, scored: pl.DataFrame, manifest: dict) -> str:
        cfg = manifest["config"]["resolved"]
        both = cands.join(scored.select(["candidate_id", "score"]), on="candidate_id", how="inner")
        both = both.filter(pl.col("text").str.strip_chars() != "")
        alpha = next(iter(scored["judge_agreement"]), None) if scored.height else None
        prompts = self._read(k, "prompts", "prompts")
        _, steps = pairs_from_scores(prompts.filter(pc.equal(prompts.column("prompt_id"), pid)), both, {pid: alpha},
                                     PairConfig.model_validate(cfg["pair"]), prompt_ids=[pid], seed=cfg.get("seed", 0),
                                     min_agreement=(cfg.get("judge") or {}).get("min_agreement"))
        gone = next((s for s in steps if s["rows_out"] == 0), None)
        if gone is not None:
            return f"pair.{gone['filter']}: {gone['reason']}"
        scored_pairs = self._read(k, "ches.scored", "pairs")
        if scored_pairs is not None and pid in set(scored_pairs.column("prompt_id").to_pylist()):
            ches = next((f for f in manifest.get("funnel", []) if f["stage"] == "ches"), None)
            return f"ches.{ches['filter']}: {ches['reason']}" if ches else "ches: dropped by the CHES filter"
        return "dropped after the pair stage (see the funnel)"


def where_columns() -> tuple[str, ...]:
    """The columns a review filter may name: inspect's, plus the review's own."""
    return (*FLAT_COLUMNS, "pair_id", "label", "row")
