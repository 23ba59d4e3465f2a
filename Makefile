# lcc: two commands on a fresh machine.
#   make study [PROFILE=quick|smoke|paper] [ONLY="03 04"] [LCC_DATA_DIR=...]  -- set up, prepare data, run the notebooks
#   make test                                                  -- set up, run the whole test suite
#   make verify-data                                           -- re-hash every data file, check the cache's index
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
# JOBS: runs of one notebook executed at a time (CPU training uses one thread per run)
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
LCC_KERNEL ?= lcc
# LCC_DATA_DIR: data root; unset = data/ if present, else ../shared/data if present, else data/
export LCC_DATA_DIR LCC_KERNEL JOBS

.PHONY: setup study data verify-data test lint benchmarks clean-cache

# The venv is rebuilt when the pinned versions or the package metadata change.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	# Register the venv as a named Jupyter kernel: papermill's NoSuchKernel trap otherwise.
	$(PY) -m ipykernel install --sys-prefix --name $(LCC_KERNEL) --display-name "Python (lcc)" >/dev/null
	touch $@

setup: $(VENV)/.installed

data: setup
	$(PY) -m lcc_utils.study --prepare-only

# Full content re-hash of every dataset (and indexed Sentinel-2 product), ignoring the
# fingerprint index; fails when a file changed behind the index's back; rebuilds the index.
verify-data: setup
	$(PY) -m lcc_utils.data --verify

study: setup
	$(PY) -m lcc_utils.study --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check lcc_utils tests benchmarks

benchmarks: setup
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/data_cache.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/compression_benchmark.py
	$(PY) benchmarks/mapping_benchmark.py
	$(PY) benchmarks/paper_b_models.py

clean-cache:
	rm -rf cache
