"""The table contracts (docs/architecture.md) as pyarrow schemas, and the only parquet IO.

Every stage reads and writes its tables through `read_table` / `write_table`, so a column that
is missing, renamed or of the wrong type is a `SchemaError` at the boundary, never a silent cast
three stages later. Writes go to a hidden temporary name in the same folder and are renamed into
place when complete (atomic on POSIX), so a reader or a `*.parquet` glob never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import SchemaError, disk_full, no_space

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

SAMPLING = pa.struct(
    [
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("max_new_tokens", pa.int32()),
        ("seed", pa.int64()),
        ("mode", pa.string()),  # "sample" (one response per request) or "verbalized" (pipeline/sampling/verbalized.py)
        ("verbalized_probability", pa.float64()),  # the probability a verbalized-sampling reply gave the response
    ]
)

PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("messages", MESSAGES, nullable=False),
        pa.field("source", pa.string()),
        pa.field("category", pa.string()),
        pa.field("reference", pa.string()),  # optional reference answer, shown to rubric judges that use one
        pa.field("verify", pa.string()),  # optional machine-checkable spec (JSON), checked by the verifier judge
        # the assistant turn of the input conversation this prompt branches at (pipeline/stages/turns.py); null
        # under generate.turns 'last', where the conversation is answered as given
        pa.field("turn", pa.int32()),
    ]
)

CANDIDATES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("sampling", SAMPLING),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
    ]
)

JUDGMENTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("aspect", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("rationale", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("ok", pa.bool_(), nullable=False),
        pa.field("position_consistent", pa.bool_()),
        # how an LLM judge scored: "logprobs" (expectation over the answer tokens' probabilities) or "sampled" (mean of
        # parsed sampled verdicts, judges/served.py); null for reward models and in tables written before it existed
        pa.field("score_mode", pa.string()),
    ]
)

PAIRS = pa.schema(
    [
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("chosen_id", pa.string(), nullable=False),
        pa.field("rejected_id", pa.string(), nullable=False),
        pa.field("chosen_score", pa.float64(), nullable=False),
        pa.field("rejected_score", pa.float64(), nullable=False),
        pa.field("margin", pa.float64(), nullable=False),
        pa.field("rationale", pa.string()),
        pa.field("pair_strategy", pa.string(), nullable=False),
        pa.field("judge_agreement", pa.float64()),
        pa.field("ches", pa.float64()),
        pa.field("ln_ches", pa.float64()),
        pa.field("ref_chosen_logp", pa.float64()),
        pa.field("ref_rejected_logp", pa.float64()),
        pa.field("chosen_len", pa.int32(), nullable=False),
        pa.field("rejected_len", pa.int32(), nullable=False),
        # sigmoid(r(chosen) - r(rejected)) from an external reward model (self-critique pairs; rDPO's soft target)
        pa.field("label_confidence", pa.float64()),
        # the prompt's `turn` (the assistant turn the pair is a preference over; null under generate.turns 'last');
        # last, so readers that select columns by name, TRL's included, read the shard as before
        pa.field("turn", pa.int32()),
    ]
)

RANKED_CANDIDATE = pa.struct(
    [("candidate_id", pa.string()), ("text", pa.string()), ("score", pa.float64()), ("n_tokens", pa.int32())]
)

# listwise view (pair.keep_ranked): every scored candidate of a prompt, best first
RANKED = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("candidates", pa.list_(RANKED_CANDIDATE), nullable=False),
    ]
)

# one aggregated score per judged candidate (pipeline/curation/aggregate.py), written by the pair stage
SCORES = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("judge_agreement", pa.float64()),
    ]
)

# the trainer's reference log-prob cache beside the shards (pipeline/train/ref.py); key = prompt/chosen/rejected ids
REF_LOGPS = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("ref_chosen_logp", pa.float64(), nullable=False),
        pa.field("ref_rejected_logp", pa.float64(), nullable=False),
    ]
)

# the prompt filter's drops, one row per dropped prompt (tables/prompt_filter.drops.parquet); `match` is the
# kept prompt_id it duplicates or the benchmark id it shares an n-gram with; `score` the cosine (near_duplicate)
# or estimated Jaccard (fuzzy_duplicate) to the match, null for decontaminate
PROMPT_DROPS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("filter", pa.string(), nullable=False),
        pa.field("match", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
    ]
)

# checkpointed sentence embeddings of the prompt filter (one L2-normalised vector per prompt)
EMBEDDINGS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)

# prompt synthesis (pipeline/stages/synth.py): every slot's output, kept (dropped null) or not, with provenance
SYNTH = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),  # the prompt's id: a hash of its messages
        pa.field("slot", pa.string(), nullable=False),  # the synthesis request that made it
        pa.field("messages", MESSAGES, nullable=False),
        pa.field("source", pa.string()),
        pa.field("category", pa.string()),
        pa.field("mode", pa.string(), nullable=False),  # magpie | evol | topics
        pa.field("operation", pa.string()),  # evol: the rewrite; topics: "task, difficulty"
        pa.field("seed_prompt_id", pa.string()),
        pa.field("seed_text", pa.string()),
        pa.field("generator", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),  # the model's output before cleaning
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("dropped", pa.string()),  # the filter that dropped it, null when kept
    ]
)

# `prefsynth judge-eval` (pipeline/loop/judge_eval.py): judges scored on human-labelled pairs, one row per judge and
# category ('all' overall); accuracy and its 95% bootstrap interval are null when no pair was judged
JUDGE_EVAL = pa.schema(
    [
        pa.field("judge", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # absolute | reward_model | pairwise | ensemble
        pa.field("category", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),  # pairs judged (ok)
        pa.field("accuracy", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("failed", pa.int64(), nullable=False),  # pairs not judged (a judgment not ok), left out of accuracy
        pa.field("position_consistency", pa.float64()),  # pairwise judges only
    ]
)

# ... and one row per (labelled pair, judge); a pairwise judge's scores are P(chosen better) and 1 - it
JUDGE_EVAL_PAIRS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("judge", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("score_chosen", pa.float64()),
        pa.field("score_rejected", pa.float64()),
        pa.field("correct", pa.float64()),  # 1, 0.5 (tie) or 0; null when not ok
        pa.field("ok", pa.bool_(), nullable=False),
        pa.field("position_consistent", pa.bool_()),
    ]
)

# `prefsynth eval` (loop/evaluate.py): per held-out prompt, model A's and baseline B's answers (same seed), the
# judges' combined score of each, the win of A (1, 0.5 tie, 0; null when not judged) and the verifier's verdicts
EVAL_ANSWERS = pa.schema(
    [pa.field("prompt_id", pa.string(), nullable=False), pa.field("win", pa.float64())]
    + [f for s in ("model", "baseline") for f in (
        pa.field(f"{s}_text", pa.string(), nullable=False), pa.field(f"{s}_tokens", pa.int64(), nullable=False),
        pa.field(f"{s}_score", pa.float64()), pa.field(f"{s}_verified", pa.float64()))]
)

# ... and one summary row; null where a figure has nothing to stand on (no judged prompt, no verify spec)
EVAL_SUMMARY = pa.schema(
    [pa.field(n, pa.string(), nullable=False) for n in ("model", "baseline", "aggregate", "judge_fingerprint")]
    + [pa.field(n, pa.int64(), nullable=False) for n in ("prompts", "n", "wins", "ties", "losses", "failed")]
    + [pa.field(n, pa.float64()) for n in ("win_rate", "win_low", "win_high", "lc_win_rate", "length_coef")]
    + [pa.field("verifier_n", pa.int64(), nullable=False)]
    + [pa.field(f"{s}_{n}", pa.float64()) for s in ("model", "baseline")
       for n in ("mean_tokens", "verifier_accuracy", "topk_entropy", "topk_mass")]
)

# `prefsynth iterate` (loop/iterate.py): one row per finished round r; `trained` (policy r+1) evaluated against
# the base and against `policy` (policy r) on the held-out prompts; lengths, verifier accuracy and indicators vs base
ROUNDS = pa.schema(
    [pa.field("round", pa.int64(), nullable=False)]
    + [pa.field(n, pa.string(), nullable=False) for n in ("policy", "trained", "run_dir", "train_dir")]
    + [pa.field(n, pa.int64(), nullable=False) for n in ("pairs", "steps")]
    + [pa.field(f"{n}_vs_{b}", pa.float64()) for b in ("base", "previous")
       for n in ("win_rate", "win_low", "win_high", "lc_win_rate")]
    + [pa.field(n, pa.float64()) for n in ("mean_tokens", "base_mean_tokens", "verifier_accuracy",
                                           "base_verifier_accuracy", "topk_entropy", "topk_mass")]
    + [pa.field("stop", pa.string())]  # why iterate.early_stop ended the loop after this round, else null
)

SCHEMAS: dict[str, pa.Schema] = {
    "prompts": PROMPTS,
    "candidates": CANDIDATES,
    "judgments": JUDGMENTS,
    "pairs": PAIRS,
    "ranked": RANKED,
    "scores": SCORES,
    "ref_logps": REF_LOGPS,
    "prompt_drops": PROMPT_DROPS,
    "embeddings": EMBEDDINGS,
    "synth": SYNTH,
    "judge_eval": JUDGE_EVAL,
    "judge_eval_pairs": JUDGE_EVAL_PAIRS,
    "eval_answers": EVAL_ANSWERS,
    "eval_summary": EVAL_SUMMARY,
    "rounds": ROUNDS,
}


# nullable columns added after tables of that kind were first written: an older table (a run directory of an
# earlier version) reads with the column all null, so its stages are reused rather than redone
ADDED_LATER: dict[str, tuple[str, ...]] = {
    "judgments": ("score_mode",), "prompts": ("verify", "turn"), "pairs": ("turn",)
}


def check(table: pa.Table, name: str) -> pa.Table:
    """Return `table` if it matches schema `name` exactly; raise `SchemaError` naming the columns."""
    schema = SCHEMAS[name]
    for col in ADDED_LATER.get(name, ()):
        if col not in table.schema.names:
            table = table.append_column(schema.field(col), pa.nulls(table.num_rows, schema.field(col).type))
    problems = []
    have = {f.name: f for f in table.schema}
    for field in schema:
        got = have.get(field.name)
        if got is None:
            problems.append(f"missing column {field.name!r} ({field.type})")
        elif not got.type.equals(field.type):
            problems.append(f"column {field.name!r} is {got.type}, expected {field.type}")
        elif not field.nullable and table.column(field.name).null_count:
            problems.append(f"column {field.name!r} has {table.column(field.name).null_count} nulls")
    extra = sorted(set(have) - set(schema.names))
    if extra:
        problems.append(f"unexpected columns {extra}")
    if problems:
        raise SchemaError(f"{name} table does not match its schema: " + "; ".join(problems))
    if table.schema.names != schema.names:
        table = table.select(schema.names)
    return table


def from_rows(rows: list[dict], name: str) -> pa.Table:
    """Build a table of schema `name` from row dicts (missing optional keys become null)."""
    schema = SCHEMAS[name]
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise SchemaError(f"cannot build {name} table: {exc}") from exc
    return check(table, name)


def empty(name: str) -> pa.Table:
    return SCHEMAS[name].empty_table()


def write_table(table: pa.Table, path: str | os.PathLike, name: str, *, compression: str = "zstd") -> Path:
    """Check `table` against schema `name` and write it atomically (temp file, fsync, rename)."""
    table = check(table, name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression=compression)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if disk_full(exc):
            raise no_space(path, exc) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_table(path: str | os.PathLike, name: str) -> pa.Table:
    """Read a parquet file and check it against schema `name`."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{name} table {path} does not exist")
    return check(pq.read_table(path), name)


def concat(tables: list[pa.Table], name: str) -> pa.Table:
    if not tables:
        return empty(name)
    return check(pa.concat_tables([check(t, name) for t in tables]), name)
