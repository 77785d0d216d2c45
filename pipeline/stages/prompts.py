"""Prompt input: JSONL, parquet, a folder of such files, or a `datasets` dataset, into the `prompts` table.

Each row is `{"messages": [{"role", "content"}, ...]}` or `{"prompt": "..."}`, with optional
`prompt_id`, `category`, `source`, `reference` (a reference answer for rubric judges) and `verify` (a
machine-checkable spec for the verifier judge, judges/verifier.py: numeric, exact or tests). A row is
invalid when it has neither field, an empty or non-string content, an unknown role, or a conversation
that cannot be branched as `generate.turns` asks (pipeline/stages/turns.py; by default it must end with a
user turn); the error names the file, the line (or row) and the problem.
With `skip_invalid` such rows are skipped and counted instead (a line that is not UTF-8 is one invalid
row, not a bad file).
Exact duplicates (same prompt_id, same messages) keep their first occurrence. A prompt_id reused
for different messages is an input error naming both rows (with `skip_invalid`, the later row is
skipped and counted as `prompt_id_conflicts`). `prompt_id` is a stable hash of the messages unless
the row gives one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import InputConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.runner import Stage
from pipeline.errors import InputError
from pipeline.stages.input_text import bad_char, loads
from pipeline.stages.turns import LAST, branches
from pipeline.verifiable.spec import verify_spec

ROLES = {"system", "user", "assistant"}
CONVERSATIONS = "conversation:"  # the source path of a run with sources.conversation on
VERSION = "2"


def bundled_data_dir() -> Path:
    """The repo's data/ folder (editable install) or its copy inside the wheel."""
    package = Path(__file__).resolve().parents[1]  # pipeline/
    for candidate in (package / "_bundled_data", package.parent / "data"):
        if candidate.is_dir():
            return candidate
    raise InputError("bundled data folder not found; fix: reinstall prefsynth")


@dataclass
class LoadReport:
    rows_read: int = 0
    invalid: list[str] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)  # a reused prompt_id with other messages (skipped)
    conversations: int = 0  # input rows kept after the limit, before branching at generate.turns


def prompt_id_of(messages: list[dict]) -> str:
    return fingerprint([[m["role"], m["content"]] for m in messages])


def messages_hash(messages: list[dict]) -> str:
    """Identity of a prompt's text, whatever its prompt_id (the default prompt_id is this hash)."""
    return prompt_id_of(messages)


def normalise_row(row: Any, where: str) -> dict:
    """Validate one input row; return a prompts-table row or raise InputError naming `where`."""
    if not isinstance(row, dict):
        raise InputError(
            f"{where}: expected a JSON object, got {type(row).__name__}; fix: write each row as "
            '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'
        )
    if "messages" in row and row["messages"] is not None:
        messages = row["messages"]
        if hasattr(messages, "tolist"):
            messages = messages.tolist()
        if not isinstance(messages, list) or not messages:
            raise InputError(
                f"{where}: 'messages' must be a non-empty list of {{role, content}} objects; fix: "
                "e.g. [{\"role\": \"user\", \"content\": \"...\"}]"
            )
        clean = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or set(msg) - {"role", "content"} - {"name"}:
                raise InputError(
                    f"{where}: messages[{i}] must be an object with 'role' and 'content' only; fix: drop other keys"
                )
            role, content = msg.get("role"), msg.get("content")
            if role not in ROLES:
                raise InputError(f"{where}: messages[{i}].role is {role!r}; fix: use one of {sorted(ROLES)}")
            if not isinstance(content, str) or not content.strip():
                raise InputError(f"{where}: messages[{i}].content must be a non-empty string; fix: give it text")
            clean.append({"role": role, "content": content})
    elif "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: 'prompt' must be a non-empty string; fix: give it text")
        clean = [{"role": "user", "content": prompt}]
    else:
        raise InputError(f"{where}: row has neither 'messages' nor 'prompt'; fix: add one of them")
    for i, msg in enumerate(clean):
        if bad := bad_char(msg["content"]):
            raise InputError(f"{where}: {'messages[%d].content' % i if 'messages' in row else 'prompt'} holds {bad}"
                             "; fix: remove it from the text (no table, tokenizer or server takes it)")
    pid = row.get("prompt_id")
    if pid is not None and (not isinstance(pid, str) or not pid):
        raise InputError(f"{where}: 'prompt_id' must be a non-empty string when given; fix: give a string or drop it")
    category, reference = row.get("category"), row.get("reference")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise InputError(f"{where}: 'reference' must be a non-empty string when given; fix: give text or drop it")
    return {
        "prompt_id": pid or prompt_id_of(clean),
        "messages": clean,
        "source": row.get("source"),
        "category": None if category is None else str(category),
        "reference": reference,
        "verify": verify_spec(row.get("verify"), where),
    }



