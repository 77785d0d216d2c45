"""Shared fixtures. Tests run on CPU with the real bundled model on tiny configs (docs/architecture.md rule 9)."""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cli_inproc import run_main

# tier_guard: an unmarked test that loads a model fails (make test-fast); pytester: tests/test_tier_guard.py
pytest_plugins = ["tests.tier_guard", "pytester"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one torch thread each (and in every subprocess they start), not two threads each
    # contending for both cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "configs" / "tiny.yaml"

# Prefect state and results go to a throwaway home; no telemetry; no progress bars in test logs.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefsynth-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.path.join(_PREFECT_HOME, "results"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFSYNTH_PROGRESS"] = "0"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# a drop funnel that does not chain is a bug: fail the run (pipeline/core/funnel.py), also in CLI subprocesses
os.environ["PREFSYNTH_STRICT_FUNNEL"] = "1"


_SHARED_API = None


def shared_prefect_api() -> str:
    """The URL of one Prefect API server for the whole pytest session, started on first use.

    Every `prefsynth` command that runs a flow otherwise starts its own ephemeral API server (about 20 s here);
    a command given PREFECT_API_URL uses that server instead (flows/cli/api_server.py), as it would a user's
    `prefect server start`. The server is flows/cli/api_server.py's guarded one, so it stops with pytest whatever
    ends the session. Tests of the command's own server (interrupts, leftover processes) pass `shared_api=False`."""
    global _SHARED_API
    if _SHARED_API is None:
        from flows.cli.api_server import ApiServer

        server = ApiServer().start()
        server.wait()
        atexit.register(server.stop)
        _SHARED_API = server
    return _SHARED_API.api_url


def use_shared_prefect_api() -> str:
    """Point this process's Prefect clients (in-process flows) at the shared API server."""
    url = shared_prefect_api()
    if os.environ.get("PREFECT_API_URL") != url:
        os.environ["PREFECT_API_URL"] = url
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return url


def cli_env(*, shared_api: bool = True) -> dict:
    """A subprocess's environment: the session's shared Prefect API, or none (a flow then starts its own server)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    if shared_api:
        env["PREFECT_API_URL"] = shared_prefect_api()
    return env


def run_cli(*args: str, timeout: int = 600, shared_api: bool = True) -> subprocess.CompletedProcess:
    """Run the real `prefsynth` console entry point in a subprocess (on the shared Prefect API unless told not to)."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=cli_env(shared_api=shared_api),
                          capture_output=True, text=True, timeout=timeout)


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's `main(argv)` in this process, output captured (tests/cli_inproc.py): for argument handling and
    error messages, where a subprocess would only add an interpreter start."""
    return run_main(list(args))


def _close(a, b, path: str) -> None:
    if isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
        assert same, f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} rows != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, str) and isinstance(b, str) and a != b and a[:1] in "{[" and b[:1] in "{[":
        try:  # a JSON column (a judge's raw distribution) prints its floats rounded
            x, y = json.loads(a), json.loads(b)
        except ValueError:
            x, y = a, b
        assert not isinstance(x, str), f"{path}: {a!r} != {b!r}"
        _close(x, y, path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_rows(got: list, want: list, name: str = "rows") -> None:
    """Rows equal field by field: ids, texts and counts exactly, floats to 1e-4 (a reward model or a reference
    scoring prompts in batches of another size pads differently, which moves the last bits of a score)."""
    _close(got, want, name)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def model():
    """(model, tokenizer, label) of the bundled SmolLM2-135M-Instruct, loaded once."""
    from pipeline.backends.hf import load_causal_lm

    return load_causal_lm("bundled:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled model's tokenizer (its chat template included), loaded once: from the converted folder when it
    exists, else straight from the GGUF file, the tokenizer the conversion saves, without loading the weights
    (so tokenizer-only tests stay in the fast tier on a machine that never converted the model)."""
    from transformers import AutoTokenizer

    from pipeline.backends.model_ref import GGUF_FILE, bundled_smollm2_paths

    gguf_dir, converted = bundled_smollm2_paths()
    if (converted / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(converted)
    return AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)


