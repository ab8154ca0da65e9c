# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
OUT    ?= demo-out

.PHONY: install install-dev demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned; everything else under a constraints file so torch is never upgraded.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)
install-dev: $(DEVSTAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/tunelab demo --out $(OUT)

test: $(DEVSTAMP)
	$(BIN)/ruff check --select F,E9 src tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(DEVSTAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
