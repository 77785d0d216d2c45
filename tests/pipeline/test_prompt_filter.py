import json

import pytest

from pipeline.config import DecontaminateConfig, DedupConfig
from pipeline.core import schemas
from pipeline.errors import InputError
from pipeline.stages.prompt_filter import contaminated, embed, filter_prompts, ngrams

TEXTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves falling in the park.",
    "what is the capital of france",          # near-duplicate of 0
    "Explain how a bicycle gear system lets a rider climb steep hills with less effort.",
    "What is the capital of Germany?",         # similar form, different question: kept
]


def table(texts):
    return schemas.from_rows([{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": t}]}
                              for i, t in enumerate(texts)], "prompts")


@pytest.mark.slow  # all-MiniLM-L6-v2
def test_embeddings_are_normalised_and_semantic():
    e = embed(TEXTS, "bundled:minilm-l6")
    assert e.shape == (5, 384) and abs(float(e[0] @ e[0]) - 1) < 1e-5
    assert float(e[0] @ e[2]) > 0.9 > float(e[0] @ e[4]) > float(e[0] @ e[1])


@pytest.mark.slow  # all-MiniLM-L6-v2
def test_embeddings_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from pipeline.backends.model_ref import resolve

    st = SentenceTransformer(resolve("bundled:minilm-l6").path, device="cpu")
    want = st.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True)
    assert float((embed(TEXTS, "bundled:minilm-l6") - want).abs().max()) < 1e-5


def rows(drops):
    return drops.select(["prompt_id", "filter", "match"]).to_pylist()


@pytest.mark.slow  # all-MiniLM-L6-v2
def test_near_duplicates_drop_the_later_prompt():
    kept, funnel, dropped = filter_prompts(table(TEXTS), DedupConfig(), DecontaminateConfig())
    assert kept.column("prompt_id").to_pylist() == ["p0", "p1", "p3", "p4"]
    assert rows(dropped) == [{"prompt_id": "p2", "filter": "near_duplicate", "match": "p0"}]
    assert dropped.column("score")[0].as_py() > 0.9
    assert (funnel[0]["rows_in"], funnel[0]["rows_out"]) == (5, 4)


def test_decontamination_records_the_benchmark_id(tmp_path):
    bench = tmp_path / "gsm.jsonl"
    bench.write_text(
        json.dumps({"id": "q17", "question": "Explain how a bicycle gear system lets a rider climb steep hills."})
        + "\n"
    )
    txt = tmp_path / "other.txt"
    txt.write_text("nothing in common here at all with any prompt we have\n")
    cfg = DecontaminateConfig(benchmarks=[str(bench), str(txt)], ngram=8)
    assert contaminated(TEXTS, cfg) == {3: "gsm.jsonl:q17"}
    kept, funnel, dropped = filter_prompts(table(TEXTS), DedupConfig(near_duplicates=False), cfg)
    assert kept.column("prompt_id").to_pylist() == ["p0", "p1", "p2", "p4"]
    assert rows(dropped) == [{"prompt_id": "p3", "filter": "decontaminate", "match": "gsm.jsonl:q17"}]
    assert dropped.column("score").null_count == 1
    assert contaminated(TEXTS, DecontaminateConfig(benchmarks=[str(bench)], ngram=13)) == {}


def test_ngrams_ignore_case_and_punctuation():
    assert ngrams("A, b. C!", 3) == {("a", "b", "c")} and ngrams("a b", 3) == set()


def test_missing_benchmark_file_is_named(tmp_path):
    with pytest.raises(InputError, match="curate.decontaminate.benchmarks: .*nope.jsonl' does not exist"):
        contaminated(TEXTS, DecontaminateConfig(benchmarks=[str(tmp_path / "nope.jsonl")]))


# --- the stage: fingerprints, the drops table, embedding parts (resume, shards) --------------------------------

V01_FINGERPRINT = "8003057b902a0c5f"
V01_CONFIG_FINGERPRINT = "f50add5c9aac6cf6"  # v0.1's publish.config_fingerprint of the tiny config


