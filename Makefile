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
# make run listens on loopback only (the Procfile's web process, HOST unset, on every interface).
RUN_HOST ?= 127.0.0.1

.PHONY: venv lock services run test test-slow test-faults test-unit lint typecheck bench bench-quick bench-profile clean stop

# The venv installs exactly the locked versions (with their hashes), then the project itself;
# it is rebuilt when pyproject.toml or the lock changes. `make lock` rewrites both locks.
venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

## make lock: requirements.lock (runtime) and requirements-dev.lock (runtime + dev) from pyproject.toml,
## hashes included; the dev lock keeps the runtime lock's versions. LOCK_ARGS=--upgrade takes the newest
## versions pyproject.toml allows; LOCK_ARGS="--upgrade-package NAME" just one.
LOCK_FLAGS := -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: venv
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) -o requirements.lock pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --extra dev -c requirements.lock \
		-o requirements-dev.lock pyproject.toml

## make run: Redis + PostgreSQL on 127.0.0.1, migrations, a dev key, then web, worker and maintain on :8000.
run: venv
	scripts/services.sh up dev
	$(BIN)/selftune-ingest migrate
	@scripts/dev-key.sh
	HOST=$(RUN_HOST) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start -f Procfile -p $(PORT) web worker maintain

## make test: the whole suite against real servers started for the tests (ports 55432, 56379);
## long variants (fuzz, fault scenarios) are marked slow and run by make test-slow; make test-faults runs tests/e2e/faults.
test: venv
	scripts/services.sh up test
	$(BIN)/pytest -q -m "not slow"

test-slow: venv
	scripts/services.sh up test
	$(BIN)/pytest -q -m slow

test-faults: venv
	scripts/services.sh up test
	$(BIN)/pytest -q tests/e2e/faults

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
