"""`prefsynth push`: publish a run's shards, card, plots, config and manifest to the Hugging Face Hub.

One push is one commit (`create_repo` + `create_commit`) whose message names the run and its
config fingerprint. Pushes are incremental: RUN/.push/<repo>@<revision>.json records the sha256
of every file last pushed there, so the next push adds only new or changed files (new shards, the
updated card) and deletes files it pushed before that the run no longer has (stale shards). A push
with nothing new makes no commit. Shards are verified against the manifest first, and the card's
YAML is validated locally, so a broken run is never published. Review labels added since the
run was last published are applied first (pipeline/publish/shards.py `republish`).

The token comes from `token=`, else `HF_TOKEN` or the Hugging Face login (huggingface_hub's own
lookup); it is never logged, printed or written (errors are re-raised without request headers).
`HF_ENDPOINT` is read at push time, so it is honoured even when set after import. Every Hub request has a
timeout (`timeout=`, `prefsynth push --timeout`): huggingface_hub's own client waits forever on an endpoint that
accepts and never answers (issue 39).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.backends.model_ref import HUB_ID
from pipeline.core.rundir import verify_shards
from pipeline.core.store import sha256, write_json
from pipeline.errors import BackendError, ConfigError, InputError
from pipeline.publish.card import SPLIT_NAME
from pipeline.publish.shards import republish

ALWAYS = ("README.md", "config.yaml", "manifest.json")


def files_to_push(run_dir: Path, manifest: dict) -> dict[str, Path]:
    """{path in repo: local file}: verified shards, card, config, manifest and plots."""
    files = {p.relative_to(run_dir).as_posix(): p
             for key in ("shards", "ranked_shards") for p in verify_shards(run_dir, manifest, key)}
    for name in ALWAYS:
        if not (run_dir / name).is_file():
            raise InputError(f"{run_dir / name} is missing; fix: run `prefsynth card {run_dir}` or re-run the job")
        files[name] = run_dir / name
    for png in sorted((run_dir / "plots").glob("*.png")):
        files[f"plots/{png.name}"] = png
    return files


def check_card(run_dir: Path) -> None:
    """The card must parse as Hugging Face card metadata with valid split names (checked locally)."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard((run_dir / "README.md").read_text())
    except Exception as exc:
        raise InputError(
            f"{run_dir / 'README.md'} is not a valid dataset card ({exc}); fix: `prefsynth card {run_dir}`"
        ) from None
    for config in card.data.to_dict().get("configs") or []:
        for f in config.get("data_files", []):
            if not SPLIT_NAME.match(str(f.get("split", ""))):
                raise InputError(f"card split {f.get('split')!r} does not match {SPLIT_NAME.pattern}")


def record_path(run_dir: Path, repo_id: str, revision: str) -> Path:
    return run_dir / ".push" / f"{repo_id.replace('/', '__')}@{revision}.json"


def read_record(record: Path) -> dict[str, str]:
    """What an earlier push to this repo and branch sent ({path: sha256}); {} when none did. A record that is not
    that (cut short, edited, a folder) is refused with its fix, not read as a traceback or as 'all pushed'."""
    if not record.exists() and not record.is_symlink():
        return {}
    try:
        pushed = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        pushed = exc
    if not isinstance(pushed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pushed.items()):
        what = f"unreadable ({type(pushed).__name__}: {pushed})" if isinstance(pushed, Exception) else "not a JSON " \
            "object of file paths and sha256 digests"
        raise InputError(f"push record {record} is {what[:200]}; fix: delete it (the next push then sends every file "
                         "again and the Hub keeps only what changed)")
    return pushed


def plan(files: dict[str, Path], pushed: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(adds {path: sha256} of new or changed files, deletes [paths pushed before, gone now])."""
    now = {path: sha256(local) for path, local in files.items()}
    adds = {p: h for p, h in now.items() if pushed.get(p) != h}
    deletes = sorted(p for p in pushed if p not in now)
    return adds, deletes


def use_timeout(seconds: float) -> None:
    """A timeout on huggingface_hub's shared HTTP client (its default client has none): connecting, sending, or
    waiting for the next bytes of an answer gives up after `seconds`. Set on the client itself, so a client
    factory the user (or a test's stand-in) installed keeps its transport."""
    import httpx2
    from huggingface_hub import get_session

    get_session().timeout = httpx2.Timeout(seconds, connect=min(seconds, 15.0))


def push(
    run_dir, repo_id: str, *, private: bool = False, revision: str | None = None, token: str | None = None,
    timeout: float = 60.0, log=print
) -> dict:
    """Push the run; return {"commit_url", "added", "deleted"} (commit_url None when nothing changed)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not HUB_ID.match(repo_id):
        raise ConfigError(f"--repo {repo_id!r} is not ORG/NAME; fix: e.g. --repo my-org/my-preferences")
    if not timeout > 0:
        raise ConfigError(f"--timeout {timeout}: not a positive number of seconds; fix: e.g. --timeout 60")
    use_timeout(timeout)
    run_dir = Path(run_dir)
    manifest = republish(run_dir, only_if_changed=True, log=log)  # review labels not yet in the shards
    files = files_to_push(run_dir, manifest)
    check_card(run_dir)
    branch = revision or "main"
    record = record_path(run_dir, repo_id, branch)
    pushed = read_record(record)
    adds, deletes = plan(files, pushed)
    if not adds and not deletes:
        log(f"push: {repo_id}@{branch} already has this run (fingerprint {manifest['config_fingerprint']}); no commit")
        return {"commit_url": None, "added": [], "deleted": []}
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p])) for p in sorted(adds)]
    ops += [CommitOperationDelete(path_in_repo=p) for p in deletes]
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, repo_type="dataset", exist_ok=True)
        info = api.create_commit(
            repo_id,
            ops,
            repo_type="dataset",
            revision=branch,
            commit_message=f"prefsynth run {manifest['name']} (config {manifest['config_fingerprint']})",
            commit_description=f"{manifest['rows']['pairs']} pairs; {len(adds)} files added or updated, "
            f"{len(deletes)} deleted",
        )
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        fix = ("; fix: set HF_TOKEN (or `hf auth login`) to a token with write access to " + repo_id
               if status in (401, 403) else f"; fix: check --repo {repo_id} and that the token in HF_TOKEN may write "
               "to it, then rerun the same command (nothing was committed)")
        raise BackendError(f"push to {repo_id}@{branch} failed (HTTP {status}): {str(exc).splitlines()[0]}{fix}") \
            from None
    except Exception as exc:  # the HTTP transport's own errors: refused, DNS, timeout, TLS (no request headers kept)
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        if "timeout" in type(exc).__name__.lower():
            raise BackendError(
                f"push to {repo_id}@{branch} failed: {endpoint} did not answer within --timeout {timeout:g} s "
                f"({type(exc).__name__}); fix: check HF_ENDPOINT and the network, or pass a longer --timeout, then "
                "rerun the same command (nothing was committed)") from None
        raise BackendError(
            f"push to {repo_id}@{branch} failed: cannot reach {endpoint} ({type(exc).__name__}: "
            f"{reason}); fix: check the network and HF_ENDPOINT, then rerun the same command (nothing "
            "was committed)"
        ) from None
    write_json(record, {p: sha256(local) for p, local in files.items()})
    log(f"push: {len(adds)} file(s) added or updated, {len(deletes)} deleted in {info.commit_url}")
    return {"commit_url": info.commit_url, "added": sorted(adds), "deleted": deletes}