def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """JSON Lines, decoded line by line (a non-UTF-8 line is one bad row); a .json file holding one
    JSON array of rows is accepted too."""
    data = path.read_bytes()
    if path.suffix == ".json" and data.lstrip()[:1] == b"[":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InputError(
                f"{path}:{line}: not UTF-8 text ({exc.reason}); fix: re-encode the file as UTF-8"
            ) from None
        rows = loads(text, str(path), at_line=True)
        yield from ((f"{path} item {i}", row) for i, row in enumerate(rows))
        return
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                where,
                InputError(
                    f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); fix: re-encode the file as UTF-8"
                ),
            )
            continue
        if not line.strip():
            continue
        try:
            yield where, loads(line, where)
        except InputError as exc:
            yield where, exc


def source_files(folder: Path) -> list[Path]:
    """The prompt files of a folder source, in name order (a growing folder for incremental runs)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in {".jsonl", ".json", ".ndjson", ".parquet"}
    )


def iter_files(files: list[Path]) -> Iterator[tuple[str, Any]]:
    """(where, row) of every row of jsonl / json / parquet files, in order; a bad line is a row to report."""
    for f in files:
        if f.suffix == ".parquet":
            try:
                table = pq.read_table(f)
            except Exception as exc:
                raise InputError(
                    f"{f}: unreadable parquet ({' '.join(str(exc).split())}); fix: rewrite the file"
                ) from None
            yield from _iter_table(table, str(f))
        else:
            yield from _iter_jsonl(f)


def _iter_table(table: pa.Table, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(table.to_pylist()):
        yield f"{label} row {i}", row


def _iter_source(cfg: InputConfig, run_dir=None) -> tuple[str, Iterator[tuple[str, Any]]]:
    ref = cfg.path
    if ref == CONVERSATIONS:  # the run's simulated conversations (pipeline/stages/conversation.py)
        table = schemas.read_table(Path(run_dir) / "tables" / "conversation.parquet", "prompts")
        return "conversation", _iter_table(table.select(["prompt_id", "messages", "source", "category"]), ref)
    if cfg.synthesised:  # the kept rows of the run's synth stage (pipeline/stages/synth.py)
        if run_dir is None:
            raise InputError("input.path 'synth:' is made by a run's synth stage; fix: load it inside a run")
        table = schemas.read_table(Path(run_dir) / "tables" / "synth.parquet", "synth")
        kept = table.filter(pc.is_null(table.column("dropped")))
        return "synth", _iter_table(kept.select(["prompt_id", "messages", "source", "category"]), "synth")
    if ref.startswith("bundled:"):
        ref = str(bundled_data_dir() / ref.split(":", 1)[1])
    if ref.startswith("hf:"):
        import datasets

        try:
            ds = datasets.load_dataset(ref[3:], split=cfg.split)
        except Exception as exc:  # datasets raises many types; name the source and move on
            raise InputError(
                f"input.path {cfg.path!r}: cannot load dataset ({' '.join(str(exc).split())[:300]}); fix: "
                "check the name and split, or save it locally"
            ) from None
        return ref, _iter_table(ds.data.table, ref)
    path = Path(ref).expanduser()
    if not path.exists():
        raise InputError(
            f"input.path {cfg.path!r} does not exist; fix: point it at a .jsonl/.parquet file or a dataset folder"
        )
    if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        files = source_files(path)
        if not files:
            raise InputError(
                f"input.path {cfg.path!r} is a folder with no .jsonl/.json/.parquet files and no saved "
                "dataset; fix: put prompt files in it or point at a file"
            )
        return path.name, iter_files(files)
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise InputError(
                f"input.path {cfg.path!r}: not a dataset saved with save_to_disk "
                f"({' '.join(str(exc).split())[:300]}); fix: point at a prompt file or a saved dataset"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise InputError(f"input.split {cfg.split!r} not in {sorted(ds)}; fix: set input.split")
            ds = ds[cfg.split]
        return path.name, _iter_table(ds.data.table, str(path))
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise InputError(
                f"input.path {cfg.path!r}: unreadable parquet ({' '.join(str(exc).split())}); fix: rewrite the file"
            ) from None
        return path.name, _iter_table(table, str(path))
    if path.suffix in {".jsonl", ".json", ".ndjson"}:
        return path.name, _iter_jsonl(path)
    raise InputError(
        f"input.path {cfg.path!r}: unknown format {path.suffix!r}; fix: use .jsonl, .parquet or a dataset folder"
    )


def load_prompts(cfg: InputConfig, *, seed: int = 0, run_dir=None, turns=LAST) -> tuple[pa.Table, LoadReport]:
    """Read, validate, dedup, shuffle and limit conversations, then branch each at `turns` (generate.turns).
    Pure apart from reading the source (`run_dir`: where a `synth:` source's table is)."""
    source, rows = _iter_source(cfg, run_dir)
    report = LoadReport()
    out: list[list[dict]] = []  # per kept conversation, its prompts at `turns`
    seen: dict[str, tuple[str, str]] = {}  # prompt_id -> (messages hash, where it was first seen)
    for where, row in rows:
        report.rows_read += 1
        try:
            if isinstance(row, InputError):
                raise row
            clean = normalise_row(row, where)
            clean["source"] = clean["source"] or source
            picked = branches(clean, turns, where)
        except InputError as exc:
            if not cfg.skip_invalid:
                raise InputError(f"{exc}; or pass --skip-invalid to skip and count invalid rows") from None
            report.invalid.append(str(exc))
            continue
        pid, text_id = clean["prompt_id"], messages_hash(clean["messages"])
        if pid in seen:
            first_text, first_where = seen[pid]
            if first_text == text_id:
                report.duplicates += 1
                continue
            msg = (
                f"{where}: prompt_id {pid!r} was already used by {first_where} for a different prompt; fix: give "
                "each prompt its own prompt_id (or drop the field: the id is then a hash of the messages)"
            )
            if not cfg.skip_invalid:
                raise InputError(f"{msg}; or pass --skip-invalid to skip and count such rows")
            report.conflicts.append(msg)
            continue
        seen[pid] = (text_id, where)
        out.append(picked)
    if not out:
        detail = f" ({len(report.invalid)} invalid rows skipped)" if report.invalid else ""
        raise InputError(
            f"input.path {cfg.path!r} holds no valid prompts{detail}; fix: give a file with at least one prompt"
        )
    if cfg.shuffle:
        random.Random(seed).shuffle(out)
    if cfg.limit is not None:
        out = out[: cfg.limit]
    report.conversations = len(out)
    out = [p for conv in out for p in conv]
    if not out:
        raise InputError(
            f"generate.turns={turns}: no conversation of input.path {cfg.path!r} has such an assistant turn; fix: "
            "pick turns the conversations have (turn 0 is the first assistant reply) or use 'all'"
        )
    return schemas.from_rows(out, "prompts"), report


def funnel(report: LoadReport, kept: int, turns=LAST) -> list[dict]:
    """The drop-funnel entries of the input stage (a `turns` step when conversations branch)."""
    valid = report.rows_read - len(report.invalid)
    unique = valid - report.duplicates
    distinct = unique - len(report.conflicts)
    conversations = kept if turns == LAST else report.conversations
    return [
        step("prompts", "invalid_rows", report.rows_read, valid, "row failed validation (skipped with --skip-invalid)",
             unit="prompts"),
        step("prompts", "duplicate_prompts", valid, unique,
             "exact duplicate of an earlier prompt (same prompt_id and messages)", unit="prompts"),
        step("prompts", "prompt_id_conflicts", unique, distinct,
             "prompt_id reused for different messages (skipped with --skip-invalid)", unit="prompts"),
        step("prompts", "limit", distinct, conversations, "input.limit", unit="prompts"),
    ] + ([] if turns == LAST else [step(
        "prompts", "turns", conversations, kept,
        f"each conversation becomes one prompt per assistant turn generate.turns={turns} picks (none when it has "
        "none of them)", unit="prompts")])


def input_identity(ref: str):
    """What identifies a source in fingerprints: its files' paths, sizes and mtimes (a changed or, for a
    folder, added file changes it), else the reference itself."""
    path = Path(ref).expanduser()
    files = [path] if path.is_file() else source_files(path) if path.is_dir() else []
    return [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files] if files else ref


def fields(cfg) -> dict:
    """The config fields that change this stage's output (synth settings reach it through the synth stage's
    fingerprint; how invalid rows are treated does not change the rows kept); generate.turns only when it
    branches, so configs from before it keep their fingerprints."""
    turns = {} if cfg.generate.turns == LAST else {"turns": cfg.generate.turns}
    return {"seed": cfg.seed, **cfg.input.model_dump(exclude={"skip_invalid", "synth"}), **turns}


def stage_fingerprint(cfg, source_fp: str | None = None) -> str:
    """The input's identity (a file's size and mtime, a dataset's revision), or the fingerprint of the stage
    that made the prompts (synth, or conversation when sources.conversation is on)."""
    made = cfg.input.synthesised or cfg.sources.conversation.enabled
    source_id = source_fp if made else input_identity(cfg.input.path)
    return fingerprint("prompts", VERSION, fields(cfg), source_id)


def _build(run):
    cfg, log = run.cfg, run.log
    source = InputConfig(path=CONVERSATIONS, shuffle=False) if cfg.sources.conversation.enabled else cfg.input
    table, report = load_prompts(source, seed=cfg.seed, run_dir=run.run_dir, turns=cfg.generate.turns)
    if report.invalid:
        log(f"prompts: skipped {len(report.invalid)} invalid rows, first: {report.invalid[0]}")
    if report.conflicts:
        log(
            f"prompts: skipped {len(report.conflicts)} rows reusing a prompt_id for another prompt, first: "
            f"{report.conflicts[0]}"
        )
    log(f"prompts: {table.num_rows} prompts from {cfg.input.path}")
    return table, {
        "source": cfg.input.path,
        "invalid_rows": report.invalid[:20],
        "prompt_id_conflicts": report.conflicts[:20],
        "funnel": funnel(report, table.num_rows, cfg.generate.turns),
    }


def _after(cfg) -> tuple[str | None]:
    return ("conversation",) if cfg.sources.conversation.enabled else ("synth",) if cfg.input.synthesised else (None,)


STAGE = Stage(
    name="prompts",
    reads=(),
    writes="prompts",
    after=_after,
    fields=fields,
    fingerprint=stage_fingerprint,
    build=_build,
)
run = STAGE.run
