# Omni: every command a person runs is a target here. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv drives the workspace; it is installed with pip when missing.
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
PYTEST_ARGS ?=
service ?=
# The benchmark harness runs with the `bench` dependency group (Temporal, DBOS, matplotlib, psutil).
BENCH_ARGS ?=
BENCH := $(RUN) --group bench python -m bench.harness

.PHONY: help install run test test-unit test-integration test-e2e lint fmt proto proto-check clean bench bench-smoke

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-18s %s\n", $$1, $$2}'

install: ## Install uv (if missing) and every workspace package into .venv
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen

run: install ## Start NATS, PostgreSQL, every service and the gateway on http://127.0.0.1:8080
	@$(RUN) omni run

test: install lint proto-check ## Lint, then every test: unit, integration (real NATS + PostgreSQL), end-to-end, bench smoke
	@$(RUN) pytest $(PYTEST_ARGS)
	@$(BENCH) --smoke $(BENCH_ARGS)

test-unit: install ## Tests that need no servers
	@$(RUN) pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-integration: install ## Tests against real NATS and PostgreSQL (service=NAME for one service)
	@$(RUN) pytest -m integration $(if $(service),services/$(service),) $(PYTEST_ARGS)

test-e2e: install ## The whole stack as processes
	@$(RUN) pytest -m e2e tests $(PYTEST_ARGS)

lint: install ## ruff and mypy (strict), configured once at the root
	@$(RUN) ruff check .
	@$(RUN) ruff format --check .
	@$(RUN) mypy libs/*/src services/*/src

fmt: install ## Format the code and fix what ruff can
	@$(RUN) ruff format .
	@$(RUN) ruff check --fix .

proto: install ## Regenerate proto/ (JSON Schemas, AsyncAPI, OpenAPI) and the contract's provider table from the code
	@$(RUN) python -m omni_contract.proto write proto
	@$(RUN) python -m omni_gateway.openapi write proto/openapi.json
	@$(RUN) python -m omni_toolrunner.provider_table write libs/contract/src/omni_contract/provider_table.py

proto-check: install ## Fail when proto/ or the provider table differs from what the code generates
	@$(RUN) python -m omni_contract.proto check proto
	@$(RUN) python -m omni_gateway.openapi check proto/openapi.json
	@$(RUN) python -m omni_toolrunner.provider_table check libs/contract/src/omni_contract/provider_table.py

bench: install ## Omni vs Temporal vs DBOS, full sizes (~10 min): bench/results/<date>.json, bench/README.md
	@$(BENCH) $(BENCH_ARGS)

bench-smoke: install ## Every benchmark scenario for a few seconds, into a temp dir; fails on any error
	@$(BENCH) --smoke $(BENCH_ARGS)

clean: ## Remove local state (.omni/) and caches
	rm -rf .omni .pytest_cache .mypy_cache .ruff_cache
