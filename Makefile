# On a fresh machine: `make study` runs the lab study, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/lab-study

.PHONY: study test test-slow lint browser

$(VENV)/.ready: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# decord: lmms-eval's llava_hf wrapper imports it but does not declare it.
	$(BIN)/pip install --quiet -c constraints.txt torch torchvision -e ".[test,qlora]" decord
	touch $@

study: $(VENV)/.ready
	$(BIN)/forgetbench study --out $(OUT) --overwrite

# Both cores (pytest-xdist, as TRL and PEFT run their suites); tests that share an expensive fixture (the lab
# baseline, the small study, trained lab checkpoints) carry one xdist_group so they share a worker. The 15 slowest
# tests are printed: none of the default suite may take over 60 s.
WORKERS ?= 2
test: $(VENV)/.ready browser
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup --durations=15

# The report test renders report.html in Debian's chromium (text read back with poppler's pdftotext). Installed
# here when missing and we are root (CI is); elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v pdftotext >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium poppler-utils >/dev/null; } || \
	  echo "chromium or pdftotext missing: the report's browser test will skip"

# The slow tests (real default-size lab studies, every family's study): on both cores too, about 22 min.
test-slow: $(VENV)/.ready
	$(BIN)/python -m pytest -m slow -n $(WORKERS) --dist loadgroup --durations=15

lint: $(VENV)/.ready
	$(BIN)/ruff check .
