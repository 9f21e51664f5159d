# Developer entry points of Loopline's local profile. `make services` starts Airflow,
# MLflow and the model server on 127.0.0.1; `make demo` runs the closed loop on them.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV := .venv
PYTHON := $(VENV)/bin/python
# Written after a complete install. Make compares its time with requirements.txt and
# pyproject.toml, so `make venv` reinstalls only after one of them changed.
VENV_STAMP := $(VENV)/.loopline-installed
# Must match the default in scripts/env.sh.
LOOPLINE_HOME ?= $(CURDIR)/.loopline
# Extra arguments for pytest, e.g. make test PYTEST_ARGS='-m "not e2e" -x'
PYTEST_ARGS ?=
# Set to 1 to accept pytest's exit code 5 (no tests were collected) as success.
ALLOW_NO_TESTS ?=

.PHONY: help venv lock services demo stop status test bench clean-state

help:
	@echo "make venv         create $(VENV) and install requirements.txt and the loopline package"
	@echo "make lock         compile requirements.in into requirements.txt (Python 3.11)"
	@echo "make services     start Airflow, MLflow and the model server on 127.0.0.1"
	@echo "make demo         start the services, then run 'loopline demo'"
	@echo "make status       list the services with their pids and URLs"
	@echo "make stop         stop the services"
	@echo "make test         run pytest; pass arguments with PYTEST_ARGS='...'"
	@echo "make bench        run the six benchmarks against the peers, write docs/benchmarks.md"
	@echo "make clean-state  stop the services, then delete $(LOOPLINE_HOME)"

venv: $(VENV_STAMP)

# pip may install uv into a folder that is not on PATH, so the recipe falls back to
# `python3 -m uv`.
$(VENV_STAMP): requirements.txt pyproject.toml
	if ! command -v uv >/dev/null 2>&1; then \
		echo "uv not found on PATH; installing it with pip"; \
		python3 -m pip install uv; \
	fi
	uv="uv"; command -v uv >/dev/null 2>&1 || uv="python3 -m uv"; \
	if [ ! -x $(PYTHON) ]; then $$uv venv $(VENV) --python 3.11; fi; \
	$$uv pip install --python $(PYTHON) -r requirements.txt; \
	$$uv pip install --python $(PYTHON) --no-deps -e .
	touch $@

lock:
	uv pip compile requirements.in -o requirements.txt --python-version 3.11

services: venv
	scripts/services.sh start

# The demo reads the same ports, state folder and MLflow URI as the services.
demo: services
	source scripts/env.sh && loopline demo

stop:
	scripts/services.sh stop

status:
	scripts/services.sh status

test: venv
	@status=0; $(PYTHON) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ "$$status" -eq 5 ] && [ -n "$(ALLOW_NO_TESTS)" ]; then \
		echo "pytest collected no tests; accepted because ALLOW_NO_TESTS is set"; \
		status=0; \
	fi; \
	exit "$$status"

# Run on demand only, never by `make test`: 8 to 11 minutes on 2 cores so far.
# The peers' environment (bench/.venv-peers) is created on the first run. Pass runner
# options with BENCH_ARGS, e.g. make bench BENCH_ARGS='--only drift,features'.
BENCH_ARGS ?=
bench: venv
	LOOPLINE_BENCH_FROM_MAKE=1 $(PYTHON) bench/run_all.py $(BENCH_ARGS)

clean-state: stop
	@case "$(LOOPLINE_HOME)" in \
		"" | "/" | "$(HOME)" | "$(CURDIR)") \
			echo "error: refusing to delete LOOPLINE_HOME='$(LOOPLINE_HOME)'" >&2; exit 1 ;; \
	esac
	@echo "Deleting $(LOOPLINE_HOME): Airflow and MLflow databases, MLflow artifacts, data partitions, logs and secrets."
	rm -rf -- "$(LOOPLINE_HOME)"
