# Deployment export pipeline — see README.md.
#   make setup        create .venv and install everything (torch pinned first)
#   make test         mypy (TensorRT module) + the test suite
#   make deploy       the whole chain: CONFIG=configs/default.yaml RUN=runs/default ARGS="--set k=v"; then, when the
#                     run's config sets report.frontier, the run placed on that frontier (python -m bench.frontier place)
#   make gpu-check    on a CUDA machine: cuda tests, pipelines and epoch timings on the GPU (README "GPU check")
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
TORCH_VERSION ?= 2.13.0
# Stubs only (no runtime): --no-deps because they hard-require the real tensorrt wheel.
TRT_STUBS ?= tensorrt-stubs==10.13.0.35.1
CONFIG ?= configs/default.yaml
RUN ?=
RUN_ARG := $(if $(RUN),--run-dir $(RUN),)
PIPE := $(PYTHON) -m pipeline run --config $(CONFIG) $(RUN_ARG)
ARGS ?=

.PHONY: setup test lint typecheck deploy baseline prune export engine validate report bundle bench bench-quick gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# torch pinned first: an unpinned torch pulls several GB of CUDA packages.
	$(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	# torchvision (+ timm) for users' architectures: 0.28.* is torch 2.13's pair (pyproject.toml, README).
	$(PYTHON) -m pip install -q -e '.[dev,torchvision,timm]'
	$(PYTHON) -m pip install -q --no-deps $(TRT_STUBS)
	touch $@

typecheck: setup
	$(PYTHON) -m export.typecheck

test: typecheck
	$(BIN)/pytest -q -n 2 --durations=15 deploy_tests

lint: setup
	$(BIN)/ruff check ccpcsa export pipeline deploy_tests bench

# The frontier section of report.md comes from the benchmarks: placed after the pipeline (one line when the run's
# config sets no report.frontier). Without RUN, the run is runs/<run.name> of CONFIG.
deploy: setup
	$(PIPE) $(ARGS)
	$(PYTHON) -m bench.frontier place --config $(CONFIG) $(RUN_ARG)

baseline: setup
	$(PIPE) --until baseline $(ARGS)

prune: setup
	$(PIPE) --until prune $(ARGS)

export: setup
	$(PIPE) --until int8_cpu $(ARGS)

engine: setup
	$(PIPE) --until engine $(ARGS)

validate: setup
	$(PIPE) --until validate $(ARGS)

report: setup
	$(PYTHON) -m pipeline report --config $(CONFIG) $(RUN_ARG) $(ARGS)

bundle: setup
	$(PIPE) --until bundle $(ARGS)

bench: setup
	$(PYTHON) -m bench $(ARGS)

bench-quick: setup
	$(PYTHON) -m bench --quick $(ARGS)

# No `setup` dependency: on a GPU machine the project runs on that machine's torch (setup would install the CPU
# build); python3 there, this venv's python where it exists. The other dependencies: README "GPU check".
GPU_PY ?= $(if $(wildcard $(PYTHON)),$(PYTHON),python3)
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m bench.gpu_check $(ARGS)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
