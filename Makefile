# lcc: two commands on a fresh machine.
#   make study [PROFILE=quick|smoke|paper|paper-smoke] [ONLY="03 04"] [LCC_DATA_DIR=...]  -- set up, prepare data, run the notebooks
#   make reproduce [PROFILE=smoke] [ONLY=...] [MATCH=regex] [EXACT=1] -- rerun committed runs, compare metrics
#   make demo                                                  -- every notebook once, small, real data (~10 min)
#   make test                                                  -- set up, run the whole test suite
#   make test-browser                                          -- JupyterLab in headless Chromium (installs it)
#   make setup TORCH=cpu                                       -- Linux without a GPU: CPU-only torch, no CUDA wheels
#   make lock                                                  -- recompile the locks from requirements.in (needs uv)
#   make verify-data                                           -- re-hash every data file, check the cache's index
#   make gpu-check [DRY_RUN=1]                                 -- first GPU check: ConvNeXt-T 224 px, a Table 1 slice (<= 8 min)
#   make clean-cache                                           -- delete cache/ (~0.75 GB after the quick study; remade on demand)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the package's command (pyproject [project.scripts]): lcc demo | study | reproduce | verify-data
LCC := $(PY) -m lcc_utils.cli
PROFILE ?= quick
# JOBS: Dask workers = runs at a time (CPU training uses one thread per run); JOBS=1 runs serially
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
LCC_KERNEL ?= lcc
# LCC_DATA_DIR: data root; unset = data/ if present, else ../shared/data if present, else data/
# TORCH: unset = torch from PyPI (Linux: the CUDA build with its nvidia-* wheels; macOS, Windows: CPU/MPS).
#   TORCH=cpu (Linux without CUDA): torch and torchvision CPU-only builds from the PyTorch index, then
#   requirements-cpu.lock (requirements.lock without the CUDA wheels). Switching TORCH needs a fresh .venv.
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
LOCK := $(if $(filter cpu,$(TORCH)),requirements-cpu.lock,requirements.lock)
# The locks are universal (Linux x86-64/aarch64, macOS arm64, Windows x86-64) from this Python on.
LOCK_PYTHON := 3.11
UV ?= uv
export LCC_DATA_DIR LCC_KERNEL JOBS

.PHONY: setup demo study reproduce data verify-data test test-browser lint benchmarks gpu-check clean-cache lock

# The venv is rebuilt when the pinned versions or the package metadata change.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --index-url $(TORCH_CPU_INDEX) \
	  $$(sed -n -E 's/^(torch(vision)?==[^ ;]+).*/\1/p' $(LOCK))
endif
	# The lock pins every package with its markers (uv's universal resolution), so pip installs it
	# as it is (--no-deps: no second resolution, ~12 s) and `pip check` then proves it consistent.
	# --no-compile: pip's bytecode pass compiles every module of every wheel, one at a time (about
	# 50 s of the 145, mostly torch modules nothing imports); scripts/warm_bytecode.py writes the
	# bytecode of what lcc's processes import (~20 s). It must be written here: where
	# PYTHONDONTWRITEBYTECODE=1 is set (the CI machines) nothing writes it later, and every process
	# compiled torch at import (tried: --no-compile alone made CI slower).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-compile -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-compile -e .
	$(PY) -m pip check --disable-pip-version-check
	# lcc_utils's bytecode is written there too (a stale file after an edit is recompiled in memory,
	# so this is only ever a cache)
	$(PY) scripts/warm_bytecode.py
	# Register the venv as a named Jupyter kernel: papermill's NoSuchKernel trap otherwise.
	# Its kernel.json carries lcc_utils.runs.KERNEL_ENV (the allocator settings of every kernel lcc starts).
	$(PY) -m ipykernel install --sys-prefix --name $(LCC_KERNEL) --display-name "Python (lcc)" \
	  $$($(PY) -c "from lcc_utils.runs import KERNEL_ENV; print(*(f'--env {k} {v}' for k, v in KERNEL_ENV.items()))") >/dev/null
	touch $@

setup: $(VENV)/.installed

data: setup
	$(LCC) study --prepare-only

