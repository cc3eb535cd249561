# On a fresh machine: `make study` runs the lab study, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/lab-study

.PHONY: study test test-slow lint

$(VENV)/.ready: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# decord: lmms-eval's llava_hf wrapper imports it but does not declare it.
	$(BIN)/pip install --quiet -c constraints.txt torch torchvision -e ".[test,qlora]" decord
	touch $@

study: $(VENV)/.ready
	$(BIN)/forgetbench study --out $(OUT) --overwrite

test: $(VENV)/.ready
	$(BIN)/python -m pytest

test-slow: $(VENV)/.ready
	$(BIN)/python -m pytest -m slow

lint: $(VENV)/.ready
	$(BIN)/ruff check .
