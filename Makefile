# Every target sets itself up: `make demo` and `make test` are the only set-up commands.
# uv is bootstrapped into .tools/ and installs .venv from the committed uv.lock.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# The connector runs under the Fivetran SDK's tester in an environment of its own: the SDK
# pins versions (cryptography, duckdb) that the project's environment cannot share.
CONNECTOR_VENV := .venv-connector
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Compile bytecode at install: where PYTHONDONTWRITEBYTECODE is set, every command would
# otherwise recompile mlflow, langchain and friends from source (seconds per start).
export UV_COMPILE_BYTECODE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

# The dashboard's browser test drives Debian's Chromium through Playwright (no browser
# download); installed from the distribution's packages when missing.
CHROMIUM ?= $(or $(FINMATCH_TEST_CHROMIUM),/usr/bin/chromium)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-fast lint format bench clean connector-env sync source-api eval app

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra app --python $(PYTHON)
	touch $@

$(CONNECTOR_VENV)/.installed: connector/runner.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(CONNECTOR_VENV)
	$(UV) pip sync --quiet --require-hashes --python $(CONNECTOR_VENV)/bin/python connector/runner.lock
	touch $@

connector-env: $(CONNECTOR_VENV)/.installed

# Pull the source API's records into the embedded warehouse (start `make source-api` first).
sync: $(VENV)/.installed $(CONNECTOR_VENV)/.installed
	$(BIN)/finmatch sync

source-api: $(VENV)/.installed
	$(BIN)/finmatch source-api

# The eval suite with the offline analyst (make test runs it too, in tests/evals).
eval: $(VENV)/.installed
	$(BIN)/finmatch eval

# The dashboard and an agent endpoint of its own, offline on the embedded warehouse.
app: $(VENV)/.installed
	$(BIN)/finmatch seed --if-empty
	$(BIN)/finmatch app

demo: $(VENV)/.installed
	$(BIN)/finmatch seed --if-empty
	$(BIN)/finmatch analyze --focus all

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

test: lint $(CONNECTOR_VENV)/.installed $(CHROMIUM)
	$(BIN)/pytest

# Everything but the tests that start servers, browsers, Postgres, Studio or the connector
# (their markers are in pyproject.toml): what a change to the graphs or tools needs first.
test-fast: lint
	$(BIN)/pytest -m "not (server or browser or postgres or studio or connector)"

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed $(CONNECTOR_VENV)/.installed
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/agents.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/tracing.py
	$(BIN)/python bench/guard.py
	$(BIN)/python bench/checkpoints.py
	$(BIN)/python bench/sync.py

clean:
	rm -rf $(VENV) $(CONNECTOR_VENV) .tools .mypy_cache .pytest_cache .ruff_cache
