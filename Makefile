# var_keeper: `make run` serves on port 5000 with the embedded SQLite default; `make test` runs
# every check. Both create .venv and install the pinned dependencies first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint format clean

$(VENV)/.runtime: requirement.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirement.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirement-dev.txt
	$(PY) -m pip install --quiet -r requirement-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) app.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.dev lint
	$(VENV)/bin/pytest

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis instance
