"""Every notebook: committed clean, parameters from its parameters cell, values checked, nbval.

Each notebook ``notebooks/NN_name.ipynb`` has small CI parameters in
``tests/notebook_params/NN_name.json``. The test executes it with papermill into its run folder
(``runs.execute_notebook``, as ``make study`` does; the notebooks before it run first with their
CI parameters, since later stages load earlier stages' products by parameters), then

* compares the ``metrics.json`` it wrote with ``tests/expected_metrics/NN_name.json``: a change
  that alters a result fails with the metric's name, the expected and the new value;
* re-executes the executed copy under ``nbval --nbval-lax``: cells marked
  ``# NBVAL_CHECK_OUTPUT`` must print the same thing again, after the sanitizers in
  ``tests/nbval_sanitize.cfg``.

All runs go to one temporary runs folder per test session: nothing under ``runs/`` or
``figures/`` of the repository is touched.
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
from lcc_utils.reproduce import n_classes_of

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [nb.stem for nb in NOTEBOOKS]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from metric_check import compare_metrics  # noqa: E402
from notebook_checks import problems as notebook_problems  # noqa: E402


def ci_params(nb: Path) -> dict:
    pfile = ROOT / "tests" / "notebook_params" / f"{nb.stem}.json"
    assert pfile.exists(), f"{nb.name} has no CI parameters file {pfile.relative_to(ROOT)}"
    return json.loads(pfile.read_text())


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
    # one source for parameters: the cell itself, never a hand-typed dict; the stage from the file name
    assert code.count("runs.notebook_params(globals())") == 1, f"{nb.name}: call runs.notebook_params(globals()) once"
    assert "runs.start_run(params" in code and "params = dict(" not in code, nb.name
    assert "plots.save_figure" not in code, f"{nb.name}: save figures with run.save_figure (run folder)"
    # one kernel story: the kernel `make setup` (and environment.yml's line) registers
    assert book.metadata.kernelspec.name == "lcc" and book.metadata.kernelspec.display_name == "Python (lcc)"
    # papermill --help-notebook shows a type for every parameter (scripts/annotate_parameters.py)
    import papermill as pm

    inferred = pm.inspect_notebook(str(nb))
    untyped = [k for k, v in inferred.items() if v["inferred_type_name"] in ("None", "", None)]
    assert not untyped, f"{nb.name}: parameters without a type annotation: {untyped}"
    assert set(inferred) == set(defaults)


def test_kernel_is_registered_under_the_name_the_notebooks_use():
    makefile = (ROOT / "Makefile").read_text()
    assert "LCC_KERNEL ?= lcc" in makefile and "ipykernel install --sys-prefix --name $(LCC_KERNEL)" in makefile
    assert "ipykernel install --sys-prefix --name lcc" in (ROOT / "environment.yml").read_text()
    # ... with the allocator settings of every kernel lcc starts (runs.KERNEL_ENV)
    assert "from lcc_utils.runs import KERNEL_ENV" in makefile
    env_yml = (ROOT / "environment.yml").read_text()
    assert all(f"--env {k} {v}" in env_yml for k, v in runs.KERNEL_ENV.items())
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("lcc")
    except NoSuchKernel:
        return  # installed with pip, no kernel registered: papermill runs go through execute_notebook
    assert {k: spec.env.get(k) for k in runs.KERNEL_ENV} == runs.KERNEL_ENV, "make setup again: an older kernel.json"


@pytest.mark.notebooks
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_a_new_parameter_changes_the_run_hash(nb, tmp_path):
    """A parameter added to the cell is part of the run's identity without any other edit.

    The kernel's hash of the cell as written equals the one computed from the file
    (``params_hash(notebook_defaults(...))``, checked once, for 04: one kernel per notebook is
    the cost of this test); with a parameter added it differs.
    """
    import papermill as pm

    book = nbformat.read(str(nb), as_version=4)
    p = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    probe = nbformat.v4.new_code_cell("from lcc_utils import runs as _r\n_p = _r.notebook_params(globals())\n"
                                      "print(_p.stage, _r.params_hash(_p))")
    hashes = {}
    variants = (("plain", ""),) if nb.stem == "04_train" else ()
    for label, extra in (*variants, ("dummy", "\nlcc_dummy = 1  # a parameter added for the test")):
        # the parameters cell alone: the import cells before it would cost each kernel seconds
        # and play no part in the hash
        cell = nbformat.v4.new_code_cell(book.cells[p].source + extra, metadata={"tags": ["parameters"]})
        copy = nbformat.v4.new_notebook(cells=[cell, probe], metadata=book.metadata)
        path = tmp_path / label / nb.name
        path.parent.mkdir()
        nbformat.write(copy, str(path))
        out = pm.execute_notebook(str(path), str(path.with_suffix(".out.ipynb")), cwd=str(ROOT),
                                  kernel_name=os.environ.get("LCC_KERNEL") or None, progress_bar=False,
                                  kernel_manager_class=runs.ipc_kernel_manager())
        stage, h = out.cells[-1].outputs[0]["text"].split()
        assert stage == runs.notebook_stage(nb)
        hashes[label] = h
    plain = runs.params_hash(runs.notebook_defaults(nb))
    assert hashes.get("plain", plain) == plain
    assert hashes["dummy"] != plain, f"{nb.name}: a new parameter did not change the run hash"


@pytest.fixture(scope="session")
def ci_runs(tmp_path_factory) -> Path:
    """One runs folder for the session's notebook runs (later notebooks read earlier products)."""
    return tmp_path_factory.mktemp("ci_runs")


