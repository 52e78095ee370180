# One entry point for humans and CI. Every target creates .venv on first use and says what it does.
#   make demo    pypods alone (about 70 MB), then examples/client.py         ~10 s on a fresh clone
#   make test    the dev extra (about 750 MB: pytest, mypy, numpy, pandas, Ray), then the offline suite (~9 min)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
DEMO := $(VENV)/.installed-demo
DEV := $(VENV)/.installed-dev
LINTED := src tests examples benchmarks .ci/testrun.py
PYTEST_ARGS ?=

.PHONY: demo test test-network check bench lint format clean

# A venv with uv in it: uv then installs everything else (and pypods builds pods with it).
$(UV):
	@echo "make: creating $(VENV) with $$($(PYTHON) --version) and installing uv into it"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(DEMO): pyproject.toml src/pypods/__init__.py | $(UV)
	@echo "make: installing pypods (no dev tools) into $(VENV)"
	@$(UV) pip install --quiet --python $(BIN)/python -e .
	@touch $@

$(DEV): pyproject.toml src/pypods/__init__.py | $(UV)
	@echo "make: installing pypods with its dev extra into $(VENV) (about 750 MB; a minute the first time)"
	@$(UV) pip install --quiet --python $(BIN)/python -e '.[dev]'
	@touch $@ $(DEMO)

demo: $(DEMO)
	@echo "make: running examples/client.py (three pods; the first run builds their environments, ~5 s)"
	@$(BIN)/python examples/client.py

# Offline: tests that need the package index are marked `network` and run by `make test-network`.
# Ctrl-C or SIGTERM stops the suite and everything it started (workers, uv, a local Ray); `exec` makes
# the runner the process make signals.
test: $(DEV)
	@echo "make: running the test suite (offline, hermetic; about 9 minutes on 2 cores); Ctrl-C stops everything it started"
	@exec env UV_OFFLINE=1 $(BIN)/python .ci/testrun.py -m "not network" $(PYTEST_ARGS)

test-network: $(DEV)
	@echo "make: running the tests that need the package index (PyPI)"
	@exec $(BIN)/python .ci/testrun.py -m network $(PYTEST_ARGS)

check: $(DEV)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

format: $(DEV)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

bench: $(DEV)
	$(UV) pip install --quiet --python $(BIN)/python -e '.[bench]'
	$(BIN)/python benchmarks/run.py --write docs/performance.md
	$(BIN)/python benchmarks/transfer.py --write docs/performance.md
	$(BIN)/python benchmarks/concurrency.py --write docs/performance.md
	$(BIN)/python benchmarks/envs.py --write docs/performance.md
	$(BIN)/python benchmarks/startup.py --write docs/performance.md
	$(BIN)/python benchmarks/ray_backend.py --write docs/performance.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/pods/*/venv examples/pods/*/.pypods
