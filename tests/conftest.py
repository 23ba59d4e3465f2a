"""Shared fixtures: synthetic datasets, isolated cache/runs/figures, the real data location."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


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
