# Two entry points: `make demo` (the notebook sequence on the embedded offline default) and
# `make test` (the test suite, notebooks included). Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench lab clean-runs

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

demo: setup
	$(PY) -m autointerp.run --profile demo $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) bench/cache.py

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-runs:
	rm -rf data/runs
