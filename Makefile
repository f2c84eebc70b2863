# The first commands of the README. `make demo` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ZOO ?= .cache/zoo

.PHONY: setup demo test lint bench clean

$(BIN)/evomerge: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch from this machine's wheels when none is installed; a plain `torch` pulls CUDA.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/evomerge

setup: $(BIN)/evomerge

demo: setup
	$(BIN)/evomerge demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/materialize_throughput.py
	$(BIN)/python bench/search_bench.py --budget 96 --k 200 --seeds 0 1 2 --timing

clean:
	rm -rf $(VENV) .cache
