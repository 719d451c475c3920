# Deployment export pipeline — see README.md.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
TORCH_VERSION ?= 2.13.0
# Stubs only (no runtime): --no-deps because they hard-require the real tensorrt wheel.
TRT_STUBS ?= tensorrt-stubs==10.13.0.35.1

.PHONY: setup test lint typecheck

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# torch pinned first: an unpinned torch pulls several GB of CUDA packages.
	$(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -q -e '.[dev]'
	$(PYTHON) -m pip install -q --no-deps $(TRT_STUBS)
	touch $@

test: setup
	$(BIN)/mypy export/tensorrt.py
	$(BIN)/pytest -q -n 2 deploy_tests
