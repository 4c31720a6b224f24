# `make demo` and `make test` work from a clean clone: each installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench-env bench-streaming-env bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is the CPU build (see pyproject); a looser pin would pull a CUDA build
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mixbatch demo --workdir demo-out

lint: install
	$(BIN)/ruff check src tests benchmarks examples

test: lint
	$(BIN)/python -m pytest -n auto --dist loadfile

# Benchmarks run in their own venv: the anchor libraries they compare with (Hugging Face
# `datasets`, ...) must never become dependencies of the package.
BENCH_VENV  := .venv-bench
BENCH_BIN   := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml benchmarks/requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install -q --upgrade pip
	$(BENCH_BIN)/python -m pip install -q -e . -r benchmarks/requirements-bench.txt
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

# MosaicML Streaming pins numpy<2.2: its own venv; bench_loader.py runs it as a child process
STREAMING_STAMP := .venv-streaming/.installed-stamp

$(STREAMING_STAMP): benchmarks/requirements-streaming.txt
	$(PYTHON) -m venv .venv-streaming
	.venv-streaming/bin/python -m pip install -q -r benchmarks/requirements-streaming.txt
	touch $(STREAMING_STAMP)

bench-streaming-env: $(STREAMING_STAMP)

bench: bench-env bench-streaming-env
	$(BENCH_BIN)/python benchmarks/bench_prepare.py
	$(BENCH_BIN)/python benchmarks/bench_store.py
	$(BENCH_BIN)/python benchmarks/bench_interleave.py
	$(BENCH_BIN)/python benchmarks/bench_loader.py
	$(BENCH_BIN)/python benchmarks/bench_shaping.py
	$(BENCH_BIN)/python benchmarks/bench_proxy.py
	$(BENCH_BIN)/python benchmarks/bench_policies.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache .hypothesis
