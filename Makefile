# plumelink: set-up, demo and tests. Each target creates the environment when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.plumelink-installed
OUT    ?= out/demo
PRESET ?= small

.PHONY: setup demo test test-all bench lint clean

setup: $(STAMP)

# torch first and pinned: 2.13.0 is a local CPU build here, an unpinned torch pulls CUDA (GBs).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/plumelink simulate --preset $(PRESET) --out $(OUT) --truth

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

test-all: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_preprocess.py

clean:
	rm -rf $(VENV) out build *.egg-info
