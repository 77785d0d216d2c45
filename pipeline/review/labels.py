"""Human review labels: an append-only log under RUN/reviews/, and the one place they change a dataset.

A reviewer (`prefsynth review`, flows/review/app.py) gives a pair one verdict: accept (the judges'
order is right), flip (the rejected response is the better one) or reject (drop the pair), with an
optional note. Each label is one JSON line appended to RUN/reviews/<reviewer>.jsonl:
{reviewer, time, pair_id, verdict, note, prompt_id, chosen_id, rejected_id}. Nothing is rewritten;
a later label supersedes an earlier one. A line goes out in one O_APPEND write and is fsync'd, so a
crash can leave at most an unterminated last line: readers skip and count it, and the next append
starts on a fresh line.

A pair's id hashes (prompt_id, chosen_id, rejected_id, pair_strategy) as the pipeline built it, so a
label follows its pair through re-runs that rebuild it and never lands on another pair.

`apply` is the only place labels change data. Input: the pipeline's pairs before review and the
applied verdict per pair id; output: the reviewed pairs and their counts, which `funnel_steps` turns
into the funnel's `review.rejected` / `review.flipped` steps. pipeline/publish/shards.py calls it for
`prefsynth run`, `card`, `push` and incremental merges (`publish.reviewed`). Per pair the most
recent label of any reviewer is applied:
  reject  the pair is dropped.
  flip    chosen and rejected swap, with their ids, scores, lengths and reference log-probs; margin
          is the new chosen_score - rejected_score (negative: the judges ranked it the other way);
          ches/ln_ches and the rationale become null (CHES depends on which side is chosen and
          needs the policy to recompute; the rationale argued for the other side); a
          label_confidence c becomes 1 - c; pair_strategy gets the prefix `review_flip:`.
  accept  unchanged.
Labels of pairs the run does not have (an earlier config's pairs) are counted as stale and ignored.

`agreement`: each reviewer's latest verdict on a pair is one human label. Per judge, over accept and
flip labels, the judge's own preference on the pair (its scores of chosen and rejected, or its
pairwise verdict: chosen, rejected or tie) against the human's (chosen for accept, rejected for
flip): accuracy and Cohen's kappa. With several reviewers, Krippendorff's alpha (nominal: verdicts
over pairs x reviewers). Statistics in judges/agreement.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from judges.agreement import cohen_kappa, krippendorff_alpha_nominal
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.rundir import load_manifest, load_pairs, shard_path, verify_shards
from pipeline.core.store import sha256
from pipeline.curation.aggregate import judge_preferences
from pipeline.errors import InputError

VERDICTS = ("accept", "flip", "reject")
FOLDER = "reviews"
FLIP_PREFIX = "review_flip:"
REVIEWER = re.compile(r"[\w@-][\w .@-]{0,63}")  # fullmatch; no leading dot: the name becomes a file name
PAIR_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_NOTE = 2000


@dataclass(frozen=True)
class Label:
    reviewer: str
    time: str  # ISO 8601, UTC, microseconds
    pair_id: str
    verdict: str
    note: str = ""
    prompt_id: str = ""
    chosen_id: str = ""
    rejected_id: str = ""


@dataclass
class LabelLog:
    labels: list[Label]  # oldest first
    skipped: list[str] = field(default_factory=list)  # "file:line: why" of lines that are not labels
    digest: str = ""  # sha256 over the label files: changes with every appended label


@dataclass(frozen=True)
class Source:
    """Pairs as the pipeline published them (before review), with where their stage tables are."""
    prefix: str  # shard name prefix: "train", or "train-incNNNNN" for an increment of a growing dataset
    pairs: pa.Table
    tables: Path
    files: tuple[Path, ...] = ()  # the verified shards `pairs` was read from, when it was (an increment's)


def pair_id(prompt_id: str, chosen_id: str, rejected_id: str, strategy: str) -> str:
    return hashlib.sha256("\x1f".join((prompt_id, chosen_id, rejected_id, strategy)).encode()).hexdigest()[:16]


def pair_ids(pairs: pa.Table) -> list[str]:
    cols = [pairs.column(c).to_pylist() for c in ("prompt_id", "chosen_id", "rejected_id", "pair_strategy")]
    return [pair_id(*row) for row in zip(*cols)]


def check_reviewer(name: str) -> str:
    name = (name or "").strip()
    if not REVIEWER.fullmatch(name):
        raise InputError(f"reviewer name {name[:80]!r} is not usable; fix: 1 to 64 letters, digits, spaces, '.', "
                         "'@', '_' or '-', not starting with '.' and without '/', e.g. --reviewer alice")
    return name


def new_label(reviewer: str, pair: dict, verdict: str, note: str = "") -> Label:
    """A label for `pair` (a row with prompt_id, chosen_id, rejected_id, pair_strategy), checked."""
    if verdict not in VERDICTS:
        raise InputError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}; fix: pick one of them")
    if len(note) > MAX_NOTE:
        raise InputError(f"the note has {len(note)} characters; fix: keep it under {MAX_NOTE}")
    ids = (pair["prompt_id"], pair["chosen_id"], pair["rejected_id"])
    return Label(check_reviewer(reviewer), datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                 pair_id(*ids, pair["pair_strategy"]), verdict, note, *ids)


def append(run_dir, label: Label) -> Path:
    """Append one label line to RUN/reviews/<reviewer>.jsonl (one write, fsync'd; nothing rewritten)."""
    folder = Path(run_dir) / FOLDER
    if folder.is_symlink():  # labels are written inside the run, never through a link to elsewhere
        raise InputError(f"{folder} is a symbolic link; fix: make it a plain folder inside the run")
    folder.mkdir(exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.@-]', '_', check_reviewer(label.reviewer))}.jsonl"
    line = (json.dumps(asdict(label), ensure_ascii=False, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise InputError(f"cannot write the label file {path} ({exc.strerror}); fix: make it a plain file (not a "
                         "symbolic link) the reviewer can write") from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # an interrupted write left half a line: end it
            os.write(fd, b"\n")
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _parse(raw: bytes) -> Label:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    label = Label(**{k: data[k] for k in Label.__dataclass_fields__ if k in data})
    if label.verdict not in VERDICTS:
        raise ValueError(f"verdict {label.verdict!r} is not one of {', '.join(VERDICTS)}")
    if not PAIR_ID.match(str(label.pair_id)) or not REVIEWER.match(str(label.reviewer)):
        raise ValueError("bad pair_id or reviewer")
    datetime.fromisoformat(label.time)
    if not isinstance(label.note, str):
        raise ValueError("note is not text")
    return label


def read(run_dir) -> LabelLog:
    """Every label under RUN/reviews/, oldest first (file order breaks ties); bad lines are skipped."""
    folder = Path(run_dir) / FOLDER
    found: list[tuple[str, int, int, Label]] = []
    skipped: list[str] = []
    digest = hashlib.sha256()
    for f, path in enumerate(sorted(folder.glob("*.jsonl")) if folder.is_dir() else []):
        data = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + data + b"\0")
        for no, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                label = _parse(raw)
            except (ValueError, TypeError, KeyError) as exc:
                skipped.append(f"{path.name}:{no}: {exc}")
                continue
            found.append((label.time, f, no, label))
    found.sort(key=lambda t: t[:3])
    return LabelLog([t[3] for t in found], skipped, digest.hexdigest() if found or skipped else "")


def latest(labels: list[Label]) -> dict[str, Label]:
    """{pair_id: the most recent label of any reviewer}: the verdict that is applied."""
    return {label.pair_id: label for label in labels}


def by_reviewer(labels: list[Label]) -> dict[tuple[str, str], Label]:
    """{(pair_id, reviewer): that reviewer's most recent label}."""
    return {(label.pair_id, label.reviewer): label for label in labels}


@dataclass
class Applied:
    table: pa.Table
    rejected: int
    flipped: int
    accepted: int


def apply(pairs: pa.Table, verdicts: dict[str, Label]) -> Applied:
    """The reviewed pairs (see the module docstring): rejected dropped, flipped swapped."""
    ids = pair_ids(pairs)
    verdict = [verdicts[i].verdict if i in verdicts else None for i in ids]
    counts = {v: verdict.count(v) for v in VERDICTS}
    if not counts["flip"] and not counts["reject"]:
        return Applied(pairs, 0, 0, counts["accept"])
    flip = pa.array([v == "flip" for v in verdict])
    cols = {name: pairs.column(name) for name in pairs.schema.names}
    out = dict(cols)
    for a, b in (("chosen", "rejected"), ("chosen_id", "rejected_id"), ("chosen_score", "rejected_score"),
                 ("chosen_len", "rejected_len"), ("ref_chosen_logp", "ref_rejected_logp")):
        out[a], out[b] = pc.if_else(flip, cols[b], cols[a]), pc.if_else(flip, cols[a], cols[b])
    out["margin"] = pc.subtract(out["chosen_score"], out["rejected_score"])
    for name in ("ches", "ln_ches", "rationale"):
        out[name] = pc.if_else(flip, pa.nulls(len(ids), cols[name].type), cols[name])
    out["label_confidence"] = pc.if_else(flip, pc.subtract(1.0, cols["label_confidence"]), cols["label_confidence"])
    out["pair_strategy"] = pc.if_else(flip, pc.binary_join_element_wise(FLIP_PREFIX, cols["pair_strategy"], ""),
                                      cols["pair_strategy"])
    table = pa.table([out[n] for n in pairs.schema.names], schema=pairs.schema)
    table = table.filter(pa.array([v != "reject" for v in verdict]))
    return Applied(schemas.check(table, "pairs"), counts["reject"], counts["flip"], counts["accept"])


@dataclass
class Reviewed:
    parts: list[tuple[Source, Applied]]
    steps: list[dict]  # the funnel's review steps ([] when the run has no labels)
    section: dict | None  # the manifest's `review` section (None when the run has no labels)

    @property
    def pairs(self) -> int:
        return sum(a.table.num_rows for _, a in self.parts)


def apply_labels(run_dir, srcs: list[Source]) -> Reviewed:
    """The one place labels change a dataset. In: the pipeline's pairs (`srcs`, before review) and
    RUN/reviews/. Out: each source's reviewed pairs, the funnel's review steps, the manifest section."""
    log = read(run_dir)
    if not log.digest:
        return Reviewed([(s, Applied(s.pairs, 0, 0, 0)) for s in srcs], [], None)
    verdicts = latest(log.labels)
    parts = [(s, apply(s.pairs, verdicts)) for s in srcs]
    before = sum(s.pairs.num_rows for s in srcs)
    steps = funnel_steps(before, sum(a.rejected for _, a in parts), sum(a.flipped for _, a in parts))
    everything = schemas.concat([s.pairs for s in srcs], "pairs")
    return Reviewed(parts, steps, summary(log, everything, judgments(srcs), [a for _, a in parts]))


def funnel_steps(before: int, rejected: int, flipped: int) -> list[dict]:
    """review.rejected (pairs dropped) then review.flipped (rows unchanged; the count in `changed`)."""
    kept = before - rejected
    flips = step("review", "flipped", kept, kept, f"pairs a human reviewer flipped: chosen and rejected swapped "
                 f"({flipped} pairs; rows unchanged)", unit="pairs")
    rejects = step("review", "rejected", before, kept, "pairs a human reviewer rejected (RUN/reviews, "
                   "`prefsynth review`)", unit="pairs")
    return [rejects, {**flips, "changed": flipped}]


def sources(run_dir, manifest: dict | None = None) -> list[Source]:
    """The pipeline's pairs before review: a plain run's tables/rationale.parquet (checked to be the
    table its manifest was published from), each increment's own shards for a growing dataset, or the
    shards of a run that has no tables and was never reviewed."""
    run = Path(run_dir)
    manifest = manifest or load_manifest(run)
    if manifest.get("incremental"):
        out = []
        for inc in manifest.get("increments", []):
            inc_dir = shard_path(run, inc["dir"])
            m = load_manifest(inc_dir)
            out.append(Source(f"train-inc{int(inc['id']):05d}", load_pairs(inc_dir, m), inc_dir / "tables",
                              tuple(verify_shards(inc_dir, m))))
        return out
    tables = run / "tables"
    table, meta_path = tables / "rationale.parquet", tables / "rationale.json"
    if table.is_file():
        fix = (f"fix: re-run the same `prefsynth run --out {run}` command so tables and shards match again")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise InputError(f"{meta_path} is missing or unreadable, so {table} cannot be trusted; {fix}") from None
        published = (manifest.get("stage_fingerprints") or {}).get("rationale")
        if meta.get("fingerprint") != published or meta.get("sha256") != sha256(table):
            raise InputError(f"{table} is not the table {run / 'manifest.json'} was published from; {fix}")
        return [Source("train", schemas.read_table(table, "pairs"), tables)]
    if manifest.get("review"):
        raise InputError(f"{run} has reviewed shards but no tables/rationale.parquet to apply labels to again; fix: "
                         "review the run folder that `prefsynth run` wrote (with its tables/)")
    return [Source("train", load_pairs(run, manifest), tables)]


def judgments(srcs: list[Source]) -> pa.Table:
    """The judgments of every source that has its judge table (empty otherwise)."""
    found = [schemas.read_table(s.tables / "judge.parquet", "judgments") for s in srcs
             if (s.tables / "judge.parquet").is_file()]
    return schemas.concat(found, "judgments")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def agreement(labels: list[Label], pairs: pa.Table, judgments: pa.Table) -> dict:
    """Judges against the human labels of `pairs` (before review), and reviewers among themselves."""
    sides = zip(pairs.column("chosen_id").to_pylist(), pairs.column("rejected_id").to_pylist())
    ids = dict(zip(pair_ids(pairs), sides))
    mine = {k: v for k, v in by_reviewer(labels).items() if k[0] in ids}
    human = {"accept": "chosen", "flip": "rejected"}
    judged = [(pid, human[label.verdict]) for (pid, _), label in mine.items() if label.verdict in human]
    prefs = judge_preferences({pid: ids[pid] for pid, _ in judged}, judgments)
    per_judge = {}
    for judge, pref in prefs.items():
        both = [(pref[pid], h) for pid, h in judged if pid in pref]
        per_judge[judge] = {"labels": len(both),
                            "accuracy": _round(sum(j == h for j, h in both) / len(both)) if both else None,
                            "kappa": _round(cohen_kappa([j for j, _ in both], [h for _, h in both]))}
    reviewers = sorted({r for _, r in mine})
    units: dict[str, dict[str, str]] = {}
    for (pid, reviewer), label in mine.items():
        units.setdefault(pid, {})[reviewer] = label.verdict
    alpha = (krippendorff_alpha_nominal([[u.get(r) for r in reviewers] for u in units.values()])
             if len(reviewers) > 1 else None)
    return {"reviewers": {r: sum(1 for _, who in mine if who == r) for r in reviewers},
            "human_labels": len(mine), "pairs_labelled": len(units),
            "published_order": {"labels": len(judged), "accuracy": _round(sum(h == "chosen" for _, h in judged)
                                                                          / len(judged)) if judged else None},
            "judges": per_judge,
            "reviewers_alpha": _round(alpha),
            "pairs_with_several_reviewers": sum(len(u) > 1 for u in units.values())}


def summary(log: LabelLog, pairs: pa.Table, judgments: pa.Table, applied: list[Applied]) -> dict:
    """The manifest's `review` section: what was read, what was applied, and the agreement figures."""
    known = set(pair_ids(pairs))
    return {"labels": len(log.labels), "labels_sha256": log.digest, "skipped_lines": log.skipped[:20],
            "stale_labels": sum(1 for label in log.labels if label.pair_id not in known),
            "applied": {"accept": sum(a.accepted for a in applied), "flip": sum(a.flipped for a in applied),
                        "reject": sum(a.rejected for a in applied)},
            "agreement": agreement(log.labels, pairs, judgments)}