def test_default_config_keeps_the_v01_fingerprint():
    from pipeline.config import load_config
    from pipeline.publish.shards import config_fingerprint
    from pipeline.stages.prompt_filter import stage_fingerprint
    from tests.conftest import TINY

    tiny = load_config(TINY)
    assert (
        stage_fingerprint(tiny, "prompts-fp") == stage_fingerprint(load_config(None), "prompts-fp") == V01_FINGERPRINT
    )
    assert config_fingerprint(tiny) == V01_CONFIG_FINGERPRINT
    for knob in ("curate.dedup.chunk_prompts=7", "curate.dedup.batch_size=3", "curate.dedup.method=auto"):
        assert stage_fingerprint(load_config(TINY, [knob]), "prompts-fp") == V01_FINGERPRINT, knob
    changed = {
        stage_fingerprint(load_config(TINY, [c]), "prompts-fp")
        for c in (
            "curate.dedup.method=clustered",
            "curate.dedup.probes=4",
            "curate.dedup.exact_max_prompts=10",
            "curate.dedup.minhash.enabled=true",
            "curate.dedup.minhash.ngram=3",
        )
    }
    assert len(changed) == 5 and V01_FINGERPRINT not in changed


STAGE_TEXTS = [*TEXTS, "France: what is its capital?"]  # p5: a paraphrase of p0 (cosine 0.97), p2 a copy by its words


def _run_dir(tmp_path, texts=STAGE_TEXTS):
    schemas.write_table(table(texts), tmp_path / "tables" / "prompts.parquet", "prompts")
    return tmp_path


def _cfg(*overrides):
    from pipeline.config import load_config

    return load_config(None, ["curate.dedup.chunk_prompts=2", *overrides])


@pytest.mark.slow  # all-MiniLM-L6-v2
def test_stage_lists_drops_in_a_table_and_counts_them_in_the_meta(tmp_path):
    from pipeline.stages import prompt_filter

    run_dir = _run_dir(tmp_path)
    logs = []
    meta = prompt_filter.run(run_dir, _cfg("curate.dedup.minhash.enabled=true"), "fp", log=logs.append)
    assert meta["drops"] == {"fuzzy_duplicate": 1, "near_duplicate": 1} and "dropped" not in meta
    assert meta["near_duplicate"]["method"] == "exact" and meta["embed"]["prompts"] == 5
    drops = schemas.read_table(prompt_filter.drops_path(run_dir), "prompt_drops")
    assert rows(drops) == [
        {"prompt_id": "p2", "filter": "fuzzy_duplicate", "match": "p0"},
        {"prompt_id": "p5", "filter": "near_duplicate", "match": "p0"},
    ]
    kept = schemas.read_table(run_dir / "tables" / "prompt_filter.parquet", "prompts")
    assert kept.column("prompt_id").to_pylist() == ["p0", "p1", "p3", "p4"]
    assert [f["filter"] for f in meta["funnel"]] == ["fuzzy_duplicate", "near_duplicate"]
    # the embeddings stay as a cache: a new threshold searches again but embeds nothing
    parts = sorted((run_dir / "tables").glob("prompt_filter.embed.parts-*/part-*.json"))
    assert len(parts) == 3
    logs.clear()
    again = prompt_filter.run(
        run_dir, _cfg("curate.dedup.minhash.enabled=true", "curate.dedup.threshold=0.98"), "fp", log=logs.append
    )
    assert "prompt_filter.embed: nothing left to do, 5 of 5 prompts done in checkpointed parts" in logs
    assert again["drops"] == {"fuzzy_duplicate": 1, "near_duplicate": 0}
    # without MinHash p2 reaches the embedder too: only it is embedded, in a part of its own name
    logs.clear()
    third = prompt_filter.run(run_dir, _cfg(), "fp", log=logs.append)
    assert "prompt_filter.embed: resuming, 5 of 6 prompts already done in checkpointed parts" in logs
    assert sorted(p.name for p in parts[0].parent.glob("*.json")) == [
        "part-000000000.json",
        "part-000000002.json",
        "part-000000003.json",
        "part-000000005.json",
    ]
    assert third["drops"] == {"near_duplicate": 2}


@pytest.mark.slow  # all-MiniLM-L6-v2
def test_a_v01_meta_moves_its_drop_list_into_the_table(tmp_path):
    from pipeline.core.store import write_json
    from pipeline.stages import prompt_filter

    run_dir = _run_dir(tmp_path)
    meta = prompt_filter.run(run_dir, _cfg(), "fp")
    prompt_filter.drops_path(run_dir).unlink()
    old = {k: v for k, v in meta.items() if k != "drops"}
    write_json(
        run_dir / "tables" / "prompt_filter.json",
        {**old, "dropped": [{"prompt_id": "p2", "filter": "near_duplicate", "match": "p0"}]},
    )
    logs = []
    reused = prompt_filter.run(run_dir, _cfg(), "fp", log=logs.append)
    assert "complete output exists" in logs[0] and reused["drops"] == {"near_duplicate": 1} and "dropped" not in reused
    assert rows(schemas.read_table(prompt_filter.drops_path(run_dir), "prompt_drops")) == [
        {"prompt_id": "p2", "filter": "near_duplicate", "match": "p0"}
    ]


