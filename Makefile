# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   create .venv, install, run the live demo (API on port 5000)
#   make test   install the test tools too, then lint, type-check and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo run test lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) run_daemon.py demo

run: $(VENV)/.runtime
	$(PY) run_daemon.py

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

$(VENV)/.bench: requirements-bench.txt $(VENV)/.dev
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

# Quick benchmarks (< 10 min); FULL=1 for the issue's sizes. Results: BENCHMARKS.md.
# wrk (the HTTP load generator) is a Debian package.
bench: $(VENV)/.bench
	@command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(PY) -m bench $(if $(FULL),--full,)

soak: $(VENV)/.dev
	AUDITOR_SOAK=1 $(BIN)/pytest -q tests/test_capture_kill.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
