# Two entry points: `make run` (the main job on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MATHLLAVA_HOME ?= $(CURDIR)/.mathllava
export MLFLOW_PORT ?= 5077
export ZENML_CONFIG_PATH := $(MATHLLAVA_HOME)/zenml
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_LOGGING_VERBOSITY ?= WARN
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
# DeepSpeed JIT-compiles its CPU ops once (about a minute); keep them with the virtual environment
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions
CONFIG ?= configs/local.yaml

.PHONY: run test test-fast bootstrap eval serve bench bench-train mlflow-stop dashboard clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[dev,distributed]"
	touch $@

bootstrap: $(VENV)/.installed
	$(PY) -m stacks.bootstrap

run: bootstrap
	time $(PY) run.py --config $(CONFIG)

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m 'not slow'

# Math-V testmini for the model `make run` trained, scored with Math-V's own rules, logged to MLflow.
MODEL_DIR ?= $(MATHLLAVA_HOME)/training/latest/model
eval: bootstrap
	$(PY) -m mathllava.cli eval run --config configs/eval/mathv-local.yaml --model-dir $(MODEL_DIR) \
		--out $(MATHLLAVA_HOME)/eval/mathv-local --mlflow-uri http://127.0.0.1:$(MLFLOW_PORT)

serve: $(VENV)/.installed
	$(PY) -m mathllava.cli serve $(MODEL_DIR) --port 8000

bench: $(VENV)/.installed
	$(PY) bench/generation_throughput.py

# the project's training path against a bare PyTorch loop of the same model and batch
bench-train: $(VENV)/.installed
	$(PY) bench/train_throughput.py

mlflow-stop:
	$(PY) -m mathllava.localserver stop --dir $(MATHLLAVA_HOME)/mlflow

dashboard: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dashboard]"
	$(VENV)/bin/zenml login --local --ip-address 127.0.0.1 --port 8237

clean: mlflow-stop
	rm -rf $(MATHLLAVA_HOME) .zen