@pytest.fixture(scope="session")
def seeded_rm(tmp_path_factory) -> str:
    """The bundled model with a seeded score head (judges.reward_model.build_seeded_reward_model, seed 3), built once
    for every test that needs a reward model folder; tests only read it."""
    from judges.reward_model import build_seeded_reward_model

    def build(out: Path) -> None:
        build_seeded_reward_model("bundled:smollm2-135m-instruct", str(out / "rm"), seed=3)

    return str(built_once(tmp_path_factory, "seeded-rm", build) / "rm")


@pytest.fixture(scope="session")
def perturbed_model(model, tmp_path_factory):
    """A copy of the bundled model with seeded noise on its final norm: answers differ from the original's."""
    import torch

    m, tokenizer, _ = model
    out = tmp_path_factory.mktemp("perturbed")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm = m.model.norm.weight
        norm.add_(torch.randn(norm.shape, generator=gen).to(norm) * 0.5)
        m.save_pretrained(out)
        m.load_state_dict(state)  # the shared fixture is left as it was
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def pinned_revisions(monkeypatch):
    """Model revisions pinned to zeros and bundled models resolved without converting: a revision hashes the
    converted folder, which differs between transformers versions, so fingerprints compared against a fixture or
    each other pin it on both sides."""
    from pipeline.backends import model_ref

    model_ref.resolve.cache_clear()
    monkeypatch.setattr(model_ref, "_folder_revision", lambda folder: "0" * 12)
    for name in list(model_ref.BUNDLED):
        monkeypatch.setitem(model_ref.BUNDLED, name, lambda: Path("/nonexistent-bundled"))
    yield
    model_ref.resolve.cache_clear()


def run_fingerprints(cfg) -> tuple[str, dict[str, str]]:
    """(config fingerprint, {stage: fingerprint}) of `cfg`, each stage's chained from its upstream stages in flow
    order, as a run's tables/<stage>.json record them."""
    from pipeline.publish.shards import config_fingerprint
    from pipeline.stages.order import STAGES

    fps: dict[str, str] = {}
    for s in STAGES:
        fps[s.name] = s.fingerprint(cfg, *(None if u is None else fps.get(u) for u in s.upstream(cfg)))
    return config_fingerprint(cfg), fps


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once per pytest session: under pytest-xdist the first worker that
    asks builds it under a file lock in the temporary root all workers share, and the others wait and read it.
    Tests only read it (copy it to change it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    from filelock import FileLock

    out = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(f"{out}.lock"):
        if not (out / ".built").exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that failed half-way
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete CLI run of the tiny config; several tests read its outputs."""

    def build(out: Path) -> None:
        proc = run_cli("run", "--config", str(TINY), "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-4000:]
        (out / "cli-stdout.txt").write_text(proc.stdout)
        (out / "cli-stderr.txt").write_text(proc.stderr)

    return built_once(tmp_path_factory, "tiny-run", build)


# Under pytest-xdist (make test: -n 2) each file runs on one worker, so a module's fixtures are built once; files that
# share a session resource that cannot cross workers (one `vllm serve`) also share a worker. Folders that tests of
# several files read (tiny_run, pairs_run, seeded_rm) are built once across workers by `built_once`.
# (xdist's own --dist loadgroup cannot do this under pytest 9, whose node ids ignore the group xdist appends.)
SAME_WORKER = {"tests/pipeline/test_backends_vllm.py": "vllm-serve",
               "tests/pipeline/test_judges_served.py": "vllm-serve"}
# the longest groups (minutes each) are handed out first, so neither worker is left with one at the end
LONGEST_FIRST = ["vllm-serve", "tests/flows/test_build_dataset.py", "tests/pipeline/train/test_trainer.py",
                 "tests/pipeline/train/test_parallel.py", "tests/flows/test_distributed.py",
                 "tests/flows/test_iterate.py"]


def worker_group(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SAME_WORKER.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return ByGroup(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(worker_group(item.nodeid), len(rank)))  # stable: file order kept
