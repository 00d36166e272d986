# videorec: `make run` (the main job on embedded defaults) and `make test`.
# Both do their own set-up: a .venv at the repo root with the pinned stack.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: setup run test lint format bench clean airflow mlflow

setup: $(STAMP)

# Re-installs only when the pins change; a second `make setup` is a no-op.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned stack into $(VENV) (first time: about 5 minutes)"
	$(BIN)/python -m pip install -qq --upgrade pip==25.3
	$(BIN)/python -m pip install -qq -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: setup
	$(BIN)/videorec run

# The Airflow UI (http://localhost:8080) with the DAGs loaded, over var/airflow; the
# login it prints is stored in var/airflow. Ctrl-C stops it.
airflow: setup
	$(BIN)/videorec airflow standalone

# The MLflow UI (http://localhost:5000) over the local tracking store and registry.
mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/var/mlflow/mlflow.db \
		--host 127.0.0.1 --port 5000

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/generator_throughput.py

clean:
	rm -rf var .pytest_cache
