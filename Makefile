# Targets shared by people and CI. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

export TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:55432/selftune_test
export TEST_ADMIN_DATABASE_URL ?= postgresql://postgres@127.0.0.1:55432/postgres
export TEST_REDIS_URL ?= redis://127.0.0.1:56379/1
# honcho would otherwise hand the web process port 5000.
PORT ?= 8000

.PHONY: venv services run test test-slow test-faults test-unit lint typecheck bench bench-quick bench-profile clean stop

venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

## make run: Redis + PostgreSQL on 127.0.0.1, migrations, a dev key, then web and worker on :8000.
run: venv
	scripts/services.sh up dev
	$(BIN)/selftune-ingest migrate
	@scripts/dev-key.sh
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start -f Procfile -p $(PORT)

## make test: the whole suite against real servers started for the tests (ports 55432, 56379);
## long variants of the fuzz and fault tiers are marked slow and run by make test-slow.
test: venv
	scripts/services.sh up test
	$(BIN)/pytest -q -m "not slow"

test-slow: venv
	scripts/services.sh up test
	$(BIN)/pytest -q -m slow

test-faults: venv
	scripts/services.sh up test
	$(BIN)/pytest -q tests/faults

test-unit: venv
	$(BIN)/pytest -q tests/unit

## make bench: throughput, latency, CPU and RSS against in-run baselines (bench/README.md).
bench: venv
	scripts/services.sh up dev
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: venv
	scripts/services.sh up dev
	$(BIN)/python -m bench.run --quick

bench-profile: venv
	scripts/services.sh up dev
	$(BIN)/python -m bench.run --profile --api-procs 1 --out bench/results/profile-run.json

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

stop:
	scripts/services.sh down dev
	scripts/services.sh down test

clean: stop
	rm -rf .data $(VENV)
