import json
import os
import subprocess
import sys

import pytest

from pipeline.errors import ModelNotFoundError
from pipeline.models import resolve
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


def test_bundled_minilm_embeds():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve("bundled:minilm-l6").path, device="cpu")
    emb = st.encode(["a cat sits", "a cat is sitting", "stock prices fell"], normalize_embeddings=True)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


CONVERT = """
import json, sys, pipeline.models as m
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


def test_uses_hub_only_for_hub_ids(tmp_path):
    from pipeline.models import uses_hub

    assert uses_hub("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not uses_hub("bundled:smollm2-135m-instruct") and not uses_hub(str(tmp_path)) and not uses_hub("/x/y/z")
