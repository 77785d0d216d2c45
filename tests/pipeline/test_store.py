import pytest

from pipeline.core import schemas
from pipeline.core.store import StageStore, done_rows, run_in_parts


def rows(keys):
    return schemas.from_rows([{"prompt_id": k, "messages": [{"role": "user", "content": k}]} for k in keys], "prompts")


class Boom(Exception):
    pass


def ids(table):
    return table.column("prompt_id").to_pylist()


def test_resume_redoes_only_unfinished_prompts_whatever_the_chunk_size(tmp_path):
    keys = [f"k{i}" for i in range(7)]
    store = StageStore(tmp_path, "s", "prompts", "fp1")
    calls = []

    def crashing(subset):
        if len(calls) == 2:
            raise Boom
        calls.append(ids(subset))
        return subset, {}

    with pytest.raises(Boom):
        run_in_parts(store, rows(keys), 2, lambda: crashing)
    assert store.done_keys() == {"k0", "k1", "k2", "k3"}
    assert done_rows(store, rows(keys)) == 4
    redone = []
    parts = run_in_parts(store, rows(keys), 3, lambda: lambda subset: (redone.append(ids(subset)), (subset, {}))[1])
    assert redone == [["k4", "k5", "k6"]]
    table = schemas.concat([t for t, _ in parts], "prompts")
    assert sorted(table.column("prompt_id").to_pylist()) == keys  # nothing lost, nothing twice


def test_meta_commits_the_stage_and_other_fingerprints_are_ignored(tmp_path):
    store = StageStore(tmp_path, "s", "prompts", "fp1")
    run_in_parts(store, rows(["a"]), 1, lambda: lambda subset: (subset, {"extra": 1}))
    assert store.meta() is None
    store.finish(rows(["a"]), {"seconds": 1})
    assert store.meta()["rows"] == 1 and not store.parts_dir.exists()
    assert StageStore(tmp_path, "s", "prompts", "fp2").meta() is None
    assert StageStore(tmp_path, "s", "prompts", "fp2").done_keys() == set()


def test_part_without_its_json_does_not_count(tmp_path):
    store = StageStore(tmp_path, "s", "prompts", "fp")
    store.write_part(rows(["a"]), ["a"], position=0)
    (store.parts_dir / "part-000000000.json").unlink()  # as if killed between the two writes
    assert store.done_keys() == set()
    store.write_part(rows(["a"]), ["a"], position=0)
    assert store.done_keys() == {"a"} and len(store.parts()) == 1


def test_run_lock_excludes_a_second_writer_and_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    from pipeline.core.store import run_lock
    from pipeline.errors import InputError
    from tests.conftest import ROOT

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pipeline.core.store import run_lock\n"
            f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match="another prefsynth run is writing"):
        with run_lock(tmp_path):
            pass
    holder.kill()  # SIGKILL: the OS drops the lock, so a re-run can resume
    holder.wait()
    with run_lock(tmp_path):
        pass


def test_a_prompt_with_several_rows_is_one_unit(tmp_path):
    """Rows are grouped by prompt_id: a chunk never splits a prompt's rows, and none is done twice."""
    store = StageStore(tmp_path, "s", "prompts", "fp")
    table = schemas.from_rows(
        [
            {"prompt_id": p, "messages": [{"role": "user", "content": f"{p}{i}"}]}
            for p, n in (("a", 2), ("b", 3), ("c", 1))
            for i in range(n)
        ],
        "prompts",
    )
    seen = []
    run_in_parts(store, table, 1, lambda: lambda subset: (seen.append(ids(subset)), (subset, {}))[1])
    assert seen == [["a", "a"], ["b", "b", "b"], ["c"]] and done_rows(store, table) == 6


def recorder(seen):
    """make_work for run_in_parts that records each chunk it is given and counts its own calls."""

    def make():
        seen.setdefault("made", 0)
        seen["made"] += 1
        return lambda subset: (seen.setdefault("chunks", []).append(ids(subset)), (subset, {}))[1]

    return make


def test_shards_split_the_all_prompts_plan_and_the_gathering_call_loads_nothing(tmp_path):
    keys = [f"k{i}" for i in range(7)]
    store = StageStore(tmp_path, "s", "prompts", "fp")
    one, two, gather = {}, {}, {}
    assert run_in_parts(store, rows(keys), 2, recorder(two), shard=(1, 2)) == []  # shard 1 first: no overlap anyway
    assert run_in_parts(store, rows(keys), 2, recorder(one), shard=(0, 2)) == []
    assert one["chunks"] == [["k0", "k1"], ["k4", "k5"]] and two["chunks"] == [["k2", "k3"], ["k6"]]
    parts = run_in_parts(store, rows(keys), 2, recorder(gather))
    assert gather == {}  # every chunk done: make_work (the model load) never ran
    # part names sort in input order, whatever order the shards finished in
    assert schemas.concat([t for t, _ in parts], "prompts").column("prompt_id").to_pylist() == keys


def test_a_late_shard_skips_what_is_done_and_never_duplicates(tmp_path):
    keys = [f"k{i}" for i in range(6)]
    store = StageStore(tmp_path, "s", "prompts", "fp")
    run_in_parts(store, rows(keys[:2]), 2, recorder({}))  # an earlier unsharded run did k0, k1
    late = {}
    run_in_parts(store, rows(keys), 2, recorder(late), shard=(0, 2))
    assert late["chunks"] == [["k4", "k5"]]  # chunk 0 (k0, k1) is done; chunk 2 is its other share
    rest = {}
    parts = run_in_parts(store, rows(keys), 2, recorder(rest))
    assert rest["chunks"] == [["k2", "k3"]]  # the gathering call does what no shard did
    table = schemas.concat([t for t, _ in parts], "prompts")
    assert table.column("prompt_id").to_pylist() == keys


def test_a_damaged_table_or_meta_is_rebuilt_not_reused(tmp_path):
    store = StageStore(tmp_path, "s", "prompts", "fp1")
    store.finish(rows(["a", "b"]), {})
    said = []
    assert store.reuse(said.append)["rows"] == 2 and "not redone" in said[-1]
    data = bytearray(store.table_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a parquet file, other rows
    store.table_path.write_bytes(bytes(data))
    assert store.reuse(said.append) is None and "sha256 mismatch" in said[-1] and "rebuilding" in said[-1]
    store.finish(rows(["a", "b"]), {})
    store.meta_path.write_text(store.meta_path.read_text()[:10])  # a truncated meta
    assert store.reuse(said.append) is None and "unreadable" in said[-1]
    store.finish(rows(["a", "b"]), {})
    assert store.reuse(said.append) is not None


def test_a_meta_without_a_hash_still_checks_the_table(tmp_path):
    import json

    store = StageStore(tmp_path, "s", "prompts", "fp1")
    meta = store.finish(rows(["a", "b"]), {})
    meta.pop("sha256")
    store.meta_path.write_text(json.dumps(meta))  # as written before hashes were recorded
    assert store.reuse(lambda _: None) is not None
    store.table_path.write_bytes(b"not parquet at all")
    said = []
    assert store.reuse(said.append) is None and "not readable parquet" in said[-1]
