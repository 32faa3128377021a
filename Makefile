# The shop's commands. Everything installs what it needs first; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APP_STAMP := $(VENV)/.installed-app
PORT ?= 8000
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export NO_MKDOCS_2_WARNING := 1

# Installs come from locks, never from what the index serves that day: uv.lock for .venv (the shop
# and its dev, infra and load extras), tools/checkov/uv.lock for .venv-checkov, and uv itself from
# tools/uv/requirements.txt (hashed). uv runs the machine's Python and never downloads one.
UV_HOME := .venv-uv
UV := $(UV_HOME)/bin/uv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
EXTRAS := --extra dev --extra infra --extra load
# The day the locks see the index as it was (pyproject.toml's [tool.uv] exclude-newer).
LOCK_DATE := $(shell sed -n 's/^exclude-newer = "\(.*\)"/\1/p' pyproject.toml)
STALE_LOCK := uv.lock does not match pyproject.toml: run 'make lock' (or 'make upgrade'), then 'make test', and commit both

.PHONY: system-packages install run test test-lowest lint types contracts compose-check unit integration synth bench ladder faults soak clean lock upgrade lock-check docs preflight

$(UV): tools/uv/requirements.txt
	@test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r tools/uv/requirements.txt
	@touch $(UV)

## lock-check: stop, with the fix named, when pyproject.toml changed and uv.lock did not follow
lock-check: $(UV)
	@out=$$($(UV) lock --check --quiet 2>&1) || { case "$$out" in \
	    *"needs to be updated"*) echo "$(STALE_LOCK)" >&2 ;; *) echo "$$out" >&2 ;; esac; exit 1; }

# Exact: .venv holds what uv.lock names for these extras and nothing else.
$(STAMP): pyproject.toml uv.lock $(UV)
	@$(MAKE) --no-print-directory lock-check
	$(UV) sync --locked --quiet $(EXTRAS)
	@touch $(STAMP) $(APP_STAMP)

# `make run` needs the shop alone, not the test tools and the CDK toolchain; --inexact keeps them
# when an earlier `make install` put them there.
$(APP_STAMP): pyproject.toml uv.lock $(UV)
	@$(MAKE) --no-print-directory lock-check
	$(UV) sync --locked --quiet --inexact
	@touch $(APP_STAMP)

## lock: re-lock after editing pyproject.toml, keeping every version that still fits
lock: $(UV)
	$(UV) lock
	$(UV) lock --project tools/checkov

## upgrade: move every lock (uv.lock, tools/checkov/uv.lock, uv itself, the CDK CLI) to the newest allowed;
## then run `make test` and commit the locks only if it passes
upgrade: $(UV)
	sed -i "s/^exclude-newer = .*/exclude-newer = \"$$(date -u +%Y-%m-%dT%H:%M:%SZ)\"/" pyproject.toml tools/checkov/pyproject.toml
	$(UV) lock --upgrade
	$(UV) lock --upgrade --project tools/checkov
	{ sed -n '1,2p' tools/uv/requirements.txt; echo uv | $(UV) pip compile --quiet --exclude-newer "$$(sed -n 's/^exclude-newer = "\(.*\)"/\1/p' pyproject.toml)" --generate-hashes --universal --no-header -p 3.11 -; } > tools/uv/requirements.new
	mv tools/uv/requirements.new tools/uv/requirements.txt
	cd infra && npm install --no-audit --no-fund --save-dev --save-exact aws-cdk@latest
	@echo "locks upgraded: run 'make test' (and 'make test-lowest'), then commit uv.lock, tools/checkov/uv.lock, tools/uv/requirements.txt and infra/package*.json"

# Debian packages some tests and the ladder need (scripts/system-packages.txt); quick when present.
system-packages:
	@./scripts/system-packages.sh

## install: a .venv with the shop, its test tools, the CDK toolchain and Locust, from uv.lock (idempotent)
install: $(STAMP)