@pytest.mark.integration
@pytest.mark.notebooks
# one pytest-xdist worker runs the chain: later notebooks read the earlier ones' runs in ci_runs
@pytest.mark.xdist_group("ci_runs")
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_executes_matches_expected_metrics_and_passes_nbval(nb, shared_data, ci_runs, monkeypatch, tmp_path):
    monkeypatch.setenv("LCC_RUNS_DIR", str(ci_runs))
    monkeypatch.setenv("LCC_DATA_DIR", str(shared_data))
    for before in NOTEBOOKS[: NOTEBOOKS.index(nb)]:  # earlier stages' products (skipped if done)
        runs.execute_notebook(before, ci_params(before))
    d, _ = runs.execute_notebook(nb, ci_params(nb))
    out = d / nb.name
    executed = nbformat.read(str(out), as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # every figure shows where it is made, and the copy is readable (no escapes, reprs, machine paths)
    unreadable = notebook_problems(out)
    assert not unreadable, f"{nb.name}, executed under its CI parameters:\n" + "\n".join(unreadable)
    checked = [c for c in executed.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, f"{nb.name}: mark the cells whose output must be stable with # NBVAL_CHECK_OUTPUT"
    assert any(c.outputs for c in checked), f"{nb.name}: its NBVAL_CHECK_OUTPUT cells print nothing"

    expected = ROOT / "tests" / "expected_metrics" / f"{nb.stem}.json"
    assert expected.exists(), (f"no expected metrics for {nb.name}: "
                               f"python tests/metric_check.py {d} > {expected.relative_to(ROOT)}")
    problems = compare_metrics(json.loads(expected.read_text()), json.loads((d / "metrics.json").read_text()),
                               n_classes=n_classes_of(d))
    assert not problems, f"{nb.name}: metrics differ from {expected.relative_to(ROOT)}:\n" + "\n".join(problems)

    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--nbval-cell-timeout", "900", "--sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), str(out)],
        # nbval starts its own kernel, which would write the user's IPython history: a profile of its own
        cwd=ci_runs, env={**os.environ, runs.NOTEBOOK_ENV: nb.name, "IPYTHONDIR": str(tmp_path / "ipython")},
        capture_output=True, text=True, timeout=1800,
    )
    assert r.returncode == 0, f"nbval failed for {nb.name}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
