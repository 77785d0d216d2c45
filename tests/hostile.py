"""Hostile inputs: bad configs, inputs, run directories, shards and endpoints against the real CLI.

Each case builds its bad input in a scratch folder, runs the CLI's `main(argv)` in this process (or
`python -m flows.cli ...` in a subprocess: with --subprocess, and always for a case that sets a variable
read at import) and counts as handled when the command exits with the expected non-zero status, prints no Python
traceback (Prefect's logged ones included), ends with one `prefsynth...: error: ...` line naming
the fix (argparse's own usage errors name the argument instead), and leaves what was there intact.
No case loads a model: every one must fail in the preflight, in seconds.

    python tests/hostile.py              # prints one line per case, then "N/N handled"
    python tests/hostile.py --subprocess # the same, every case through a fresh `python -m flows.cli`
    python tests/hostile.py --only where # only the cases whose name contains "where"
tests/test_hostile.py runs the same cases in the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "configs" / "tiny.yaml"
PROMPT = {"prompt": "Name a prime number."}


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]  # scratch dir -> CLI arguments (builds the bad input first)
    expect: str  # a piece of the error line that shows the right problem was named
    rc: int = 2
    env: dict = field(default_factory=dict)
    intact: Callable[[Path], bool] | None = None  # what must survive the failed command
    possible: Callable[[], bool] = lambda: True  # whether this machine can build the case at all


# -- builders -----------------------------------------------------------------------------------------------
def jsonl(d: Path, rows, name="p.jsonl") -> str:
    path = d / name
    path.write_bytes(b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode())
                              + b"\n" for r in rows))
    return str(path)


def config(d: Path, text: str | bytes, name="c.yaml") -> str:
    path = d / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def run_args(d: Path, *extra: str, out: str | None = None) -> list[str]:
    return ["run", "--config", str(TINY), "--out", out or str(d / "out"), *extra]


def pairs_rows(n: int = 3, same: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        chosen = f"answer {i}"
        rows.append({"prompt": [{"role": "user", "content": f"question {i}"}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": chosen if same else f"worse {i}"}],
                     "prompt_id": f"p{i}", "chosen_id": f"c{i}", "rejected_id": f"r{i}", "chosen_score": 4.0,
                     "rejected_score": 2.0, "margin": 2.0, "rationale": None, "pair_strategy": "best_vs_worst",
                     "judge_agreement": None, "ches": None, "ln_ches": None, "ref_chosen_logp": None,
                     "ref_rejected_logp": None, "chosen_len": 2, "rejected_len": 2, "label_confidence": None})
    return rows


def fake_run(d: Path, *, n: int = 3, same: bool = False) -> Path:
    """A finished run directory written without a model: shards, manifest, card, config."""
    from pipeline.core import schemas
    from pipeline.core.store import sha256

    run = d / "run"
    (run / "pairs").mkdir(parents=True)
    shard = schemas.write_table(schemas.from_rows(pairs_rows(n, same), "pairs"),
                                run / "pairs" / "train-00000-of-00001.parquet", "pairs")
    manifest = {"name": "fake", "created_at": "2026-12-01T00:00:00+00:00", "code_version": "0.1.0",
                "config": {"given": {}, "resolved": {"publish": {"license": "other"}}}, "config_fingerprint": "0" * 16,
                "stage_fingerprints": {}, "models": {"generator": "g", "judge": "j"},
                "rows": {"prompts": n, "candidates": 2 * n, "judgments": 2 * n, "pairs": n},
                "funnel": [{"stage": "pair", "filter": "strategy", "rows_in": n, "rows_out": n, "reason": "x"}],
                "shards": [{"path": "pairs/train-00000-of-00001.parquet", "rows": n, "sha256": sha256(shard)}],
                "ranked_shards": []}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "README.md").write_text("---\nlicense: other\nconfigs:\n- config_name: default\n  data_files:\n  - split: "
                                   "train\n    path: pairs/train-*\n---\n# fake\n")
    (run / "config.yaml").write_text("name: fake\n")
    return run


_SILENT: list = []


def silent_port() -> int:
    """The port of a socket that listens and never accepts (made once per process): the kernel completes the
    handshake and takes the request, and nothing ever answers."""
    if not _SILENT:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        _SILENT.append(sock)
    return _SILENT[0].getsockname()[1]


def edit_manifest(run: Path, change) -> Path:
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(change(m)))
    return run


def shard_of(run: Path) -> Path:
    return run / "pairs" / "train-00000-of-00001.parquet"


def truncated_model(d: Path) -> str:
    from pipeline.backends.model_ref import resolve

    src = Path(resolve("bundled:smollm2-135m-instruct").path)
    dst = d / "model"
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif f.is_file():
            shutil.copy(f, dst / f.name)
    return str(dst)


def incremental_dir(d: Path) -> Path:
    out = d / "grown"
    (out / "increments" / "00001").mkdir(parents=True)
    (out / "pairs").mkdir()
    (out / "pairs" / "train-inc00001-00000-of-00001.parquet").write_bytes(b"kept")
    (out / "manifest.json").write_text(json.dumps({"incremental": True, "increments": [{"id": 1}], "shards": []}))
    return out


def plain_dir(d: Path) -> Path:
    out = d / "plain"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "prompts.json").write_text("{}")
    return out


@contextlib.contextmanager
def read_only(path: Path):
    """A folder nobody may write, root included (root ignores mode bits: the immutable flag stops it)."""
    path.mkdir()
    path.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


def can_make_read_only() -> bool:
    """False only for root on a filesystem without the immutable flag (the read-only case cannot be built)."""
    probe = Path(tempfile.mkdtemp(prefix="prefsynth-ro-"))
    try:
        with read_only(probe / "d") as d:
            try:
                (d / "x").write_bytes(b"")
                return False
            except OSError:
                return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# -- the cases -----------------------------------------------------------------------------------------------
def cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # configs
    add(Case("config file missing", lambda d: ["run", "--config", str(d / "nope.yaml")], "does not exist"))
    add(Case("config is a folder", lambda d: ["run", "--config", str(d)], "is a folder"))
    add(Case("config not YAML", lambda d: ["run", "--config", config(d, "a: [b\n")], "not valid YAML"))
    add(Case("config a YAML list", lambda d: ["run", "--config", config(d, "- a\n- b\n")], "mapping"))
    add(Case("config not UTF-8", lambda d: ["run", "--config", config(d, b"name: \xff\xfe\n")], "UTF-8"))
    add(Case("config unknown key", lambda d: ["run", "--config", config(d, "generate:\n  nn: 3\n")],
             "unknown config key"))
    bomb = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    bomb += [f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi")]
    add(Case("config YAML alias bomb", lambda d: ["run", "--config", config(d, "\n".join(bomb) + "\nseed: *i\n")],
             "expand to more than 100,000 values"))
    add(Case("config YAML alias refers to itself", lambda d: ["run", "--config", config(d, "seed: &x [1, *x]\n")],
             "refers to the value that contains it"))
    add(Case("--set value out of range", lambda d: run_args(d, "--set", "generate.n=1"), "--set generate.n=1"))
    # issue 39: accepted when it should be refused
    add(Case("--out ''", lambda d: ["run", "--config", str(TINY), "--out", ""], "--out '' is empty"))
    add(Case("train: --out ''", lambda d: ["train", "--data", str(fake_run(d)), "--out", ""], "--out '' is empty"))
    add(Case("--set seed=yes", lambda d: run_args(d, "--set", "seed=yes"), "is a boolean, not a number"))
    add(Case("--set generate.n=true", lambda d: run_args(d, "--set", "generate.n=true"), "'generate.n'"))
    add(Case("run name leaves ./runs", lambda d: ["run", "--config", str(TINY), "--set", "name=../../escaped"],
             "not a folder name inside ./runs"))
    add(Case("run name is '..'", lambda d: ["run", "--config", str(TINY), "--set", "name=.."],
             "not a folder name inside ./runs"))
    add(Case("--set unknown key", lambda d: run_args(d, "--set", "judge.bogus=1"), "--set judge.bogus=1"))
    add(Case("--set without =", lambda d: run_args(d, "--set", "generate.n"), "not key=value"))
    add(Case("--set unknown template", lambda d: run_args(d, "--set", "judge.templates=[nope]"), "unknown ids"))
    add(Case("--set wrong type", lambda d: run_args(d, "--set", "generate.temperature=hot"), "generate.temperature"))
    add(Case("--set bad generate.turns", lambda d: run_args(d, "--set", "generate.turns=first"),
             "--set generate.turns=first"))
    add(Case("generate.turns no conversation has", lambda d: run_args(d, "--set", "generate.turns=[7]"),
             "no conversation of input.path"))
    add(
        Case(
            "threshold filter without threshold",
            lambda d: run_args(d, "--set", "curate.ches.filter=threshold"),
            "curate.ches.threshold",
        )
    )
    add(
        Case(
            "pool smaller than n",
            lambda d: run_args(d, "--set", "generate.pool=[{model: bundled:smollm2-135m-instruct}]"),
            "pool has 1 members",
        )
    )
    # models
    add(
        Case(
            "model folder missing",
            lambda d: run_args(d, "--set", f"generate.model={d}/no/such/model"),
            "neither a folder nor a Hub id",
        )
    )
    add(Case("model folder without config.json", lambda d: run_args(d, "--set", f"judge.model={d}"), "no config.json"))
    add(
        Case(
            "model weights truncated",
            lambda d: run_args(d, "--set", f"generate.model={truncated_model(d)}"),
            "is truncated",
        )
    )
    add(
        Case(
            "unknown bundled model",
            lambda d: run_args(d, "--set", "generate.model=bundled:nope"),
            "unknown bundled model",
        )
    )
    add(
        Case(
            "Hub id that does not exist, offline",
            lambda d: run_args(d, "--set", "generate.model=nobody-xyz/no-model"),
            "nobody-xyz/no-model",
            env={"HF_ENDPOINT": "http://127.0.0.1:9"},
        )
    )
    add(
        Case(
            "train: unknown Hub model",
            lambda d: ["train", "--data", str(fake_run(d)), "--out", str(d / "t"), "--model", "nobody-xyz/no-model"],
            "nobody-xyz/no-model",
            env={"HF_ENDPOINT": "http://127.0.0.1:9"},
        )
    )
    add(
        Case(
            "openai backend: nothing at base_url",
            lambda d: run_args(
                d, "--set", "generate.backend=openai", "--set", "generate.openai.base_url=http://127.0.0.1:9/v1"
            ),
            "does not answer",
        )
    )
    # issue 39: a password in a URL is never printed
    add(Case("openai base_url with a password, nothing there",
             lambda d: run_args(d, "--set", "generate.backend=openai",
                                "--set", "generate.openai.base_url=http://user:hostile_pw@127.0.0.1:9/v1"),
             "does not answer"))
    add(Case("HF_ENDPOINT with a password, Hub model", lambda d: run_args(d, "--set", "generate.model=nobody-xyz/m"),
             "nobody-xyz/m", env={"HF_ENDPOINT": "http://user:hostile_pw@127.0.0.1:9"}))
    add(Case("push: HF_ENDPOINT with a password", lambda d: ["push", str(fake_run(d)), "--repo", "me/data"],
             "cannot reach",
             env={"HF_ENDPOINT": "http://user:hostile_pw@127.0.0.1:9", "HF_TOKEN": "hf_hostile_secret"}))
    add(
        Case(
            "synth: evol seeds missing",
            lambda d: run_args(
                d,
                "--set",
                "input.path=synth:",
                "--set",
                "input.synth.mode=evol",
                "--set",
                f"input.synth.seeds={d}/no.jsonl",
            ),
            "input.synth.seeds",
        )
    )
    add(
        Case(
            "synth: cannot grow a dataset",
            lambda d: run_args(d, "--incremental", "--set", "input.path=synth:"),
            "cannot grow a dataset",
        )
    )
    add(
        Case(
            "synth: unknown mode",
            lambda d: run_args(d, "--set", "input.path=synth:", "--set", "input.synth.mode=dream"),
            "input.synth.mode",
        )
    )
    # decontamination benchmarks
    add(
        Case(
            "benchmark file missing",
            lambda d: run_args(d, "--set", f"curate.decontaminate.benchmarks=[{d}/b.jsonl]"),
            "benchmarks[0]",
        )
    )
    add(
        Case(
            "benchmark of unknown format",
            lambda d: run_args(d, "--set", f"curate.decontaminate.benchmarks=[{config(d, 'x', 'b.csv')}]"),
            "benchmarks[0]",
        )
    )
    # prompt inputs
    add(Case("input missing", lambda d: run_args(d, "--set", f"input.path={d}/none.jsonl"), "does not exist"))
    add(Case("input empty", lambda d: run_args(d, "--set", f"input.path={jsonl(d, [])}"), "no valid prompts"))
    add(
        Case(
            "input bad JSON line",
            lambda d: run_args(d, "--set", f"input.path={jsonl(d, [PROMPT, '{oops'])}"),
            "p.jsonl:2",
        )
    )
    add(
        Case(
            "input row without prompt",
            lambda d: run_args(d, "--set", f"input.path={jsonl(d, [{'q': 1}])}"),
            "neither 'messages' nor 'prompt'",
        )
    )
    add(
        Case(
            "input ends with assistant",
            lambda d: run_args(
                d,
                "--set",
                "input.path="
                + jsonl(d, [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]),
            ),
            "last message",
        )
    )
    add(
        Case(
            "input unknown role",
            lambda d: run_args(
                d, "--set", "input.path=" + jsonl(d, [{"messages": [{"role": "robot", "content": "a"}]}])
            ),
            "role is 'robot'",
        )
    )
    add(
        Case(
            "input non-UTF-8 line",
            lambda d: run_args(d, "--set", "input.path=" + jsonl(d, [PROMPT, b'{"prompt": "caf\xe9"}'])),
            "p.jsonl:2: not UTF-8",
        )
    )
    add(
        Case(
            "input reused prompt_id",
            lambda d: run_args(
                d,
                "--set",
                "input.path=" + jsonl(d, [{"prompt": "a?", "prompt_id": "x"}, {"prompt": "b?", "prompt_id": "x"}]),
            ),
            "already used by",
        )
    )
    add(
        Case(
            "input unknown format",
            lambda d: run_args(d, "--set", f"input.path={config(d, 'a,b', 'p.csv')}"),
            "unknown format",
        )
    )
    add(
        Case(
            "input parquet garbage",
            lambda d: run_args(d, "--set", f"input.path={config(d, 'junk', 'p.parquet')}"),
            "unreadable parquet",
        )
    )
    add(
        Case(
            "input folder without prompt files",
            lambda d: run_args(d, "--set", f"input.path={d}"),
            "no .jsonl/.json/.parquet",
        )
    )
    add(
        Case(
            "input JSON array of non-objects",
            lambda d: run_args(d, "--set", f"input.path={config(d, '[1]', 'p.json')}"),
            "expected a JSON object",
        )
    )
    # output folders
    add(Case("--out is a file", lambda d: run_args(d, out=config(d, "x", "file.txt")), "is a file, not a folder"))
    add(Case("--out under a file", lambda d: run_args(d, out=str(Path(config(d, "x", "f")) / "sub")), "is a file"))
    add(
        Case(
            "--out read-only",
            lambda d: run_args(d, out=str(d / "ro" / "out")),
            "not writable",
            possible=can_make_read_only,
        )
    )
    add(
        Case(
            "plain run on a grown dataset",
            lambda d: run_args(d, out=str(incremental_dir(d))),
            "add --incremental",
            intact=lambda d: (
                (d / "grown" / "pairs" / "train-inc00001-00000-of-00001.parquet").exists()
                and "increments" in json.loads((d / "grown" / "manifest.json").read_text())
            ),
        )
    )
    add(
        Case(
            "--incremental on a plain run",
            lambda d: run_args(d, "--incremental", out=str(plain_dir(d))),
            "drop --incremental",
            intact=lambda d: (d / "plain" / "tables" / "prompts.json").exists(),
        )
    )
    add(
        Case(
            "serve on a plain run",
            lambda d: ["serve", "--config", str(TINY), "--out", str(plain_dir(d)), "--interval", "60"],
            "drop --incremental",
        )
    )
    # run directories read by inspect / card / push
    add(Case("inspect: no such folder", lambda d: ["inspect", str(d / "none")], "not a folder"))
    add(Case("inspect: no manifest", lambda d: ["inspect", str(d)], "not a finished prefsynth run"))
    add(Case("inspect: manifest not JSON", lambda d: ["inspect", str(_broken_json(d))], "not valid JSON"))
    add(
        Case(
            "inspect: manifest is {}",
            lambda d: ["inspect", str(edit_manifest(fake_run(d), lambda m: {}))],
            "not a prefsynth manifest",
        )
    )
    add(
        Case(
            "card: manifest is a list",
            lambda d: ["card", str(edit_manifest(fake_run(d), lambda m: [1, 2]))],
            "JSON list",
        )
    )
    add(
        Case(
            "push: manifest is {}",
            lambda d: ["push", str(edit_manifest(fake_run(d), lambda m: {})), "--repo", "a/b"],
            "not a prefsynth manifest",
        )
    )
    add(
        Case(
            "inspect: shard path leaves the run",
            lambda d: [
                "inspect",
                str(
                    edit_manifest(
                        fake_run(d), lambda m: {**m, "shards": [{**m["shards"][0], "path": "../../etc/passwd"}]}
                    )
                ),
            ],
            "outside",
        )
    )
    add(Case("inspect: shard deleted", lambda d: ["inspect", str(_without_shard(fake_run(d)))], "is missing"))
    add(Case("inspect: shard altered", lambda d: ["inspect", str(_altered_shard(fake_run(d)))], "corrupted"))
    add(Case("inspect: --sample -5", lambda d: ["inspect", str(fake_run(d)), "--sample", "-5"], "negative"))
    add(
        Case(
            "inspect: bad --where",
            lambda d: ["inspect", str(fake_run(d)), "--where", "margin <<< ("],
            "not a valid filter",
        )
    )
    add(
        Case(
            "review: not a run directory", lambda d: ["review", str(d / "nothing-here"), "--port", "0"], "not a folder"
        )
    )
    add(
        Case(
            "review: bad --where",
            lambda d: ["review", str(fake_run(d)), "--port", "0", "--where", "margin <<< ("],
            "not a valid filter",
        )
    )
    add(
        Case(
            "review: --where reads a file",
            lambda d: [
                "review",
                str(fake_run(d)),
                "--port",
                "0",
                "--where",
                "margin > (SELECT count(*) FROM read_csv('/etc/passwd'))",
            ],
            "reads other tables",
        )
    )
    # issue 39: filters are parsed (pipeline/review/where.py), never run as SQL, and bounded
    add(Case("inspect: --where hides a subquery behind a quote in a comment",
             lambda d: ["inspect", str(fake_run(d)), "--where",
                        f"margin > 0 -- '\nOR margin > (SELECT 1 FROM read_csv('{config(d, 'a', 's.csv')}'))"],
             "not a valid filter"))
    add(Case("inspect: --where of 6,000 ORs", lambda d: ["inspect", str(fake_run(d)), "--where",
                                                          " OR ".join(["margin = 1"] * 6000)], "over the limit"))
    add(Case("inspect: --where of 300 ORs", lambda d: ["inspect", str(fake_run(d)), "--where",
                                                        " OR ".join(["margin = 1"] * 300)], "columns and values"))
    add(Case("review: --where of 3,000 ORs", lambda d: ["review", str(fake_run(d)), "--port", "0", "--where",
                                                         " OR ".join(["margin = 1"] * 3000)], "over the limit"))
    for name in ("../../outside", "..", ".hidden"):  # the reviewer's label file must stay inside RUN/reviews/
        add(Case(f"review: --reviewer {name}", lambda d, name=name: ["review", str(fake_run(d)), "--port", "0",
                                                                     "--reviewer", name], "reviewer name"))
    add(Case("push: bad repo id", lambda d: ["push", str(fake_run(d)), "--repo", "not a repo"], "ORG/NAME"))
    add(
        Case(
            "push: endpoint refuses connections",
            lambda d: ["push", str(fake_run(d)), "--repo", "me/data"],
            "cannot reach",
            env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_hostile_secret"},
        )
    )
    add(Case("push: endpoint accepts and never answers", lambda d: ["push", str(fake_run(d)), "--repo", "me/data",
                                                                     "--timeout", "1"],
             "did not answer within --timeout 1 s",
             env={"HF_ENDPOINT": f"http://127.0.0.1:{silent_port()}", "HF_TOKEN": "hf_hostile_secret"}))
    # verifiable prompts and judge checks
    verify_bad = (("verify kind unknown", {"kind": "regex", "answer": "x"}, "'kind' is one of"),
                  ("verify numeric answer text", {"kind": "numeric", "answer": "four"}, "verify.answer"),
                  ("verify tests, no entry_point", {"kind": "tests", "tests": "assert f(1)"}, "verify.entry_point"),
                  ("verify not JSON", "{kind: numeric", "'verify' is not JSON"),
                  ("verify negative tolerance", {"kind": "numeric", "answer": 1, "abs_tol": -1}, "verify.abs_tol"))
    for name, spec, expect in verify_bad:
        add(Case(name, lambda d, spec=spec: run_args(
            d, "--set", f"input.path={jsonl(d, [{**PROMPT, 'verify': spec}])}"), expect))
    add(Case("--set judge.verifiers bogus", lambda d: run_args(d, "--set", "judge.verifiers=sometimes"),
             "judge.verifiers"))
    add(Case("verified pairs without the verifier",
             lambda d: run_args(d, "--set", "pair.strategy=verified", "--set", "judge.verifiers=off"),
             "needs the verifier judge"))
    add(Case("judge-eval: labels missing rejected",
             lambda d: ["judge-eval", "--labels", jsonl(d, [{"prompt": "q", "chosen": "a"}]), "--out", str(d / "je")],
             "missing 'rejected'"))
    add(Case("judge-eval: labels file empty",
             lambda d: ["judge-eval", "--labels", jsonl(d, []), "--out", str(d / "je")], "no labelled pairs"))
    add(Case("eval: model folder missing",
             lambda d: ["eval", "--model", str(d / "no-model"), "--out", str(d / "ev")], "--model"))
    add(Case("iterate: unknown trainer key",
             lambda d: ["iterate", "--out", str(d / "it"), "--set", "iterate.train={stepz: 3}"],
             "iterate.train.stepz"))
    add(Case("iterate: bogus iterate.prompts",
             lambda d: ["iterate", "--out", str(d / "it"), "--set", "iterate.prompts=sometimes"], "iterate.prompts"))
    add(Case("iterate: zero rounds", lambda d: ["iterate", "--out", str(d / "it"), "--rounds", "0"], "iterate.rounds"))
    add(Case("iterate: a mixture share that gives no base candidate",
             lambda d: ["iterate", "--out", str(d / "it"), "--set", "iterate.mixture=0.1"], "iterate.mixture=0.1"))
    # training data
    add(
        Case(
            "train: data missing",
            lambda d: ["train", "--data", str(d / "none"), "--out", str(d / "t")],
            "not a prefsynth run directory",
        )
    )
    add(
        Case(
            "train: shard deleted",
            lambda d: ["train", "--data", str(_without_shard(fake_run(d))), "--out", str(d / "t")],
            "is missing",
        )
    )
    add(
        Case(
            "train: random bytes parquet",
            lambda d: ["train", "--data", config(d, os.urandom(4096), "x.parquet"), "--out", str(d / "t")],
            "not readable parquet",
        )
    )
    add(
        Case(
            "train: truncated parquet",
            lambda d: ["train", "--data", str(_truncated_copy(fake_run(d), d)), "--out", str(d / "t")],
            "not readable parquet",
        )
    )
    add(
        Case(
            "train: 0-row shard",
            lambda d: ["train", "--data", str(fake_run(d, n=0)), "--out", str(d / "t")],
            "0 pairs",
        )
    )
    add(
        Case(
            "train: chosen == rejected everywhere",
            lambda d: ["train", "--data", str(fake_run(d, same=True)), "--out", str(d / "t")],
            "chosen == rejected",
        )
    )
    add(
        Case(
            "train: parallel ddp without torchrun",
            lambda d: ["train", "--data", str(fake_run(d)), "--out", str(d / "t"), "--set", "parallel=ddp"],
            "train.parallel 'ddp' needs processes started by torchrun",
            env={"WORLD_SIZE": ""},
        )
    )
    add(
        Case(
            "train: batch not divisible by the ranks",
            lambda d: ["train", "--data", str(fake_run(d)), "--out", str(d / "t"), "--set", "batch_size=6",
                       "--set", "micro_batch_size=2"],
            "is not a multiple of world size 2 x micro_batch_size 2 = 4",
            env={"WORLD_SIZE": "2"},
        )
    )
    add(
        Case(
            "train: shard lacks columns",
            lambda d: ["train", "--data", _parquet_without_columns(d), "--out", str(d / "t")],
            "lacks column",
        )
    )
    add(
        Case(
            "train: --out is a file",
            lambda d: ["train", "--data", str(fake_run(d)), "--out", config(d, "x", "o")],
            "is a file",
        )
    )
    add(
        Case(
            "train: bad --set",
            lambda d: ["train", "--data", str(fake_run(d)), "--out", str(d / "t"), "--set", "learning_rate=-1"],
            "--set learning_rate=-1",
        )
    )
    return c


def _broken_json(d: Path) -> Path:
    run = fake_run(d)
    (run / "manifest.json").write_text('{"name": "fake", "shards": [')
    return run


def _without_shard(run: Path) -> Path:
    shard_of(run).unlink()
    return run


def _altered_shard(run: Path) -> Path:
    data = bytearray(shard_of(run).read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard_of(run).write_bytes(bytes(data))
    return run


def _truncated_copy(run: Path, d: Path) -> Path:
    dst = d / "cut.parquet"
    dst.write_bytes(shard_of(run).read_bytes()[:-20])
    return dst


def _parquet_without_columns(d: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), d / "cols.parquet")
    return str(d / "cols.parquet")


# -- running them --------------------------------------------------------------------------------------------
# Variables read once at import (huggingface_hub reads HF_ENDPOINT then): a case that sets one needs a fresh process.
IMPORT_TIME_ENV = ("HF_", "PREFECT_API_URL")  # (a flow is reached to show a PREFECT_API_URL that answers nothing)


def _env(extra: dict) -> dict:
    # HF_HUB_OFFLINE too: an in-process CLI run earlier in the same pytest worker sets it (preflight's
    # offline_unless_hub), and a case about a Hub endpoint must reach that endpoint as a user's shell would
    drop = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "PREFECT_API_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PYTHONUNBUFFERED": "1", "PREFSYNTH_PROGRESS": "0", **extra}


def needs_subprocess(case: Case) -> bool:
    return any(k.startswith(IMPORT_TIME_ENV) for k in case.env)


def _in_subprocess(argv: list[str], env: dict) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _in_process(argv: list[str], env: dict) -> tuple[int, str, str]:
    """`flows.cli.main(argv)` here (tests/cli_inproc.py); a case that reaches a flow fails, since every case must
    stop in the preflight and nothing Prefect would log outside the captured streams may go unseen."""
    from tests.cli_inproc import run_main

    proc = run_main(argv, env=env, allow_flows=False)
    return proc.returncode, proc.stdout, proc.stderr


def run_case(case: Case, scratch: Path, *, fresh_process: bool = False) -> tuple[bool, str]:
    """(handled, one line saying why not / the error line). In process unless `fresh_process` or the case sets a
    variable read at import; the checks are the same either way."""
    d = scratch / case.name.replace(" ", "_").replace("/", "_")
    d.mkdir(parents=True)
    with read_only(d / "ro"):
        try:
            argv = case.argv(d)
        except Exception as exc:  # a broken case is a failure of the script, reported as such
            return False, f"case setup failed: {exc!r}"
        runner = _in_subprocess if fresh_process or needs_subprocess(case) else _in_process
        rc, stdout, stderr = runner(argv, _env(case.env))
    out = stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    problems = []
    if rc != case.rc:
        problems.append(f"exit {rc}, expected {case.rc}")
    if "Traceback (most recent call last)" in out:
        problems.append("a Python traceback was printed")
    if not last.startswith("prefsynth") or ": error:" not in last:
        problems.append(f"last line is not an error line: {last[:160]!r}")
    error_text = "\n".join(lines[next((i for i, line in enumerate(lines) if ": error:" in line), len(lines)) :])
    if case.expect not in error_text:
        problems.append(f"error does not name {case.expect!r}: {error_text[:200]!r}")
    if "fix" not in error_text and "usage:" not in stderr:
        problems.append("error names no fix")
    if "hf_hostile_secret" in out:
        problems.append("the token was printed")
    if "hostile_pw" in out:  # a password in a URL's userinfo (HF_ENDPOINT, openai base_url)
        problems.append("a URL's password was printed")
    if case.intact is not None and not case.intact(d):
        problems.append("existing data was damaged")
    return not problems, "; ".join(problems) or last


def run_all(
    cases_: list[Case] | None = None, *, fresh_process: bool = False, workers: int = 2, echo=print
) -> tuple[int, int, list[str]]:
    """Run every case; return (handled, total, failure lines). Cases run in this process one after another (the
    CLI's signal handlers need the main thread), those needing a fresh interpreter in `workers` subprocesses;
    `fresh_process=True` runs every case as `python -m flows.cli`, as a user's shell would."""
    cases_ = cases_ or cases()
    for case in [c for c in cases_ if not c.possible()]:
        echo(f"n/a  {case.name}: this machine cannot build the case (not counted)")
    cases_ = [c for c in cases_ if c.possible()]
    scratch = Path(tempfile.mkdtemp(prefix="prefsynth-hostile-"))
    failures = []
    try:
        apart = [c for c in cases_ if fresh_process or needs_subprocess(c)]
        with ThreadPoolExecutor(workers) as pool:
            done = {id(c): r for c, r in zip(apart, pool.map(lambda c: run_case(c, scratch, fresh_process=True),
                                                             apart))}
        for c in cases_:
            if id(c) not in done:
                done[id(c)] = run_case(c, scratch)
        for case in cases_:
            ok, why = done[id(case)]
            echo(f"{'ok  ' if ok else 'FAIL'} {case.name}: {why}")
            if not ok:
                failures.append(f"{case.name}: {why}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    handled = len(cases_) - len(failures)
    echo(f"{handled}/{len(cases_)} handled")
    return handled, len(cases_), failures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    # --only TEXT (repeatable): just the cases whose name contains one of the texts
    only = [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--only"]
    from tests.hostile_faults import fault_cases  # (imports this module: after sys.path names the checkout)

    everything = cases() + fault_cases()
    picked = [c for c in everything if any(o in c.name for o in only)] if only else everything
    handled, total, _ = run_all(picked, fresh_process="--subprocess" in sys.argv[1:])
    sys.exit(0 if handled == total else 1)
