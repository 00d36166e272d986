# videorec: `make run` (the main job on embedded defaults) and `make test`.
# Both do their own set-up: a .venv at the repo root with the pinned stack.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

# Which stack .venv holds: the CPU one, or with GPU=1 the CUDA one (torch's CUDA build
# and faiss-gpu: requirements-gpu.txt, locked by constraints-gpu.txt; README, "GPU").
# Left unset, GPU follows the venv's flavour (.venv/.flavour; CPU for a new venv or one
# set up before GPU=1 existed), so `make test` in a GPU venv stays on the GPU stack.
# Naming the other flavour (`make setup GPU=1` on a CPU venv, `GPU=0` on a GPU one)
# rebuilds .venv from scratch: the two stacks never mix in one venv.
FLAVOUR := $(VENV)/.flavour
GPU_STAMP := $(VENV)/.installed-gpu
ifeq ($(origin GPU),command line)
  ifeq ($(filter 0 1,$(GPU)),)
    $(error GPU=$(GPU): use GPU=1 for the CUDA stack or GPU=0 for the CPU one)
  endif
else ifeq ($(filter 0 1,$(GPU)),)
  GPU := $(if $(filter gpu,$(shell cat $(FLAVOUR) 2>/dev/null)),1,0)
endif
SETUP_STAMP := $(if $(filter 1,$(GPU)),$(GPU_STAMP),$(STAMP))

# The GPU set: requirements.txt and constraints.txt without the projects that
# requirements-gpu.txt marks "replaces NAME" (torch's CPU build, faiss-cpu), plus
# requirements-gpu.txt and constraints-gpu.txt. `make gpu-set GPU_SET=DIR` writes it to
# DIR/requirements.txt and DIR/constraints.txt (tests/test_gpu_requirements.py resolves
# that in CI); the GPU install composes it the same way.
GPU_SET ?= $(VENV)/gpu-set
GPU_REPLACED := $(shell sed -n '/^[A-Za-z0-9]/s/.*[[:space:]]replaces[[:space:]]\{1,\}\([A-Za-z0-9._-]\{1,\}\).*/\1/p' requirements-gpu.txt)
GPU_REQUIRED := $(shell sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*\).*/\1/p' requirements-gpu.txt)
# replaced under another name: uninstalled by the GPU install (faiss-cpu and faiss-gpu
# both install the `faiss` module)
GPU_DROPPED := $(filter-out $(GPU_REQUIRED),$(GPU_REPLACED))
empty :=
space := $(empty) $(empty)
# a requirement line of a replaced project (names match across case and -_.)
GPU_DROP_RE := ^($(subst $(space),|,$(subst -,[-_.],$(subst _,-,$(subst .,-,$(GPU_REPLACED))))))[[:space:]]*([=<>!~;[]|$$)

define compose_gpu_set
	@mkdir -p $(1)
	@{ grep -v -i -E '$(GPU_DROP_RE)' requirements.txt; cat requirements-gpu.txt; } > $(1)/requirements.txt
	@{ grep -v -i -E '$(GPU_DROP_RE)' constraints.txt; cat constraints-gpu.txt; } > $(1)/constraints.txt
endef

# $(call flavour,cpu|gpu): a .venv of that flavour; one of the other flavour is removed
# first (a venv from before .flavour existed counts as cpu when it has the CPU stamp).
define flavour
	@have=$$(cat $(FLAVOUR) 2>/dev/null || { test -e $(STAMP) && echo cpu; }); \
	if [ -n "$$have" ] && [ "$$have" != $(1) ]; then \
		echo "switching $(VENV) from the $$have stack to the $(1) one: rebuilding it"; \
		rm -rf $(VENV); \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo $(1) > $(FLAVOUR)
endef

.PHONY: setup run test lint format bench clean airflow mlflow gpu-set s3a-jars

setup: $(SETUP_STAMP)

# Re-installs only when the pins change; a second `make setup` is a no-op.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(call flavour,cpu)
	@echo "installing the pinned stack into $(VENV) (first time: about 5 minutes)"
	$(BIN)/python -m pip install -qq --upgrade pip==25.3
	$(BIN)/python -m pip install -qq -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# GPU=1: the same, with the GPU set; a second `make setup GPU=1` is a no-op too.
$(GPU_STAMP): requirements.txt constraints.txt requirements-gpu.txt constraints-gpu.txt pyproject.toml
	$(call flavour,gpu)
	@echo "installing the pinned CUDA stack into $(VENV) (first time: about 3.6 GB of CUDA wheels to download)"
	$(BIN)/python -m pip install -qq --upgrade pip==25.3
	$(call compose_gpu_set,$(VENV)/gpu-set)
	$(if $(GPU_DROPPED),$(BIN)/python -m pip uninstall -qq -y $(GPU_DROPPED))
	$(BIN)/python -m pip install -qq -r $(VENV)/gpu-set/requirements.txt -c $(VENV)/gpu-set/constraints.txt
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	@touch $(GPU_STAMP)

gpu-set:
	$(call compose_gpu_set,$(GPU_SET))

# The S3A connector's jars, for the test of the feature job's s3a reads and writes
# only (requirements-s3a.txt says where they come from and why): downloaded, checked
# against the pinned hash, the two jars kept in $(S3A_JARS), never installed.
S3A_JARS := $(VENV)/s3a-jars
S3A_STAMP := $(S3A_JARS)/.installed
$(S3A_STAMP): requirements-s3a.txt | $(SETUP_STAMP)
	@rm -rf $(S3A_JARS) && mkdir -p $(S3A_JARS)/download
	$(BIN)/python -m pip download -q --no-deps --require-hashes -r requirements-s3a.txt -d $(S3A_JARS)/download
	tar -xzf $(S3A_JARS)/download/sagemaker_pyspark-1.4.5.tar.gz -C $(S3A_JARS) --strip-components=3 \
		--wildcards '*/deps/jars/hadoop-aws-*.jar' '*/deps/jars/aws-java-sdk-bundle-*.jar'
	@rm -rf $(S3A_JARS)/download
	@touch $(S3A_STAMP)

s3a-jars: $(S3A_STAMP)

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

# The suite on TEST_WORKERS pytest-xdist workers, a test file to each (a file's module
# fixtures, such as the DAG runs, are made once); the slowest files go first
# (tests/conftest.py). TEST_WORKERS=0 runs it in this process, one test at a time.
TEST_WORKERS ?= 2
test: setup lint s3a-jars
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: setup
	$(BIN)/python bench/generator_throughput.py

clean:
	rm -rf var .pytest_cache
