"""Tests of the Hub stand-in itself (tests/hub_standin.py), not of prefsynth.

Each test drives huggingface_hub's public API (HfApi, DatasetCard) against the stand-in, so the
request/response formats it answers with are the ones the installed client really uses.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, DatasetCardData, HfApi
from huggingface_hub.utils import _http, get_session

from tests.hub_standin import HubStandIn, hub_standin

ENDPOINT = "https://hub-standin.test"
REPO = "prefsynth-org/pairs"
TOKEN = "hf_test_token"


def card_text(split: str = "train") -> str:
    data = DatasetCardData(
        license="apache-2.0",
        pretty_name="pairs",
        configs=[{"config_name": "default", "data_files": [{"split": split, "path": "data/*.parquet"}]}],
    )
    return f"---\n{data.to_yaml()}\n---\n\n# pairs\n"


@pytest.fixture
def hub():
    with hub_standin(ENDPOINT) as standin:
        yield standin, HfApi(endpoint=ENDPOINT, token=TOKEN)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "plots").mkdir()
    (tmp_path / "README.md").write_text(card_text())
    pq.write_table(pa.table({"prompt": ["a", "b"], "score": [1.0, 2.5]}), tmp_path / "data" / "train-00000.parquet")
    (tmp_path / "plots" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nxy")
    return tmp_path


def hub_requests(standin: HubStandIn, start: int = 0) -> list[dict]:
    """Recorded requests, minus huggingface_hub's once-per-process telemetry fetch of /api/agent-harnesses
    (made by the first `_build_hf_headers` call in the process, without a token; the stand-in answers 404)."""
    return [r for r in standin.requests[start:] if urlsplit(r["url"]).path != "/api/agent-harnesses"]


def paths_called(standin: HubStandIn, start: int = 0) -> list[tuple[str, str]]:
    return [(r["method"], urlsplit(r["url"]).path) for r in hub_requests(standin, start)]


def test_create_repo_twice_with_exist_ok_records_a_private_dataset(hub):
    standin, api = hub
    first = api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    second = api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    assert first.repo_id == second.repo_id == REPO and first.repo_type == "dataset"
    assert standin.repos[REPO]["type"] == "dataset" and standin.repos[REPO]["private"] is True
    assert standin.repos[REPO]["branches"] == {"main": {}}
    assert paths_called(standin) == [("POST", "/api/repos/create")] * 2  # the 409 is absorbed by exist_ok


def test_upload_folder_makes_one_commit_with_exactly_the_local_files(hub, folder):
    standin, api = hub
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    start = len(standin.requests)
    info = api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="publish pairs")
    assert len(standin.commits) == 1
    commit = standin.commits[0]
    local = {p: (folder / p).read_bytes() for p in ("README.md", "data/train-00000.parquet", "plots/x.png")}
    assert commit["added"] == local and commit["deleted"] == []
    assert (commit["repo_id"], commit["revision"], commit["message"]) == (REPO, "main", "publish pairs")
    assert standin.repos[REPO]["branches"]["main"] == local
    assert info.oid == standin.repos[REPO]["heads"]["main"] and len(info.oid) == 40
    assert info.repo_url.repo_id == REPO
    # The requests huggingface_hub 2.4 actually makes for upload_folder (no repo_info, no LFS/Xet).
    assert paths_called(standin, start) == [
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/datasets/{REPO}/preupload/main"),
        ("POST", f"/api/datasets/{REPO}/commit/main"),
    ]
    # Re-uploading unchanged files: preupload returns their oids, the client skips the commit and asks repo_info.
    again = api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="again")
    assert len(standin.commits) == 1 and again.oid == info.oid
    assert ("GET", f"/api/datasets/{REPO}/revision/main") in paths_called(standin)


def test_create_commit_adds_and_deletes(hub, folder):
    standin, api = hub
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="first")
    api.create_commit(
        repo_id=REPO,
        repo_type="dataset",
        commit_message="swap plot",
        commit_description="why",
        operations=[
            CommitOperationAdd(path_in_repo="plots/y.png", path_or_fileobj=b"new"),
            CommitOperationDelete(path_in_repo="plots/x.png"),
        ],
    )
    commit = standin.commits[-1]
    assert (commit["message"], commit["description"]) == ("swap plot", "why")
    assert commit["added"] == {"plots/y.png": b"new"} and commit["deleted"] == ["plots/x.png"]
    tree = standin.repos[REPO]["branches"]["main"]
    assert set(tree) == {"README.md", "data/train-00000.parquet", "plots/y.png"} and tree["plots/y.png"] == b"new"
    assert api.dataset_info(REPO).sha == standin.repos[REPO]["heads"]["main"]


def test_branches_receive_their_own_commits(hub, folder):
    standin, api = hub
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="first")
    main_before = dict(standin.repos[REPO]["branches"]["main"])
    api.create_branch(REPO, repo_type="dataset", branch="dev")
    api.create_branch(REPO, repo_type="dataset", branch="dev", exist_ok=True)
    api.upload_file(
        repo_id=REPO, repo_type="dataset", revision="dev", path_in_repo="notes.txt", path_or_fileobj=b"dev"
    )
    branches = standin.repos[REPO]["branches"]
    assert branches["main"] == main_before
    assert branches["dev"] == {**main_before, "notes.txt": b"dev"}
    assert standin.commits[-1]["revision"] == "dev"
    # Revision names travel URL-encoded (feature%2Fx) and are decoded by the stand-in.
    api.create_branch(REPO, repo_type="dataset", branch="feature/x", revision="dev")
    api.upload_file(
        repo_id=REPO, repo_type="dataset", revision="feature/x", path_in_repo="f.txt", path_or_fileobj=b"f"
    )
    assert "feature%2Fx" in standin.requests[-1]["url"] and standin.commits[-1]["revision"] == "feature/x"
    assert branches["feature/x"] == {**branches["dev"], "f.txt": b"f"} and "f.txt" not in branches["dev"]


def test_dataset_card_validate_uses_the_standin_and_rejects_bad_split_names(hub):
    standin, _ = hub
    # DatasetCard.validate(repo_type=None) takes no endpoint: it posts to constants.ENDPOINT, which
    # hub_standin points at the stand-in for the duration of the context.
    DatasetCard(card_text("train")).validate(repo_type="dataset")
    with pytest.raises(ValueError, match="bad-split!"):
        DatasetCard(card_text("bad-split!")).validate(repo_type="dataset")
    assert paths_called(standin) == [("POST", "/api/validate-yaml")] * 2
    assert all(r["url"].startswith(ENDPOINT) for r in standin.requests)


def test_bad_split_name_fails_upload_folder_before_any_commit(hub, folder):
    standin, api = hub
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    (folder / "README.md").write_text(card_text("bad-split!"))
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="x")
    assert standin.commits == []


def test_authorization_header_is_recorded(hub, folder):
    standin, api = hub
    api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True)
    api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="publish")
    api.create_branch(REPO, repo_type="dataset", branch="dev")
    requests = hub_requests(standin)
    assert len(requests) == 5  # create, validate-yaml, preupload, commit, branch
    assert {r["authorization"] for r in requests} == {f"Bearer {TOKEN}"}
    # DatasetCard.validate sends no token at all (huggingface_hub builds no auth header there).
    DatasetCard(card_text()).validate(repo_type="dataset")
    assert standin.requests[-1]["authorization"] is None


def test_unknown_routes_get_a_recorded_404(hub):
    standin, api = hub
    with pytest.raises(Exception, match="404"):
        api.list_repo_refs(REPO, repo_type="dataset")
    assert standin.requests[-1]["method"] == "GET"


def test_exit_restores_the_default_client_factory():
    before = _http._GLOBAL_CLIENT_FACTORY
    with hub_standin() as standin:
        assert get_session().get("https://hub-standin.test/api/nothing").status_code == 404
        assert len(standin.requests) == 1
    assert _http._GLOBAL_CLIENT_FACTORY is before is _http.default_client_factory
    assert not isinstance(get_session()._transport, httpx2.MockTransport)
    assert len(standin.requests) == 1
