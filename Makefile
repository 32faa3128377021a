# The shop's commands. Everything installs what it needs first; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APP_STAMP := $(VENV)/.installed-app
PORT ?= 8000
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: system-packages install run test test-lowest lint types contracts compose-check unit integration synth bench ladder clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,infra,load]'
	@touch $(STAMP) $(APP_STAMP)

# `make run` needs the shop alone, not the test tools and the CDK toolchain.
$(APP_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(APP_STAMP)

# Debian packages some tests and the ladder need (scripts/system-packages.txt); quick when present.
system-packages:
	@./scripts/system-packages.sh

## install: a .venv with the shop, its test tools, the CDK toolchain and Locust (idempotent)
install: $(STAMP)

## run: migrate, seed and serve on http://127.0.0.1:$(PORT) (docs at /docs), embedded SQLite
run: $(APP_STAMP)
	$(BIN)/shop migrate
	$(BIN)/shop seed --products 1000 --customers 20
	$(BIN)/shop serve --host 127.0.0.1 --port $(PORT)

## test: lint, types, module contracts, compose check, then the whole suite
test: $(STAMP) system-packages lint types contracts compose-check
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check app tests infra loadtests
	$(BIN)/ruff format --check app tests infra loadtests

types: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	PYTHONPATH=infra $(BIN)/lint-imports

compose-check: $(STAMP)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

## synth: synthesize every stage offline into infra/cdk.out (cdk-nag runs; no AWS account needed)
synth: $(STAMP)
	cd infra && CDK_OUTDIR=cdk.out ../$(BIN)/python app.py

## bench: requests/s of the shop's hot routes beside a bare FastAPI route, one worker
bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

## ladder: each stage built natively under CPU budgets, loaded by Locust, measured, torn down;
## results in ladder-results/, report in docs/ladder/ (STAGES=3,4 for some; about 25 min for all)
ladder: $(STAMP) system-packages
	$(BIN)/python -m loadtests.ladder $(if $(STAGES),--stages $(STAGES))

## test-lowest: the app's suite (unit, integration, e2e) on the lowest versions pyproject.toml allows
LOWEST := .venv-lowest
test-lowest: $(STAMP)
	rm -rf $(LOWEST)
	$(BIN)/uv venv -q --seed -p $(PYTHON) $(LOWEST)
	VIRTUAL_ENV=$(LOWEST) $(BIN)/uv pip install -q --resolution lowest-direct -e .
	VIRTUAL_ENV=$(LOWEST) $(BIN)/uv pip freeze -q --exclude-editable > $(LOWEST)/lowest.txt
	@echo "lowest allowed versions:" && grep -i -E '^(fastapi|starlette|uvicorn|sqlalchemy|psycopg|alembic|pydantic-settings|redis|pyjwt|argon2-cffi|boto3|aiosqlite)==' $(LOWEST)/lowest.txt | tr '\n' ' ' && echo
	VIRTUAL_ENV=$(LOWEST) $(BIN)/uv pip install -q -e '.[dev,infra]' -c $(LOWEST)/lowest.txt
	$(LOWEST)/bin/pytest -p no:cacheprovider tests/unit tests/integration tests/e2e

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .mypy_cache .ruff_cache cdk.out infra/cdk.out shop.db shop.db-*
