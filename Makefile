# `make sim`, `make lab` and `make test` set up .venv on first use (CPU torch 2.13.0 first, then
# the project).
VENV ?= .venv
PY := $(VENV)/bin/python
KIWI := $(VENV)/bin/kiwi

.PHONY: setup sim lab test lint clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

sim: setup
	$(KIWI) sim

lab: setup
	$(KIWI) lab pendulum --out runs/lab

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