## run: migrate, seed and serve on http://127.0.0.1:$(PORT) (docs at /docs), embedded SQLite
run: $(APP_STAMP)
	$(BIN)/shop migrate
	$(BIN)/shop seed --products 1000 --customers 20
	$(BIN)/shop serve --host 127.0.0.1 --port $(PORT)

## test: lint, types, module contracts, compose check, then the whole suite
test: $(STAMP) system-packages lint types contracts compose-check
	@$(UV) sync --locked --check --quiet $(EXTRAS) || { echo ".venv differs from uv.lock: run 'make install'" >&2; exit 1; }
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check app tests infra loadtests scripts
	$(BIN)/ruff format --check app tests infra loadtests scripts

types: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	PYTHONPATH=infra $(BIN)/lint-imports

compose-check: $(STAMP)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

## synth: synthesize every stage offline into infra/cdk.out (cdk-nag runs; no AWS account needed)
synth: $(STAMP)
	cd infra && CDK_OUTDIR=cdk.out ../$(BIN)/python app.py

## docs: the docs site in site/ (strict: a broken link fails), the configuration page regenerated first
docs: $(STAMP)
	$(BIN)/python scripts/settings_reference.py
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs site in site/ (open site/index.html, or preview with .venv/bin/mkdocs serve)"

## preflight: read-only checks that STAGE=n deploys on the first try (REGION=..., SENDER=... for 7)
preflight: $(STAMP)
	@test -n "$(STAGE)" || { echo "make preflight STAGE=n (1-8)" >&2; exit 2; }
	$(BIN)/python infra/preflight.py --stage $(STAGE) $(if $(REGION),--region $(REGION)) $(if $(SENDER),--mail-sender $(SENDER))

## bench: requests/s of the shop's hot routes beside a bare FastAPI route, one worker
bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

## ladder: each stage built natively under CPU budgets, loaded by Locust, measured, torn down;
## results in ladder-results/, report in docs/ladder/ and the README's table (STAGES=3,4 for some; about 74 min for all)
ladder: $(STAMP) system-packages
	$(BIN)/python -m loadtests.ladder $(if $(STAGES),--stages $(STAGES))

## faults: stages 3-7 under a steady load (70 % of the knee), one fault at a time (kill -9 an app or a worker,
## replica, Redis, primary restart and freeze, queue unreachable); report in docs/faults/ (4-12 min a stage, ~40 for all)
faults: $(STAMP) system-packages
	$(BIN)/python -m loadtests.ladder --faults $(if $(STAGES),--stages $(STAGES))

## soak: stage 7 for 30 min at 60 % of its knee: memory, table sizes, queue depth, p95 each minute (about 35 min)
soak: $(STAMP) system-packages
	$(BIN)/python -m loadtests.ladder --soak

## test-lowest: the app's suite (unit, integration, e2e) on the lowest versions pyproject.toml allows
LOWEST := .venv-lowest
test-lowest: $(STAMP)
	rm -rf $(LOWEST)
	$(UV) venv -q --seed $(LOWEST)
	VIRTUAL_ENV=$(LOWEST) $(UV) pip install -q --exclude-newer $(LOCK_DATE) --resolution lowest-direct -e .
	VIRTUAL_ENV=$(LOWEST) $(UV) pip freeze -q --exclude-editable > $(LOWEST)/lowest.txt
	@echo "lowest allowed versions:" && grep -i -E '^(fastapi|starlette|uvicorn|sqlalchemy|psycopg|alembic|pydantic-settings|redis|pyjwt|argon2-cffi|boto3|aiosqlite)==' $(LOWEST)/lowest.txt | tr '\n' ' ' && echo
	VIRTUAL_ENV=$(LOWEST) $(UV) pip install -q --exclude-newer $(LOCK_DATE) -e '.[dev,infra]' -c $(LOWEST)/lowest.txt
	$(LOWEST)/bin/pytest -p no:cacheprovider tests/unit tests/integration tests/e2e

clean:
	rm -rf $(VENV) $(LOWEST) $(UV_HOME) .venv-checkov site .pytest_cache .mypy_cache .ruff_cache cdk.out infra/cdk.out shop.db shop.db-*
