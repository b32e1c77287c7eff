# Two commands on a fresh clone: `make repro` (set-up + the pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages call `python`; this makes it the venv's without activating it.
RUN    := PATH="$(abspath $(BIN)):$$PATH"

.PHONY: setup repro test test-fast lint preflight ui dashboard clean-venv

setup: $(STAMP)

# torch is installed first and alone, pinned: on this kind of machine pip takes the CPU build
# of 2.13.0 from disk; on a GPU box PyPI's 2.13.0 is the CUDA build.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $(STAMP)

repro: setup
	$(RUN) $(BIN)/dvc repro

# Before training in a team: the DVC remote, the tracking store (and tune.storage) answer.
preflight: setup
	$(RUN) $(BIN)/python -m pipeline.preflight

# The runs in mlflow ui (the experiment's training view) and the study in optuna-dashboard, on
# 127.0.0.1; each prints its address. PORT=... for another port.
ui: setup
	$(RUN) $(BIN)/python -m src.ui mlflow $(if $(PORT),--port $(PORT))

dashboard: setup
	$(RUN) $(BIN)/python -m src.ui dashboard $(if $(PORT),--port $(PORT))

test: setup lint
	$(RUN) $(BIN)/python -m pytest

# ruff's lint rules and its formatter (pyproject.toml, [tool.ruff]): CI fails on either.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-fast: setup
	$(RUN) $(BIN)/python -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
