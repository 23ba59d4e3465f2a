"""Shared fixtures: synthetic datasets, isolated cache/runs/figures, the real data location."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def pytest_configure(config):
    """Share the cores between pytest-xdist workers: each worker (and every kernel it starts)
    gets ``cores // workers`` OpenMP threads, unless ``OMP_NUM_THREADS`` is set already.

    Without it every worker's inference, compression and scoring used all cores: two workers on
    two cores ran four busy OpenMP threads, and a spinning thread waits for a descheduled one
    (measured: the paper-smoke 05 run of EfficientNetV2-S took 177 s with two threads beside a
    busy core, 29 s with one). Training pins itself to one thread anyway
    (``training.CPU_TRAIN_THREADS``), and Dask's workers set ``OMP_NUM_THREADS=1`` for the study's
    own runs; this is the same rule for the test suite.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernels papermill and nbval start inherit it
    import torch

    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding tiny EuroSAT, EuroSAT MS and UC Merced trees (made once per session)."""
    from make_fixtures import make_all

    return make_all(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Runs and figures of a test go to its tmp dir; the decoded-array cache is shared per session."""
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LCC_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.delenv("LCC_DATA_DIR", raising=False)
    yield


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("LCC_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ../shared/data; skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone the project next to shared/)")
    return SHARED_DATA
