# CityStream — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= $(HOME)/.cache/citystream/venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,energy,traffic,vision
DEPS_STAMP = $(VENV)/.deps-$(shell cat pyproject.toml | sha256sum | cut -c1-16)-$(subst $(comma),_,$(EXTRAS))
comma := ,
PYTEST_ARGS ?=

.PHONY: help install install-system install-python demo up down status test unit lint format bench clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

install: install-system install-python ## install everything (system packages, Kafka, TimescaleDB, Python deps)

install-system: ## apt packages, TimescaleDB build, Kafka jars (cached; fast when present)
	bash infra/install.sh

install-python: ## Python venv with the project (cached in $(VENV))
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ ! -f "$(DEPS_STAMP)" ]; then \
	  $(PY) -m pip install -q --upgrade pip && \
	  $(PY) -m pip install -q -e ".[$(EXTRAS)]" && touch "$(DEPS_STAMP)"; \
	else \
	  $(PY) -m pip install -q --no-deps -e . ; \
	fi

demo: install ## start the stack and the whole simulated city through the real pipeline; prints the map URL
	$(VENV)/bin/citystream demo

up: ## start the local stack (no install step)
	$(VENV)/bin/citystream up

down: ## stop the local stack
	$(VENV)/bin/citystream down

status: ## show the local stack's services
	$(VENV)/bin/citystream status

test: install ## install everything and run the whole test suite (unit + integration on real services)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install-python ## fast unit tests only (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install-python ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install-python ## apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## run the benchmarks (needs the stack: `make up`); tables printed, JSON in bench/results/
	$(PY) bench/db_ingest.py
	$(PY) bench/bridge.py
	$(PY) bench/api.py

clean: ## stop the stack and delete its state dir (.citystream/)
	-$(VENV)/bin/citystream down
	rm -rf .citystream
