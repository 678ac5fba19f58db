# Two entry points: `make demo` (the notebook sequence on the embedded offline default) and
# `make test` (the test suite, notebooks included). Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup browser demo test bench lab clean-runs

setup: $(STAMP)

# llama-cpp-python compiles from source. A native build (-march=native) uses every instruction the
# CPU lists, AMX included, and a VM that lists AMX without enabling it kills the server with SIGILL
# on its first completion (seen here): build it portable (AVX2), and never from pip's wheel cache.
LLAMA_PIN   := $(shell grep -m1 '^llama-cpp-python' requirements.txt)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install --no-cache-dir "$(LLAMA_PIN)"
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

demo: setup
	$(PY) -m autointerp.run --profile demo $(ARGS)

# The browser test drives Debian's chromium (playwright is told to use it; nothing is downloaded).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } \
	      || echo "Could not install chromium with apt-get: the browser test will say so."; \
	  else echo "No chromium and no apt-get: install Chromium yourself for the browser test."; fi; }

test: setup browser
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) bench/cache.py
	$(PY) bench/alignment.py
	$(PY) bench/training.py

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-runs:
	rm -rf data/runs
