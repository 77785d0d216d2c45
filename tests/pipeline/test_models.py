import json
import os
import subprocess
import sys

import pytest

from pipeline.backends.model_ref import resolve
from pipeline.errors import ModelNotFoundError
from tests.conftest import ROOT


def test_bundled_smollm2_is_a_safetensors_folder():
    m = resolve("bundled:smollm2-135m-instruct")
    files = set(os.listdir(m.path))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert m.revision and m.label.startswith("bundled:smollm2-135m-instruct@")
    assert resolve("bundled:smollm2-135m-instruct").path == m.path


def test_local_folder_resolves_to_itself():
    folder = resolve("bundled:smollm2-135m-instruct").path
    m = resolve(folder)
    assert m.path == folder and m.revision == resolve("bundled:smollm2-135m-instruct").revision


@pytest.mark.parametrize("ref,match", [
    ("bundled:gpt-17", "unknown bundled model 'bundled:gpt-17'"),
    ("/no/such/model", "neither a folder nor a Hub id"),
    ("./missing-folder", "neither a folder nor a Hub id"),
    ("not a model id", "neither a folder nor a Hub id"),
])
def test_missing_models_name_the_field(ref, match):
    with pytest.raises(ModelNotFoundError, match=match) as err:
        resolve(ref, field="generate.model")
    assert str(err.value).startswith("generate.model:")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve(str(tmp_path), field="judge.model")


def test_hub_ids_pass_through_without_network():
    m = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert m.path == "HuggingFaceTB/SmolLM2-135M-Instruct" and m.revision == "hub"


@pytest.mark.slow  # loads all-MiniLM-L6-v2
def test_bundled_minilm_embeds():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve("bundled:minilm-l6").path, device="cpu")
    emb = st.encode(["a cat sits", "a cat is sitting", "stock prices fell"], normalize_embeddings=True)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


CONVERT = """
import json, sys, pipeline.backends.model_ref as m
calls = []
orig = m._convert_gguf
m._convert_gguf = lambda *a: (calls.append(1), orig(*a))[1]
print(json.dumps({"path": str(m.bundled_smollm2()), "converted": len(calls)}))
"""


@pytest.mark.slow
def test_two_processes_convert_once(tmp_path):
    """Two processes race to convert into an empty cache: the lock lets exactly one convert."""
    env = {**os.environ, "PREFSYNTH_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert outs[0]["path"] == outs[1]["path"]
    assert sorted(o["converted"] for o in outs) == [0, 1]
    folder = tmp_path / "models"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp folder left
    # a damaged conversion in the cache (a disk filled mid-write, a partial copy) is detected and rebuilt
    weights = next(p for p in (folder / os.path.basename(outs[0]["path"])).iterdir() if p.suffix == ".safetensors")
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 3])
    again = subprocess.run(
        [sys.executable, "-c", CONVERT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert json.loads(again.stdout.strip().splitlines()[-1])["converted"] == 1
    assert weights.stat().st_size == size


def test_damaged_weights_are_named_before_loading(tmp_path):
    from pipeline.backends.model_ref import weights_problem

    src = resolve("bundled:smollm2-135m-instruct").path
    (tmp_path / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    data = open(os.path.join(src, "model.safetensors"), "rb").read()
    (tmp_path / "model.safetensors").write_bytes(data)
    assert weights_problem(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(data[:-1])
    with pytest.raises(
        ModelNotFoundError, match="generate.model: model folder .* is damaged: model.safetensors is truncated"
    ):
        resolve(str(tmp_path), field="generate.model")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    assert "not a safetensors file" in weights_problem(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "no weight files" in weights_problem(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(data)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    assert "model-00002-of-00002.safetensors" in weights_problem(tmp_path)


def test_torch_bin_without_its_zip_directory_is_truncated(tmp_path):
    import torch

    from pipeline.backends.model_ref import weights_problem

    torch.save({"w": torch.zeros(64)}, tmp_path / "pytorch_model.bin")
    assert weights_problem(tmp_path) is None
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert "zip directory is missing" in weights_problem(tmp_path)


def test_uses_hub_only_for_hub_ids(tmp_path):
    from pipeline.backends.model_ref import uses_hub

    assert uses_hub("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not uses_hub("bundled:smollm2-135m-instruct") and not uses_hub(str(tmp_path)) and not uses_hub("/x/y/z")
