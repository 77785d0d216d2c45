import pytest

from pipeline import schemas
from pipeline.store import StageStore, run_in_parts


def rows(keys):
    return schemas.from_rows([{"prompt_id": k, "messages": [{"role": "user", "content": k}]} for k in keys], "prompts")


class Boom(Exception):
    pass


def test_resume_redoes_only_unfinished_prompts_whatever_the_chunk_size(tmp_path):
    keys = [f"k{i}" for i in range(7)]
    store = StageStore(tmp_path, "s", "prompts", "fp1")
    calls = []

    def crashing(chunk):
        if len(calls) == 2:
            raise Boom
        calls.append(chunk)
        return rows(chunk), {}

    with pytest.raises(Boom):
        run_in_parts(store, keys, 2, crashing)
    assert store.done_keys() == {"k0", "k1", "k2", "k3"}
    redone = []
    parts = run_in_parts(store, keys, 3, lambda c: (redone.append(c), (rows(c), {}))[1])
    assert redone == [["k4", "k5", "k6"]]
    table = schemas.concat([t for t, _ in parts], "prompts")
    assert sorted(table.column("prompt_id").to_pylist()) == keys  # nothing lost, nothing twice


def test_meta_commits_the_stage_and_other_fingerprints_are_ignored(tmp_path):
    store = StageStore(tmp_path, "s", "prompts", "fp1")
    run_in_parts(store, ["a"], 1, lambda c: (rows(c), {"extra": 1}))
    assert store.meta() is None
    store.finish(rows(["a"]), {"seconds": 1})
    assert store.meta()["rows"] == 1 and not store.parts_dir.exists()
    assert StageStore(tmp_path, "s", "prompts", "fp2").meta() is None
    assert StageStore(tmp_path, "s", "prompts", "fp2").done_keys() == set()


def test_part_without_its_json_does_not_count(tmp_path):
    store = StageStore(tmp_path, "s", "prompts", "fp")
    store.write_part(rows(["a"]), ["a"])
    (store.parts_dir / "part-00000.json").unlink()  # as if killed between the two writes
    assert store.done_keys() == set()
    store.write_part(rows(["a"]), ["a"])
    assert store.done_keys() == {"a"} and len(store.parts()) == 1


def test_run_lock_excludes_a_second_writer_and_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    from pipeline.errors import InputError
    from pipeline.store import run_lock
    from tests.conftest import ROOT

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pipeline.store import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match="another prefsynth run is writing"):
        with run_lock(tmp_path):
            pass
    holder.kill()  # SIGKILL: the OS drops the lock, so a re-run can resume
    holder.wait()
    with run_lock(tmp_path):
        pass