# Full content re-hash of every dataset (and indexed Sentinel-2 product), ignoring the
# fingerprint index; fails when a file changed behind the index's back; rebuilds the index.
verify-data: setup
	$(LCC) verify-data

# The first command to try: 01 -> 09 once each at the smoke settings into cache/demo/ (wiped first),
# one line per run and a summary; nothing tracked changes.
demo: setup
	$(LCC) demo

study: setup
	$(LCC) study --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

# Re-execute the committed runs of PROFILE into a scratch root (cache/reproduce/) and compare every
# metric with stated tolerances; EXACT=1 for a rerun on the machine that made them.
reproduce: setup
	$(LCC) reproduce --profile $(PROFILE) --jobs $(JOBS) $(if $(ONLY),--only $(ONLY)) $(if $(MATCH),--match '$(MATCH)') $(if $(EXACT),--exact)

# The suite on TEST_WORKERS pytest-xdist processes (auto: one per core). Training in tests is
# single-threaded (training.CPU_TRAIN_THREADS), so two cores run two tests at once; the notebook
# chain that shares one runs folder stays on one worker (xdist_group "ci_runs", --dist loadgroup).
# TEST_WORKERS=0 runs it in this process, serially.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup tests

# The browser test: JupyterLab in headless Chromium (Selenium). Installs Chromium and its driver
# from Debian when apt-get is there and they are missing (needs root), Selenium from PyPI.
test-browser: setup
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver; } || \
	  echo "test-browser: install Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-browser.txt
	$(PY) -m pytest -m browser tests/test_browser.py -v

lint: setup
	$(VENV)/bin/ruff check lcc_utils tests scripts benchmarks

# The trained runs the compression benchmarks load (their checkpoints are rebuilt into cache/rerun/
# from params.json when absent, as on a fresh clone: minutes for the CNN, about an hour for ResNet-18).
PLAIN_RUN := runs/train/eurosat-plain-cnn-random-1.0-0-306d86f6
RESNET_RUN := runs/train/eurosat-resnet18-random-1.0-0-60d460f6
benchmarks: setup
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/data_cache.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/compression_benchmark.py --run $(RESNET_RUN)
	OMP_NUM_THREADS=1 $(PY) benchmarks/deploy_benchmark.py --run $(PLAIN_RUN) --out benchmarks/results/deploy_benchmark.csv
	OMP_NUM_THREADS=1 $(PY) benchmarks/deploy_benchmark.py --run $(RESNET_RUN) --out benchmarks/results/deploy_benchmark_resnet18.csv
	$(PY) benchmarks/quantizer_options.py --run $(PLAIN_RUN) --out benchmarks/results/quantizer_options.csv
	$(PY) benchmarks/quantizer_options.py --run $(RESNET_RUN) --out benchmarks/results/quantizer_options_resnet18.csv
	$(PY) benchmarks/mapping_benchmark.py
	$(PY) benchmarks/paper_b_models.py

# One H100/H200, no network, no pretrained weights: images/s, GPU busy share, loader stall and peak
# memory of ConvNeXt-T (paper_a, 224 px) and a UC Merced Table 1 slice, into benchmarks/results/.
# DRY_RUN=1: the same code on the CPU at toy size (what CI runs).
gpu-check: setup
	$(PY) scripts/gpu_check.py $(if $(DRY_RUN),--dry-run)

clean-cache:
	rm -rf cache

# Both locks from requirements.in, for every platform at once. The existing requirements.lock is uv's
# preference, so no version moves unless requirements.in asks for it; the CPU lock is the same
# resolution (constrained to requirements.lock) without the CUDA wheels.
lock:
	$(UV) pip compile -q --universal --python-version $(LOCK_PYTHON) --custom-compile-command "make lock" \
	  requirements.in -o requirements.lock
	$(UV) pip compile -q --universal --python-version $(LOCK_PYTHON) --custom-compile-command "make lock" \
	  requirements.in -c requirements.lock -o requirements-cpu.lock \
	  $$(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' requirements.lock | sed 's/==$$//; s/^/--no-emit-package /')
