# One command to run the controller, one to run the tests. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STATE  ?= .state

.PHONY: run test lint setup plan bench gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[scoring,azureml,dev]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

## Run the controller on the embedded local backend against ./manifests (Ctrl-C stops the controller; services keep running).
run: $(STAMP)
	$(BIN)/amlops run --repo . --path manifests --watch --state-dir $(STATE) --listen 127.0.0.1:8080

## The whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Static checks: ruff, mypy (strict on controller/), import-linter layering, schemas up to date.
lint: $(STAMP)
	$(BIN)/ruff check controller tests benchmarks
	$(BIN)/mypy controller
	$(BIN)/lint-imports
	$(BIN)/amlops schemas export --check

plan: $(STAMP)
	$(BIN)/amlops plan manifests --state-dir $(STATE)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

## GPU proof (one GPU per replica, refusal beyond the machine, GPU vs CPU at 1/32/256 rows): .bench/gpu/gpu.{json,md}.
## On a GPU machine install the gpu extra first: $(BIN)/pip install -e '.[gpu]'. Without a GPU it runs its CPU half.
gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
