"""Every notebook: committed clean, runs through papermill on real data, passes nbval.

Each notebook ``notebooks/NN_name.ipynb`` has small CI parameters in
``tests/notebook_params/NN_name.json``. The test executes it with papermill (as a
user would), then re-executes the executed copy under ``nbval --nbval-lax``: cells
marked ``# NBVAL_CHECK_OUTPUT`` must print the same thing again (same seed, same
result), after the sanitizers in ``tests/nbval_sanitize.cfg``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lcc_utils import runs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [nb.stem for nb in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_committed_clean_with_one_parameters_cell(nb):
    book = nbformat.read(str(nb), as_version=4)
    dirty = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{nb.name}: cells {dirty} carry outputs; commit notebooks clean"
    defaults = runs.notebook_defaults(nb)  # one literal-only parameters cell
    assert "data_dir" in defaults, f"{nb.name}: the parameters cell needs data_dir"
    code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    assert "\ndef " not in "\n" + code and "\nclass " not in "\n" + code, f"{nb.name}: defs belong in lcc_utils"


@pytest.mark.integration
@pytest.mark.notebooks
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_executes_and_passes_nbval(nb, shared_data, tmp_path):
    import papermill as pm

    pfile = ROOT / "tests" / "notebook_params" / f"{nb.stem}.json"
    assert pfile.exists(), f"{nb.name} has no CI parameters file {pfile.relative_to(ROOT)}"
    params = {**json.loads(pfile.read_text()), "data_dir": str(shared_data)}
    out = tmp_path / nb.name
    pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(ROOT), progress_bar=False,
                        kernel_name=os.environ.get("LCC_KERNEL") or None)
    executed = nbformat.read(str(out), as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    checked = [c for c in executed.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, f"{nb.name}: mark the cells whose output must be stable with # NBVAL_CHECK_OUTPUT"
    assert any(c.outputs for c in checked), f"{nb.name}: its NBVAL_CHECK_OUTPUT cells print nothing"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--nbval-cell-timeout", "900", "--sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), str(out)],
        cwd=tmp_path, env=os.environ.copy(), capture_output=True, text=True, timeout=1800,
    )
    assert r.returncode == 0, f"nbval failed for {nb.name}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
