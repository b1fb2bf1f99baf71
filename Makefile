# Two entry points, both bootstrapping .venv idempotently:
#   make demo   set everything up and run the demo
#   make test   set everything up and run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.taxcut-installed

.PHONY: setup test test-fast lint fmt demo bench clean parity-env

# mergekit (LGPL-3.0) only for the parity tests, in its own venv (never beside taxcut): tests marked `parity` run its
# `mergekit-yaml` from there and skip, saying why, when it is absent. `make test` builds it when CI=true.
PARITY_VENV  := .venv-parity
PARITY_STAMP := $(PARITY_VENV)/.mergekit-installed
parity-env: $(PARITY_STAMP)

$(PARITY_STAMP): constraints.txt
	test -x $(PARITY_VENV)/bin/python || $(PYTHON) -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints.txt torch
	$(PARITY_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints.txt mergekit==0.1.5
	touch $(PARITY_STAMP)

setup: $(STAMP)

# torch first (the CPU wheel pinned in constraints.txt), then the package and its extras under the same constraints.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The formatter and the linter (ruff, configured in pyproject.toml) check the whole tree; `make fmt` fixes it.
lint: setup
	$(VENV)/bin/ruff format --check --quiet . || { echo "make lint: run 'make fmt' to format the tree" >&2; exit 1; }
	$(VENV)/bin/ruff check --quiet .

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: setup lint
	@if [ "$$CI" = "true" ]; then $(MAKE) --no-print-directory parity-env; fi
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

test-fast: setup
	$(PY) -m pytest -m "not slow"

demo: setup
	$(PY) -m taxcut.cli demo

bench: setup
	$(PY) bench/merge_speed.py

clean:
	rm -rf $(VENV) $(PARITY_VENV) build dist src/*.egg-info .pytest_cache
