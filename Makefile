# edgecls: two commands from a fresh clone.
#   make demo   venv + install, build demo digits, train, evaluate, export ONNX (+INT8), classify
#   make test   venv + dev install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv venv-dev clean-demo bench lock help

help:
	@echo "make demo   - train/evaluate/export/classify on the bundled demo digits (CPU, a few minutes)"
	@echo "make test   - run the test suite"
	@echo "make lint   - ruff lint and format check (CI runs it before the tests)"
	@echo "make bench  - run the speed benchmarks (slow; see benchmarks/README.md)"
	@echo "make lock   - regenerate constraints.txt (the exact versions installs use) from a fresh venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime-installed: requirements.txt constraints.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt constraints.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

demo: venv
	PYTHON=$(BIN)/python bash scripts/demo.sh

test: venv-dev
	$(BIN)/python -m pytest -q --durations=25 tests

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh

bench: venv-dev
	PYTHON=$(BIN)/python bash benchmarks/run_all.sh

clean-demo:
	rm -rf demo_data demo_out
