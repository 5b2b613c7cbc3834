# edgecls: two commands from a fresh clone.
#   make demo   venv + install, build demo digits, train, evaluate, export ONNX (+INT8), classify
#   make test   venv + dev install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv venv-dev clean-demo bench help

help:
	@echo "make demo   - train/evaluate/export/classify on the bundled demo digits (CPU, a few minutes)"
	@echo "make test   - run the test suite"
	@echo "make bench  - run the speed benchmarks (slow; see benchmarks/README.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime-installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

demo: venv
	PYTHON=$(BIN)/python bash scripts/demo.sh

test: venv-dev
	$(BIN)/python -m pytest -q tests

bench: venv-dev
	PYTHON=$(BIN)/python bash benchmarks/run_all.sh

clean-demo:
	rm -rf demo_data demo_out
