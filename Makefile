# Kerve: `make serve` and `make test` work on a machine with nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu            # `make serve EXTRAS=gpu` installs TensorFlow with CUDA
MODELS_DIR ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
PROFILE ?= fast          # `make models PROFILE=full` trains to the figures in docs/MODELS.md
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: serve models test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[$(strip $(EXTRAS)),train]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[$(strip $(EXTRAS)),train,test,bench]"
	touch $@ $(VENV)/.installed-serve

serve: $(VENV)/.installed-serve
	$(PY) -m training.zoo --profile $(strip $(PROFILE)) --models-dir $(MODELS_DIR) --if-missing
	$(PY) -m service --models-dir $(MODELS_DIR) --host $(HOST) --port $(PORT)

models: $(VENV)/.installed-serve
	$(PY) -m training.zoo --profile $(strip $(PROFILE)) --models-dir $(MODELS_DIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed-test
	$(PY) -m bench.classify

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
