"""scripts/gpu_check.py --dry-run: the GPU check's code on the CPU at toy size, and its CSV."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_dry_run_writes_one_row_per_segment(tmp_path, tmp_cache):
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_fixtures import make_ucmerced

    make_ucmerced(tmp_path / "data", per_class=29)  # 5 % of the training split >= 21 classes
    out = tmp_path / "gpu_check.csv"
    gpu_check = _script("gpu_check")
    assert gpu_check.main(["--dry-run", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == gpu_check.COLUMNS
    assert list(table["segment"]) == ["throughput"] + [f"table1 {c} {f:g}" for c, f in gpu_check.SLICE]
    assert (table["device"] == "cpu").all() and (table["image_size"] == 32).all()
    assert table.loc[0, "steps"] == 3 and table.loc[0, "images"] == 3 * table.loc[0, "batch_size"]
    assert (table["images_per_s"] > 0).all() and (table["loader_stall_s"] >= 0).all()
    assert table["gpu_busy_share"].isna().all() and table["peak_gpu_mem_gb"].isna().all()  # no GPU here
    assert table["test_accuracy"].iloc[1:].between(0, 1).all() and math.isnan(table.loc[0, "test_accuracy"])
