# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv with the OS's python3 and install the package with its test extras first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline

.PHONY: install demo test test-fast clean

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

## The whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Unit tests only (skips tests marked slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) outputs .pytest_cache
