# `make demo` and `make test` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# CPU build of PyTorch first (a plain `torch` requirement would pull a CUDA build).
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

# Two test processes (the machines this runs on have two cores; each test runs one thread), then
# the tests that start processes of their own, alone.
test: $(STAMP)
	$(PY) -m ruff check ctflow tests experiments
	$(PY) -m pytest -n 2 -m "not processes"
	$(PY) -m pytest -m processes

lint: $(STAMP)
	$(PY) -m ruff check ctflow tests experiments
	$(PY) -m ruff format --check ctflow tests experiments

format: $(STAMP)
	$(PY) -m ruff format ctflow tests experiments
	$(PY) -m ruff check --fix ctflow tests experiments

bench: $(STAMP)
	$(PY) -m experiments.benchmarks.flows_vs_zuko

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
