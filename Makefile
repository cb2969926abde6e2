# envbisect: every target installs what it needs, from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo's bad env mirrors a tox env (.tox/py312); any Python >= 3.9 works.
DEMO_PYTHON ?= auto
DEMO_ENV := build/demo/.tox/py312
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit integration bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "envbisect needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python fixtures/build.py env service $(DEMO_ENV) --python $(DEMO_PYTHON)
	$(BIN)/envbisect run --bad $(DEMO_ENV) --good fixtures/minimal.txt --json build/demo/report.json

lint: install
	$(BIN)/ruff check envbisect tests fixtures/build.py $(wildcard bench)
	$(BIN)/ruff format --check envbisect tests fixtures/build.py $(wildcard bench)

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests --ignore=tests/integration

integration: install
	$(BIN)/pytest -q tests/integration

test: lint typecheck
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
