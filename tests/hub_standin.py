"""In-process stand-in for the Hugging Face Hub commit API, for tests.

These machines cannot reach the Hub, so tests that publish a dataset run huggingface_hub's real client
against this stand-in instead. It is plugged in through huggingface_hub's official hook,
`huggingface_hub.utils.set_client_factory`: the shared `httpx2.Client` gets an `httpx2.MockTransport` whose
handler answers, from in-memory state, the endpoints that `create_repo`, `create_branch`, `upload_folder`,
`upload_file`, `create_commit`, `repo_info` and `DatasetCard.validate` call. Every file is declared
"regular" at preupload, so contents arrive base64 in the NDJSON commit payload and no LFS/Xet protocol is
involved. Paths are matched on the raw (still URL-encoded) path, so a revision such as `refs%2Fpr%2F1` is
one segment, decoded afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import unquote, urlsplit

import httpx2
import yaml
from huggingface_hub import constants
from huggingface_hub.utils import _http, set_client_factory

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO_ROUTE = re.compile(
    r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(preupload|commit|branch|revision)/([^/]+))?$"
)
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")  # as huggingface_hub.repocard
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


def _git_hash(data: bytes) -> str:
    """Git blob SHA-1: the oid the client compares against to skip unchanged regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _json(status: int, body: dict, error_code: str | None = None) -> httpx2.Response:
    headers = {}
    if status >= 400:
        headers["X-Error-Message"] = body.get("error", "")
        if error_code:
            headers["X-Error-Code"] = error_code
    return httpx2.Response(status, json=body, headers=headers)


def _error(status: int, message: str, error_code: str | None = None) -> httpx2.Response:
    return _json(status, {"error": message}, error_code)