@pytest.mark.slow  # all-MiniLM-L6-v2
def test_shards_embed_their_parts_and_the_gathering_call_embeds_nothing(tmp_path, monkeypatch):
    from pipeline.stages import prompt_filter

    run_dir = _run_dir(tmp_path, TEXTS)  # 5 prompts, parts of 2: shard 0 does chunks 0 and 2, shard 1 chunk 1
    cfg = _cfg()
    assert prompt_filter.run(run_dir, cfg, "fp", shard=(0, 2)) == {"stage": "prompt_filter", "shard": [0, 2]}
    parts_dir = next((run_dir / "tables").glob("prompt_filter.embed.parts-*"))
    assert sorted(p.name for p in parts_dir.glob("*.json")) == ["part-000000000.json", "part-000000004.json"]
    prompt_filter.run(run_dir, cfg, "fp", shard=(1, 2))
    assert not (run_dir / "tables" / "prompt_filter.json").exists()

    def no_model(*args, **kwargs):
        raise AssertionError("the gathering call embedded")

    monkeypatch.setattr(prompt_filter, "embed", no_model)
    meta = prompt_filter.run(run_dir, cfg, "fp")
    assert meta["drops"] == {"near_duplicate": 1}


KILL_SCRIPT = """
import sys
from pipeline.stages import prompt_filter
from pipeline.config import load_config
cfg = load_config(None, [f"curate.dedup.chunk_prompts={sys.argv[2]}"])
prompt_filter.run(sys.argv[1], cfg, "fp-kill", log=lambda m: print(m, flush=True))
"""


def kill_while_embedding_then_rerun(folder, n: int, chunk: int) -> dict:
    """Embed `n` prompts in parts of `chunk` in a subprocess, SIGKILL it once two parts are written, rerun it.
    Asserts the rerun keeps the finished parts untouched (same inode and mtime), embeds only the rest and
    commits the stage; returns the parts done before the kill and the rerun's seconds (bench/prompt_filter_kill.py
    calls it at 50k prompts)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, cli_env

    schemas.write_table(
        schemas.from_rows(
            [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(n)], "prompts"
        ),
        folder / "tables" / "prompts.parquet",
        "prompts",
    )
    env = {
        **cli_env(shared_api=False),
        "OMP_NUM_THREADS": "1",
    }  # one thread: short inputs gain little from two, and it keeps time steady on busy machines
    cmd = [sys.executable, "-c", KILL_SCRIPT, str(folder), str(chunk)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while len(list((folder / "tables").glob("prompt_filter.embed.parts-*/part-*.json"))) < 2:
        assert proc.poll() is None and time.time() < deadline, "the stage ended before two parts were written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "tables" / "prompt_filter.json").exists()
    parts_dir = next((folder / "tables").glob("prompt_filter.embed.parts-*"))
    finished = {p.stem for p in parts_dir.glob("part-*.json")}
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts_dir.iterdir() if p.stem in finished}

    start = time.perf_counter()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"prompt_filter.embed: resuming, {chunk * len(finished)} of {n} prompts already done" in again.stdout
    assert {
        name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in ((name, parts_dir / name) for name in before)
    } == before  # finished parts were not embedded again
    keys = [k for p in parts_dir.glob("part-*.json") for k in json.loads(p.read_text())["keys"]]
    assert len(keys) == len(set(keys)) == n
    meta = json.loads((folder / "tables" / "prompt_filter.json").read_text())
    assert meta["embed"]["prompts"] == n and meta["rows"] + sum(meta["drops"].values()) == n
    return {"parts_done": len(finished), "rerun_s": seconds}


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_sigkill_while_embedding_then_rerun_resumes_from_the_parts(tmp_path):
    """A real SIGKILL after some embedding parts of a 5k-prompt input are written: the rerun keeps those part
    files untouched, embeds only the rest and commits the stage (50k: bench/prompt_filter_kill.py)."""
    kill_while_embedding_then_rerun(tmp_path, 5_000, 500)
