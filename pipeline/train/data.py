"""Trainer input: pairs shards read streaming, tokenised with the shared rule, split by prompt.

- Sources: a finished run directory (its manifest's shards, each verified by sha256 and rows), a
  folder of parquet shards, or one parquet file. Shards are read batch by batch with pyarrow
  (`ParquetFile.iter_batches`), never loaded whole.
- Tokens: `pipeline.core.encoding.encode_pair`, the rule CHES used for the reference log-probs.
- Truncation rule: a prompt longer than `max_prompt_tokens` keeps its last `max_prompt_tokens`
  tokens (the question usually ends the conversation); a response is then cut at the end so that
  prompt + response fits `max_length` (a cut response loses its end-of-turn token).
- Eval split: a prompt_id is held out when a seeded hash of it falls under `eval_fraction`, so all
  pairs of one prompt land on the same side and the split does not depend on shard order. When that
  holds fewer than `overopt.min_eval_pairs` pairs, the next prompts in hash order join it (up to a
  quarter of the pairs), so the over-optimisation watch runs on small data (the default run's 36
  pairs: 1 pair at 0.1, 3 with the top-up).
- Order: a seeded shuffle buffer over the stream; epoch e uses seed (seed, e), so the order is
  reproducible and a resumed run skips exactly the pairs it already trained on.
- Degenerate pairs: a pair whose chosen and rejected texts are equal carries no preference (its
  DPO loss is log 2 whatever the policy does); such pairs are counted before training, skipped
  with a warning, and a dataset made only of them is refused.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from pipeline.core.encoding import encode_pair
from pipeline.core.store import sha256
from pipeline.errors import InputError

REQUIRED = ("prompt", "chosen", "rejected", "prompt_id")
OPTIONAL = ("chosen_id", "rejected_id", "rationale", "ref_chosen_logp", "ref_rejected_logp", "label_confidence",
            "margin")
RATIONALE_QUESTION = ("Two answers to the conversation above were compared.\n\nPreferred answer:\n{chosen}\n\n"
                      "Other answer:\n{rejected}\n\nExplain why the preferred answer is better.")


@dataclass(frozen=True)
class DataSource:
    shards: list[Path]
    manifest: dict | None  # the run's manifest when the source is a run directory
    cache_dir: Path  # where the reference log-prob cache goes: beside the shards
    fingerprint: str  # identifies the data: the shards' sha256s


@dataclass(frozen=True)
class Example:
    key: str  # prompt_id/chosen_id/rejected_id, the row's identity across shards and caches
    prompt_id: str
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool  # prompt or a response was cut, so shard reference log-probs do not apply
    rationale: tuple[list[int], list[int]] | None  # (context ids, rationale ids) for the DCPO term
    shard_ref: tuple[float, float] | None  # ref log-probs from the shard, when it carries them
    confidence: float | None = None  # label_confidence (rdpo's soft target), when the row has one
    margin: float | None = None  # the judged score gap (the reward model's margin loss), when the row has one


def open_source(path: str | Path, *, verify: bool = True) -> DataSource:
    """The shards at `path`, checked for the columns training needs. `verify=False` (the CLI's
    preflight) skips hashing: no shard is checked against the manifest and no fingerprint is made."""
    from pipeline.core.rundir import load_manifest, shard_path, verify_shards

    path = Path(path).expanduser()
    manifest = None
    if path.is_dir() and (path / "manifest.json").exists():
        manifest = load_manifest(path)
        shards = verify_shards(path, manifest) if verify else [shard_path(path, s["path"]) for s in manifest["shards"]]
        cache_dir = path
    elif path.is_dir():
        shards, cache_dir = sorted(path.rglob("*.parquet")), path
    elif path.is_file() and path.suffix == ".parquet":
        shards, cache_dir = [path], path.parent
    else:
        raise InputError(
            f"--data {path}: not a prefsynth run directory, a folder of parquet shards or a .parquet file; "
            "fix: pass the --out folder of `prefsynth run` or its pairs/ folder"
        )
    shards = [s for s in shards if "ref_logps" not in s.parts]
    if not shards:
        raise InputError(f"--data {path}: no parquet shards found; fix: point it at a run with published pairs")
    fix = "fix: re-run the `prefsynth run` that wrote them, or pass other shards to --data"
    total = 0
    for shard in shards:
        if not shard.is_file():
            raise InputError(f"--data: shard {shard} is missing; {fix}")
        try:
            meta = pq.read_metadata(shard)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise InputError(
                f"--data: shard {shard} is not readable parquet ({' '.join(str(exc).split())}); {fix}"
            ) from None
        names = set(meta.schema.to_arrow_schema().names)
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise InputError(
                f"--data: shard {shard} lacks column(s) {missing}; fix: give pairs in TRL's conversational "
                "format (prompt, chosen, rejected as message lists) with a prompt_id column"
            )
        total += meta.num_rows
    if total == 0:
        raise InputError(
            f"--data {path}: the shards hold 0 pairs; fix: build pairs first (read the run's funnel with "
            "`prefsynth inspect`) or pass shards that have rows"
        )
    if not verify:
        return DataSource(shards, manifest, cache_dir, "")
    # a run's shards were just hashed against its manifest: reuse those digests rather than read every shard again
    digests = [s["sha256"] for s in manifest["shards"]] if manifest else [sha256(s) for s in shards]
    digest = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    return DataSource(shards, manifest, cache_dir, digest)


def _last_text(messages) -> str | None:
    return messages[-1].get("content") if messages else None


def is_degenerate(row: dict) -> bool:
    """chosen and rejected say the same thing: no preference to learn."""
    return _last_text(row["chosen"]) == _last_text(row["rejected"])


def count_degenerate(source: DataSource, *, batch_rows: int = 4096) -> tuple[int, int]:
    """(pairs whose chosen and rejected texts are equal, all pairs), reading only those two columns."""
    same = total = 0
    for shard in source.shards:
        try:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=["chosen", "rejected"]):
                for chosen, rejected in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    same += _last_text(chosen) == _last_text(rejected)
                total += batch.num_rows
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # damaged pages, or not message lists
            raise InputError(
                f"--data: shard {shard} cannot be read as pairs ({' '.join(str(exc).split())[:200]}); "
                "fix: re-run the `prefsynth run` that wrote it, or give TRL conversational pairs"
            ) from None
    return same, total


def check_degenerate(source: DataSource, log=print) -> int:
    """Refuse a dataset of only degenerate pairs; warn with the count when some are; return that count."""
    same, total = count_degenerate(source)
    if same == total:
        raise InputError(
            f"--data: all {total} pairs have chosen == rejected (identical texts), so there is no "
            "preference to learn; fix: rebuild the pairs (pair.min_margin, pair.max_similarity) or check "
            "how the shards were made"
        )
    if same:
        log(f"train: warning: {same} of {total} pairs have chosen == rejected (identical texts); they are skipped")
    return same


MAX_TOPUP_SHARE = 0.25  # the eval split grows to overopt.min_eval_pairs only while it holds at most this share


def iter_rows(source: DataSource, *, batch_rows: int = 256) -> Iterator[dict]:
    for shard in source.shards:
        f = pq.ParquetFile(shard)
        cols = [c for c in (*REQUIRED, *OPTIONAL) if c in f.schema_arrow.names]
        for batch in f.iter_batches(batch_size=batch_rows, columns=cols):
            yield from batch.to_pylist()


def _unit(seed: int, text: str) -> float:
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16) / 16**12


def eval_prompts(source: DataSource, *, seed: int, fraction: float, min_pairs: int = 0) -> set[str]:
    """prompt_ids held out for evaluation (reads only the prompt_id column): those whose seeded hash falls under
    `fraction`, at least one; then, while they hold fewer than `min_pairs` pairs (the watch's
    overopt.min_eval_pairs), the next prompts in hash order, as long as the held-out pairs stay within
    MAX_TOPUP_SHARE of all pairs (training keeps the large majority; with less data the watch stays off)."""
    if fraction <= 0:
        return set()
    counts: dict[str, int] = {}
    for shard in source.shards:
        for batch in pq.ParquetFile(shard).iter_batches(columns=["prompt_id"]):
            for p in batch.column(0).to_pylist():
                counts[p] = counts.get(p, 0) + 1
    ids = set(counts)
    held = {p for p in ids if _unit(seed, p) < fraction}
    if not held and len(ids) >= 2:
        held = {min(ids, key=lambda p: _unit(seed, p))}
    if held == ids:
        raise InputError(f"train.eval_fraction={fraction} holds out every prompt of {len(ids)}; fix: lower it")
    n_held, cap = sum(counts[p] for p in held), MAX_TOPUP_SHARE * sum(counts.values())
    for p in sorted(ids - held, key=lambda p: (_unit(seed, p), p)):  # hash order: deterministic, prompt-disjoint
        if n_held >= min_pairs or n_held + counts[p] > cap:
            break
        held.add(p)
        n_held += counts[p]
    return held


def _text(messages, field: str, key: str) -> str:
    if not messages or messages[-1].get("role") != "assistant":
        raise InputError(
            f"pair {key}: column {field!r} must be a list ending in one assistant message, got {messages!r:.120}; "
            "fix: write pairs in TRL's conversational format"
        )
    return messages[-1]["content"]


def encode_row(tokenizer, row: dict, *, max_prompt_tokens: int, max_length: int) -> Example:
    chosen_text, rejected_text = (
        _text(row["chosen"], "chosen", row["prompt_id"]),
        _text(row["rejected"], "rejected", row["prompt_id"]),
    )
    # the prompt's hash is part of the key: reward-augmented rows share candidate ids but not prompts
    prompt_hash = hashlib.sha256(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:12]
    if row.get("chosen_id") and row.get("rejected_id"):
        key = f"{row['prompt_id']}/{row['chosen_id']}/{row['rejected_id']}/{prompt_hash}"
    else:  # shards from elsewhere may lack candidate ids: identify the pair by its texts
        key = (
            f"{row['prompt_id']}/{prompt_hash}/"
            + hashlib.sha256(f"{chosen_text}\0{rejected_text}".encode()).hexdigest()[:16]
        )
    prompt, chosen = encode_pair(tokenizer, row["prompt"], chosen_text)
    _, rejected = encode_pair(tokenizer, row["prompt"], rejected_text)
    room = max_length - min(len(prompt), max_prompt_tokens)
    truncated = len(prompt) > max_prompt_tokens or len(chosen) > room or len(rejected) > room
    prompt = prompt[-max_prompt_tokens:]
    chosen, rejected = chosen[:room], rejected[:room]
    rationale = None
    if row.get("rationale"):
        question = RATIONALE_QUESTION.format(chosen=chosen_text, rejected=rejected_text)
        ctx, ids = encode_pair(tokenizer, [*row["prompt"], {"role": "user", "content": question}], row["rationale"])
        ctx = ctx[-max_length:]
        rationale = (ctx, ids[: max(1, max_length - len(ctx))])
    ref = None
    if row.get("ref_chosen_logp") is not None and row.get("ref_rejected_logp") is not None:
        ref = (float(row["ref_chosen_logp"]), float(row["ref_rejected_logp"]))
    conf = row.get("label_confidence")
    if conf is not None and not 0.0 <= conf <= 1.0:
        raise InputError(f"pair {key}: label_confidence {conf!r} is not a probability; fix: write values in [0, 1]")
    margin = row.get("margin")
    margin = None if margin is None or margin != margin else float(margin)  # NaN: no margin
    return Example(key, row["prompt_id"], prompt, chosen, rejected, truncated, rationale, ref, conf, margin)


def examples(
    source: DataSource, tokenizer, *, max_prompt_tokens: int, max_length: int, keep=lambda prompt_id: True
) -> Iterator[Example]:
    """Every pair in shard order, encoded; `keep(prompt_id)` selects the split."""
    for row in iter_rows(source):
        if keep(row["prompt_id"]) and not is_degenerate(row):
            yield encode_row(tokenizer, row, max_prompt_tokens=max_prompt_tokens, max_length=max_length)


def shuffled(stream: Iterator[Example], *, seed: int, epoch: int, buffer: int) -> Iterator[Example]:
    """A seeded shuffle buffer: reproducible order without holding the dataset in memory."""
    rng = random.Random(f"{seed}:{epoch}")
    held: list[Example] = []
    for ex in stream:
        held.append(ex)
        if len(held) >= buffer:
            i = rng.randrange(len(held))
            held[i], held[-1] = held[-1], held[i]
            yield held.pop()
    rng.shuffle(held)
    yield from held