class HubStandIn:
    """In-memory Hub state plus the request handler that reads and mutates it.

    repos:    {repo_id: {"type", "private", "branches": {branch: {path: bytes}}, "heads": {branch: commit oid}}}
    commits:  [{"repo_id", "revision", "message", "description", "added": {path: bytes}, "deleted": [paths]}]
              ("deleted" holds paths as named in the payload; a folder deletion keeps its folder path)
    requests: [{"method", "url", "authorization"}] for every request received, answered or not. This includes
              huggingface_hub's once-per-process telemetry GET /api/agent-harnesses (sent without a token by the
              first header build); it gets a 404, so the client caches an empty registry and writes nothing to disk.
    """

    def __init__(self, endpoint: str = "https://hub-standin.test") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()  # upload_folder commits from a worker thread

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self.requests.append(
                {
                    "method": request.method,
                    "url": str(request.url),
                    "authorization": request.headers.get("authorization"),
                }
            )
            split = urlsplit(str(request.url))
            if f"{split.scheme}://{split.netloc}" != self.endpoint:
                return _error(404, f"stand-in only serves {self.endpoint}")
            raw_path = request.url.raw_path.decode("ascii").split("?", 1)[0]
            if request.method == "POST" and raw_path == "/api/repos/create":
                return self._create_repo(json.loads(request.content or b"{}"))
            if request.method == "POST" and raw_path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(request.content or b"{}"))
            m = _REPO_ROUTE.match(raw_path)
            if m is None:
                return _error(404, f"stand-in has no route for {request.method} {raw_path}")
            repo_type, repo_id, action, rev = _TYPES[m[1]], unquote(m[2]), m[3], unquote(m[4] or "")
            repo = self.repos.get(repo_id)
            if repo is None or repo["type"] != repo_type:
                return _error(404, "Repository not found", "RepoNotFound")
            if request.method == "GET" and action in (None, "revision"):
                return self._repo_info(repo_id, repo, rev or "main")
            if request.method == "POST" and action == "branch":
                return self._create_branch(repo, rev, json.loads(request.content or b"{}"))
            if request.method == "POST" and rev not in repo["branches"]:
                return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if request.method == "POST" and action == "preupload":
                return self._preupload(repo, rev, json.loads(request.content or b"{}"))
            if request.method == "POST" and action == "commit":
                if request.url.params.get("create_pr"):
                    return _error(400, "create_pr is not supported by the stand-in")
                return self._commit(repo_id, repo, rev, request.content)
            return _error(404, f"stand-in has no route for {request.method} {raw_path}")

    # ------------------------------------------------------------------ endpoints
    def _url_prefix(self, repo_type: str) -> str:
        return self.endpoint if repo_type == "model" else f"{self.endpoint}/{repo_type}s"

    def _create_repo(self, body: dict) -> httpx2.Response:
        name, org = body.get("name") or "", body.get("organization")
        repo_id = f"{org}/{name}" if org else (name if "/" in name else f"standin-user/{name}")
        repo_type = body.get("type") or "model"
        url = f"{self._url_prefix(repo_type)}/{repo_id}"
        if repo_id in self.repos:
            return _json(409, {"error": f"You already created this {repo_type} repo", "url": url})
        private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
        head = hashlib.sha1(f"init {repo_type} {repo_id}".encode()).hexdigest()
        self.repos[repo_id] = {
            "type": repo_type,
            "private": private,
            "branches": {"main": {}},
            "heads": {"main": head},
        }
        return _json(200, {"url": url, "name": repo_id, "id": head[:24]})

    def _validate_yaml(self, body: dict) -> httpx2.Response:
        block = _YAML_BLOCK.search(body.get("content") or "")
        if block is None:
            return _json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            meta = yaml.safe_load(block.group(2)) or {}
        except yaml.YAMLError as exc:
            return _json(400, {"errors": [{"message": f"Invalid YAML: {exc}"}], "warnings": []})
        if not isinstance(meta, dict):
            return _json(400, {"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []})
        errors = []
        for i, config in enumerate(meta.get("configs") or []):
            data_files = config.get("data_files") if isinstance(config, dict) else None
            for j, entry in enumerate(data_files if isinstance(data_files, list) else []):
                split = entry.get("split") if isinstance(entry, dict) else None
                if split is not None and not _SPLIT_NAME.match(str(split)):
                    errors.append(
                        {
                            "message": f'"configs[{i}].data_files[{j}].split" with value "{split}" '
                            r'fails to match the required pattern: /^\w+(\.\w+)*$/'
                        }
                    )
        if errors:
            return _json(400, {"errors": errors, "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_id: str, repo: dict, rev: str) -> httpx2.Response:
        if rev not in repo["branches"]:
            return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        tree = repo["branches"][rev]
        return _json(
            200,
            {
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": repo["heads"][rev],
                "private": repo["private"],
                "siblings": [{"rfilename": p} for p in sorted(tree)],
            },
        )

    def _create_branch(self, repo: dict, branch: str, body: dict) -> httpx2.Response:
        if branch in repo["branches"]:
            return _error(409, f"Reference refs/heads/{branch} already exists")
        start = body.get("startingPoint") or "main"
        if start not in repo["branches"]:
            return _error(404, f"Invalid rev id: {start}", "RevisionNotFound")
        repo["branches"][branch] = dict(repo["branches"][start])
        repo["heads"][branch] = repo["heads"][start]
        return _json(200, {})

    def _preupload(self, repo: dict, rev: str, body: dict) -> httpx2.Response:
        tree = repo["branches"][rev]
        files = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": _git_hash(tree[f["path"]]) if f["path"] in tree else None,
            }
            for f in body.get("files", [])
        ]
        return _json(200, {"files": files, "commitOid": repo["heads"][rev]})

    def _commit(self, repo_id: str, repo: dict, rev: str, payload: bytes) -> httpx2.Response:
        lines = [json.loads(line) for line in payload.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _error(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, repo["heads"][rev]):
            return _error(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(repo["branches"][rev])
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    return _error(400, f"unsupported encoding for {path}")
                added[path] = tree[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if path not in tree:
                    return _error(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del tree[path]
                deleted.append(path)
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in tree if p.startswith(prefix)]
                if not gone:
                    return _error(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del tree[p]
                deleted.append(path)
            else:  # lfsFile cannot occur: preupload never answers "lfs"
                return _error(400, f"stand-in does not support commit entries of kind {key!r}")
        oid = hashlib.sha1(f"{repo_id}@{rev}#{len(self.commits)}:{header.get('summary')}".encode()).hexdigest()
        repo["branches"][rev], repo["heads"][rev] = tree, oid
        self.commits.append(
            {
                "repo_id": repo_id,
                "revision": rev,
                "message": header.get("summary"),
                "description": header.get("description", ""),
                "added": added,
                "deleted": deleted,
            }
        )
        url = f"{self._url_prefix(repo['type'])}/{repo_id}/commit/{oid}"
        return _json(200, {"success": True, "commitOid": oid, "commitUrl": url, "hookOutput": ""})


@contextmanager
def hub_standin(endpoint: str = "https://hub-standin.test") -> Iterator[HubStandIn]:
    """Route every request of huggingface_hub's shared session to a fresh `HubStandIn`.

    `set_client_factory` closes the already-created shared session, so the next `get_session()` builds a
    client on the stand-in transport. `constants.ENDPOINT` is also pointed at `endpoint` for the duration,
    because `DatasetCard.validate` (and `HfApi()` without an endpoint) read it instead of taking an argument.
    On exit the previous client factory (huggingface_hub's default) and `constants.ENDPOINT` are restored and
    the session is closed again, so later code gets a real client.
    """
    standin = HubStandIn(endpoint)
    previous_factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    previous_endpoint = constants.ENDPOINT
    transport = httpx2.MockTransport(standin.handle)
    set_client_factory(lambda: httpx2.Client(transport=transport, follow_redirects=True, timeout=None))
    constants.ENDPOINT = standin.endpoint
    try:
        yield standin
    finally:
        constants.ENDPOINT = previous_endpoint
        set_client_factory(previous_factory)
