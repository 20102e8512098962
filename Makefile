# plumelink: set-up, demo and tests. Each target creates the environment when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.plumelink-installed
OUT    ?= out/demo
PRESET ?= small
EPOCHS ?= 60

.PHONY: setup demo gui test test-all bench bench-paper lint clean

setup: $(STAMP)

# torch first and pinned: 2.13.0 is a local CPU build here, an unpinned torch pulls CUDA (GBs).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,zaber]'
	touch $(STAMP)

# The main job on the simulated bench: a scripted acquisition, then maps -> train -> evaluate
# -> report, and the acquired map transferred from its secondary spectra.
demo: $(STAMP)
	rm -rf $(OUT) && mkdir -p $(OUT)
	$(BIN)/plumelink acquire resources/scans/demo_small.toml --out $(OUT)/acquired.h5
	$(BIN)/plumelink simulate --preset $(PRESET) --out $(OUT) --truth
	$(BIN)/plumelink train --train $(OUT)/train.h5 --val $(OUT)/val.h5 --out $(OUT)/model --epochs $(EPOCHS)
	$(BIN)/plumelink evaluate --model $(OUT)/model --test $(OUT)/test.h5 --report $(OUT)/report
	$(BIN)/plumelink transfer --model $(OUT)/model --input $(OUT)/acquired.h5 --out $(OUT)/acquired_transfer.h5
	@echo "acquired map:       $(OUT)/acquired.h5"
	@echo "model package:      $(OUT)/model"
	@echo "report:             $(OUT)/report/report.html"
	@echo "transferred map:    $(OUT)/acquired_transfer.h5"

# Checks first that Qt can start here; if not, prints the apt-get line of the missing libraries.
gui: $(STAMP)
	$(BIN)/plumelink gui --check
	$(BIN)/plumelink gui

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
	$(BIN)/python benchmarks/bench_drivers.py
	$(BIN)/python benchmarks/bench_acquisition.py
	$(BIN)/python benchmarks/bench_training.py
	QT_QPA_PLATFORM=offscreen $(BIN)/python benchmarks/bench_gui.py

# PAPER = a folder made by `plumelink simulate --preset paper --out PAPER`
PAPER ?= out/paper
bench-paper: $(STAMP)
	$(BIN)/python benchmarks/bench_training_memory.py $(PAPER) --batches 100 --baselines --keep $(PAPER)/model
	$(BIN)/python benchmarks/bench_transfer.py $(PAPER)/test.h5 --model $(PAPER)/model --workdir $(PAPER)

clean:
	rm -rf $(VENV) out build *.egg-info
