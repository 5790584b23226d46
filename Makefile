# One command for the demo, one for the tests; both create .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch lies on local disk (pip's find-links); installing it first keeps
# pip from pulling the multi-GB CUDA build that a bare `torch` requirement would select.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test,plot,dist]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m skpcoreset demo --out demo_output

test: setup
	$(PY) -m pytest -n 2 --dist worksteal

lint: setup
	$(PY) -m ruff check skpcoreset tests benchmarks examples
	$(PY) -m ruff format --check skpcoreset tests benchmarks examples

bench: setup
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
