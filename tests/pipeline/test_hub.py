"""`prefsynth push` against an in-process stand-in of the Hub's commit API (tests/hub_standin.py).

The Hub cannot be reached from these machines, so huggingface_hub's real client is pointed, through its
client-factory hook, at a stand-in that implements create repo, branch, preupload and commit. The tests
assert the exact files and paths committed, incremental pushes, and that the token never leaks.
"""

import logging
import shutil

import pytest
from huggingface_hub import DatasetCard

from flows.cli import main
from tests.hub_standin import hub_standin

pytestmark = pytest.mark.slow

TOKEN = "hf_prefsynthSECRETtestTOKEN1234567890"
ENDPOINT = "https://hub-standin.test"
FIRST = {"README.md", "config.yaml", "manifest.json", "pairs/train-00000-of-00001.parquet",
         "plots/length_diff.png", "plots/ln_ches.png", "plots/margins.png", "plots/scores.png"}


@pytest.fixture
def run(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", ENDPOINT)
    with hub_standin(ENDPOINT) as standin:
        yield standin


def test_push_commits_exactly_the_run_files(run, hub, capsys):
    assert main(["push", str(run), "--repo", "org/prefs", "--private"]) == 0
    assert hub.repos["org/prefs"]["private"] is True
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert set(commit["added"]) == FIRST and commit["deleted"] == []
    for path, data in commit["added"].items():
        assert data == (run / path).read_bytes(), path
    manifest = __import__("json").loads((run / "manifest.json").read_text())
    assert commit["message"] == f"prefsynth run tiny (config {manifest['config_fingerprint']})"
    assert commit["revision"] == "main" and hub.repos["org/prefs"]["branches"]["main"].keys() == FIRST
    assert all(r["url"].startswith(ENDPOINT) for r in hub.requests)  # HF_ENDPOINT honoured
    assert f"{ENDPOINT}/datasets/org/prefs/commit/" in capsys.readouterr().out
    # the card the Hub now holds passes huggingface_hub's own validation (the stand-in's validate-yaml)
    DatasetCard(hub.repos["org/prefs"]["branches"]["main"]["README.md"].decode()).validate(repo_type="dataset")


def test_second_push_is_incremental(run, hub, capsys):
    assert main(["push", str(run), "--repo", "org/prefs"]) == 0
    assert main(["push", str(run), "--repo", "org/prefs"]) == 0  # nothing changed: no commit
    assert len(hub.commits) == 1 and "nothing new to push" in capsys.readouterr().out
    # re-publish the same pairs as two shards (an operational knob: every stage is reused)
    from tests.conftest import TINY, run_cli

    proc = run_cli("run", "--config", str(TINY), "--out", str(run), "--set", "publish.shard_rows=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["push", str(run), "--repo", "org/prefs"]) == 0
    second = hub.commits[1]
    assert set(second["added"]) == {"README.md", "config.yaml", "manifest.json",
                                    "pairs/train-00000-of-00002.parquet", "pairs/train-00001-of-00002.parquet"}
    assert second["deleted"] == ["pairs/train-00000-of-00001.parquet"]  # plots unchanged: not re-sent
    tree = hub.repos["org/prefs"]["branches"]["main"]
    assert "pairs/train-00000-of-00001.parquet" not in tree and tree["README.md"] == (run / "README.md").read_bytes()


def test_push_to_a_branch(run, hub):
    assert main(["push", str(run), "--repo", "org/prefs", "--revision", "nightly"]) == 0
    branches = hub.repos["org/prefs"]["branches"]
    assert branches["nightly"].keys() == FIRST and branches["main"] == {}
    assert hub.commits[0]["revision"] == "nightly"


def test_token_never_reaches_output_logs_or_files(run, hub, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert main(["push", str(run), "--repo", "org/prefs"]) == 0
    auth = [r["authorization"] for r in hub.requests if "/api/repos/create" in r["url"] or "/commit/" in r["url"]]
    assert auth and all(a == f"Bearer {TOKEN}" for a in auth)  # the token was used...
    captured = capsys.readouterr()
    assert "push: 8 file(s) added" in captured.err  # prefsynth's own log lines are in what we searched
    assert TOKEN not in captured.out and TOKEN not in captured.err  # ...and never shown
    assert caplog.records and all(TOKEN not in r.getMessage() for r in caplog.records)
    for path in run.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for data in hub.commits[0]["added"].values():
        assert TOKEN.encode() not in data


def test_push_refuses_a_corrupted_run(run, hub, capsys):
    shard = next((run / "pairs").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["push", str(run), "--repo", "org/prefs"]) == 2
    assert f"shard {shard} is corrupted" in capsys.readouterr().err and hub.commits == []


def test_bad_repo_id(run, hub, capsys):
    assert main(["push", str(run), "--repo", "not a repo"]) == 2
    assert "--repo 'not a repo' is not ORG/NAME" in capsys.readouterr().err
