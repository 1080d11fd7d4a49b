# Two entry points: `make run` (the main job on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MATHLLAVA_HOME ?= $(CURDIR)/.mathllava
# the local MLflow server's port: as given, else the one this state folder's server was last started on
export MLFLOW_PORT ?= $(shell cat "$(MATHLLAVA_HOME)/mlflow/server.port" 2>/dev/null || echo 5077)
export ZENML_PORT ?= 8237
export ZENML_CONFIG_PATH := $(MATHLLAVA_HOME)/zenml
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_LOGGING_VERBOSITY ?= WARN
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT := true
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
# DeepSpeed JIT-compiles its CPU ops once (about a minute); keep them with the virtual environment
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions
CONFIG ?= configs/local.yaml
# overrides of the config's parameters: make run SET="train.seed=1 select.sampling.target_size=300"
SET ?=
# the real Kubernetes control plane of the cluster tests: built once per machine, outside the clone
K8S_LOCAL ?= $(CURDIR)/../shared/k8s-local

.PHONY: run test test-fast mutation k8s-local bootstrap ablation eval serve bench bench-train mlflow-stop dashboard dashboard-stop clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[dev,distributed,dashboard]"
	touch $@

bootstrap: $(VENV)/.installed
	$(PY) -m stacks.bootstrap

run: bootstrap
	time $(PY) run.py --config "$(CONFIG)" $(foreach s,$(SET),--set $(s)) $(RUN_ARGS)

test: $(VENV)/.installed k8s-local
	$(PY) -m pytest -q

# the data-recipe experiment: one tiny model per arm x seed at equal compute, intervals, paired differences;
# a rerun trains only the missing cells
EXPERIMENT ?= configs/experiments/recipe.yaml
ablation: bootstrap
	time $(PY) -m mathllava.cli experiment run --config "$(EXPERIMENT)" --tracking-uri http://127.0.0.1:$(MLFLOW_PORT)

# kube-apiserver + etcd (about 5 minutes the first time; a second call returns at once). If it cannot
# be built, the tests that need it skip and say why.
k8s-local:
	@mkdir -p $(MATHLLAVA_HOME)
	@if [ -d "$(K8S_LOCAL)" ]; then \
	  echo "k8s-local: bash $(K8S_LOCAL)/build.sh (log: $(MATHLLAVA_HOME)/k8s-local-build.log)"; \
	  bash "$(K8S_LOCAL)/build.sh" > "$(MATHLLAVA_HOME)/k8s-local-build.log" 2>&1 \
	    && tail -n 1 "$(MATHLLAVA_HOME)/k8s-local-build.log" \
	    || { echo "k8s-local could not be built; the cluster tests will skip:"; tail -n 5 "$(MATHLLAVA_HOME)/k8s-local-build.log"; }; \
	else echo "no $(K8S_LOCAL): the cluster tests will skip"; fi

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m 'not slow'

# mutation testing (mutmut 3): each module of scripts/mutation.py's MODULES against its fast tests, in a
# scratch copy under build/mutation/; prints each module's score and the mutants that survived.
# One module: make mutation MODULES=src/mathllava/augment/cache.py
MODULES ?=
mutation: $(VENV)/.installed
	$(PY) scripts/mutation.py $(MODULES) $(MUTATION_ARGS)

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

# the MLflow server (runs, charts, model registry) and the ZenML dashboard (pipeline runs, artifacts)
dashboard: bootstrap
	$(PY) -m stacks.dashboard up --zenml-port $(ZENML_PORT) --mlflow-uri http://127.0.0.1:$(MLFLOW_PORT)

# both servers, waiting until their processes are gone
dashboard-stop: $(VENV)/.installed
	$(PY) -m stacks.dashboard down --mlflow-dir $(MATHLLAVA_HOME)/mlflow

clean:
	@if [ -x $(PY) ]; then $(PY) -m stacks.dashboard down --mlflow-dir $(MATHLLAVA_HOME)/mlflow; fi
	rm -rf $(MATHLLAVA_HOME) .zen
