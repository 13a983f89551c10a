# Kerve: `make serve` and `make test` work on a machine with nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu            # `make serve EXTRAS=gpu` installs TensorFlow with CUDA
MODELS_DIR ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
PROFILE ?= fast          # `make models PROFILE=full` trains to the figures in docs/MODELS.md
# `make loadtest` drives a server that is already running (`make serve` in another shell).
LOADTEST_HOST ?= http://$(HOST):$(PORT)
USERS ?= 16
SPAWN_RATE ?= 4
RUN_TIME ?= 60s
LOCUSTFILE ?= loadtest/locustfile.py
TAGS ?=                  # e.g. TAGS=denoise: one task alone (classify, segment, caption, denoise, generate, mixed)
CLASSES ?=               # or user classes, e.g. CLASSES="ClassifyUser GenerateUser"
LOADTEST_NAME ?= loadtest
LOADTEST_REPORTS := loadtest/reports
BENCH_TASK ?= all        # `make bench BENCH_TASK=classify`: one task (classify, segment, caption, denoise, generate)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: serve models test lint bench bench-peers check-robustness loadtest loadtest-ramp clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[$(strip $(EXTRAS)),engines,train]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[$(strip $(EXTRAS)),engines,jax,train,test,bench]"
	touch $@ $(VENV)/.installed-serve

# Serves at once; the missing demo models train behind the server and stop with it.
serve: $(VENV)/.installed-serve
	$(PY) -m kerve_cli serve --zoo $(strip $(PROFILE)) --models-dir $(MODELS_DIR) --host $(HOST) --port $(PORT)

models: $(VENV)/.installed-serve
	$(PY) -m training.zoo --profile $(strip $(PROFILE)) --models-dir $(MODELS_DIR)

# The service's tests that never run a model through the backend (HTTP, connections,
# keys, admission, images, the page, the schema, processes): the JAX pass leaves them out.
BACKEND_AGNOSTIC := test_admission test_auth test_cli test_connections test_decoding \
    test_imaging test_openapi test_page test_tiling test_workers

# Everything on TensorFlow, then the service again on JAX (models saved under TensorFlow),
# then schemathesis against the OpenAPI document (tests/schema).
test: $(VENV)/.installed-test
	$(PY) -m pytest
	KERAS_BACKEND=jax $(PY) -m pytest tests/service $(BACKEND_AGNOSTIC:%=--ignore=tests/service/%.py)
	$(PY) -m tests.schema.run_schemathesis

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile deploy/locust.Dockerfile

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e ".[$(strip $(EXTRAS)),engines,jax,train,test,bench]"
	touch $@

# The peers `python -m bench` measures Kerve against, each in a venv of its own with our
# serving extras (PyTriton needs numpy<2, which ours do not); the bench skips a peer whose
# venv is missing. Versions: those the bench was last run with.
PEER_VENVS := .venv-peers
PEERS := triton bentoml litserve ray
PEER_PACKAGES.triton := nvidia-pytriton==0.7.0 "numpy<2"
PEER_PACKAGES.bentoml := bentoml==1.4.40
PEER_PACKAGES.litserve := litserve==0.2.19
PEER_PACKAGES.ray := "ray[serve]==2.60.0"

$(PEER_VENVS)/%/.installed: pyproject.toml
	rm -rf $(PEER_VENVS)/$*
	$(PYTHON) -m venv $(PEER_VENVS)/$*
	$(PEER_VENVS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENVS)/$*/bin/python -m pip install --quiet -e ".[$(strip $(EXTRAS)),engines]" \
	    "httpx>=0.27" $(PEER_PACKAGES.$*)
	touch $@

bench-peers: $(PEERS:%=$(PEER_VENVS)/%/.installed)

# Kerve against the raw model on each engine, itself without batching, a naive app, and
# Triton, BentoML, LitServe and Ray Serve, on the demo models; fills docs/BENCHMARKS.md
# (all tasks: about an hour).
bench: $(VENV)/.installed-bench bench-peers
	$(PY) -m training.zoo --profile $(strip $(PROFILE)) --models-dir $(MODELS_DIR) --if-missing
	$(PY) -m bench --task $(strip $(BENCH_TASK)) --models-dir $(MODELS_DIR) \
	    --docs docs/BENCHMARKS.md --img-dir docs/img --readme README.md

# Open-loop overload at 5x the classifier's capacity for 60 s, and the isolation checks of
# issue 22 (bench/robustness.py); fills the Robustness section of docs/BENCHMARKS.md.
check-robustness: $(VENV)/.installed-bench
	$(PY) -m training.zoo --profile $(strip $(PROFILE)) --models-dir $(MODELS_DIR) --if-missing
	$(PY) -m bench.robustness --models-dir $(MODELS_DIR) --docs docs/BENCHMARKS.md

loadtest: $(VENV)/.installed-test
	@mkdir -p $(LOADTEST_REPORTS)
	@echo "locust -> $(LOADTEST_HOST) (start the server first: make serve)"
	$(VENV)/bin/locust -f $(LOCUSTFILE) --headless --host $(LOADTEST_HOST) \
	    -u $(USERS) -r $(SPAWN_RATE) -t $(RUN_TIME) $(if $(strip $(TAGS)),--tags $(strip $(TAGS))) \
	    --csv $(LOADTEST_REPORTS)/$(LOADTEST_NAME) --html $(LOADTEST_REPORTS)/$(LOADTEST_NAME).html \
	    --only-summary $(CLASSES)
	@echo "reports: $(LOADTEST_REPORTS)/$(LOADTEST_NAME)_stats.csv, $(LOADTEST_NAME).html"

# The ramp's 503s at its peak are what it shows, so failures do not fail the target.
loadtest-ramp: $(VENV)/.installed-test
	@mkdir -p $(LOADTEST_REPORTS)
	@echo "locust ramp -> $(LOADTEST_HOST) (start the server first: make serve)"
	$(VENV)/bin/locust -f loadtest/ramp.py --headless --host $(LOADTEST_HOST) \
	    $(if $(strip $(TAGS)),--tags $(strip $(TAGS))) \
	    --csv $(LOADTEST_REPORTS)/ramp --html $(LOADTEST_REPORTS)/ramp.html \
	    --only-summary --exit-code-on-error 0 $(CLASSES)
	$(PY) -m loadtest.plot $(LOADTEST_REPORTS)/ramp --title "ramp past saturation and back"
	@echo "reports: $(LOADTEST_REPORTS)/ramp_stats.csv, ramp.html, ramp.png"

clean:
	rm -rf $(VENV) $(PEER_VENVS) .pytest_cache .ruff_cache *.egg-info
