# One entry point for humans and CI. Every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINTED := src tests examples $(wildcard benchmarks)

.PHONY: demo test check bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	cd examples && ../$(BIN)/python client.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py --write docs/performance.md
	$(BIN)/python benchmarks/transfer.py --write docs/performance.md
	$(BIN)/python benchmarks/concurrency.py --write docs/performance.md
	$(BIN)/python benchmarks/envs.py --write docs/performance.md
	$(BIN)/python -m pip install --quiet -e '.[ray]'
	$(BIN)/python benchmarks/ray_backend.py --write docs/performance.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/pods/*/venv examples/pods/*/.pypods
