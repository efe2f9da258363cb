# Entry points for a fresh machine (see README): `make demo` and `make test` create .venv with the
# OS's python3 and install the package with its test extras first; `make bench` does the same in a
# separate .venv-bench that adds the peer (trl 1.13.0, the last release with PRMTrainer).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline

BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
# the GSM8K model solutions (relative to the repository root); benchmarks are skipped without them
GSM8K ?= ../shared/data/gsm8k
BENCH_ARGS ?=

.PHONY: install demo test test-fast bench clean

# pip prints a line per package (no --quiet): a log shows the install moving; see README for the time
$(STAMP): pyproject.toml
	@echo "installing spare-train and its dependencies into $(VENV)/ (one line per package; see README for how long)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The main job: the bundled demo (see README).
demo: $(STAMP)
	$(BIN)/python -m spare_train.demo

## Every benchmark against the peers (docs/benchmarks.md); torch stays at the project's pin.
$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 'torch==2.13.0' 'trl==1.13.0' py-spy
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/run.py --gsm8k $(GSM8K) $(BENCH_ARGS)

## The whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Unit tests only (skips tests marked slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(BENCH_VENV) outputs .pytest_cache
