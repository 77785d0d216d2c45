"""The `vllm serve` of the bundled model that every vLLM test module of this package shares (one per session:
starting one takes minutes on 2 cores; tests/pipeline/vllm_serving.py)."""

from __future__ import annotations

import pytest

from tests.pipeline.vllm_serving import Server, need_venv


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    need_venv()
    srv = Server(tmp_path_factory.mktemp("vllm-serve") / "serve.log")
    srv.start()
    yield srv
    srv.stop()
