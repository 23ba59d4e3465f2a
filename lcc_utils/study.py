"""``make study``: execute every notebook, in number order, under a named profile.

A profile is a list of parameter **grids** per notebook, kept in ``profiles/NN_name.json``::

    {"smoke": [grid, ...], "quick": [grid, ...], "paper": [grid, ...]}

A grid maps parameter names to a value or to a list of values to sweep; :func:`expand_grid`
expands it into runs (the Cartesian product, in the grid's key order), e.g.
``{"dataset": "eurosat", "coreset": ["random", "forgetting"], "seed": [0, 1, 2]}`` is six runs.
A parameter whose notebook default is itself a list (``levels``, ``models``...) or a dict (a
reference to an earlier run) is swept by a list of lists / a list of dicts. Parameters left out
take the notebook's defaults. A later stage names an earlier run by its parameters
(``{"train_run": {"dataset": "eurosat", "fraction": 0.05}}``), never by a folder hash.

* ``smoke``: minutes in total, for CI;
* ``quick``: the real CPU-sized study on real data (the default);
* ``paper``: the papers' full protocol (224 px, 10 epochs, four backbones): GPU work.

Every run keeps its figures in its run folder. ``make study`` also *publishes* the figures the
study reports (``run.save_figure(..., publish=True)``): the ``quick`` study's to ``figures/``,
those of ``smoke`` and ``paper`` to ``figures/smoke/`` and ``figures/paper/``, so no profile
overwrites another's and a notebook run by hand never touches ``figures/``.

Each parameter set becomes one run folder (see :mod:`lcc_utils.runs`); a run that
already finished is skipped, so an interrupted study resumes where it stopped.

Usage: ``python -m lcc_utils.study --profile quick [--data-dir DIR] [--only 04_train] [--jobs 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from .paths import figures_dir, project_root, resolve_data_dir
from .runs import execute_notebook, notebook_defaults

PROFILES = ("smoke", "quick", "paper")


def notebooks() -> list[Path]:
    """The numbered notebooks in ``notebooks/``, in number order."""
    return sorted((project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def expand_grid(notebook: Path, grid: dict) -> list[dict]:
    """The runs of one grid of ``notebook`` (see the module docstring for the rule)."""
    defaults = notebook_defaults(notebook)
    unknown = sorted(set(grid) - set(defaults))
    if unknown:
        raise ValueError(f"profiles/{notebook.stem}.json: unknown parameter(s) {unknown}; "
                         f"{notebook.name} takes: {', '.join(defaults)}")
    axes = []
    for k, v in grid.items():
        container = isinstance(defaults[k], (list, dict))
        sweep = isinstance(v, list) and (not container or (bool(v) and all(
            isinstance(e, type(defaults[k])) for e in v)))
        axes.append([(k, e) for e in v] if sweep else [(k, v)])
    return [dict(combo) for combo in itertools.product(*axes)]


def profile_runs(notebook: Path, profile: str) -> list[dict]:
    """Parameter sets of ``notebook`` under ``profile`` (one run with the defaults if none are listed)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    f = project_root() / "profiles" / f"{notebook.stem}.json"
    if not f.exists():
        return [{}]
    spec = json.loads(f.read_text())
    unknown = sorted(set(spec) - set(PROFILES))
    if unknown:
        raise ValueError(f"{f}: unknown profile name(s) {unknown}; allowed: {', '.join(PROFILES)}")
    grids = spec.get(profile, [])
    if isinstance(grids, dict):
        grids = [grids]
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ValueError(f"{f}: profile {profile!r} must be a grid or a list of grids (objects)")
    runs = [r for g in grids for r in expand_grid(notebook, g)]
    seen, unique = set(), []
    for r in runs:  # two grids may name the same run: run it once
        key = json.dumps(r, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def prepare_data(data_dir: str | None = None, names: tuple[str, ...] = ("eurosat", "ucmerced", "eurosat_ms")) -> None:
    """Fetch (if missing) and decode every dataset once, so notebook runs start from the cache."""
    from .data import load_dataset

    for name in names:
        ds = load_dataset(name, data_dir)
        print(f"data: {name} ready ({len(ds):,} images, hash {ds.hash})", flush=True)


def run_study(profile: str = "quick", data_dir: str | None = None, only: list[str] | None = None,
              jobs: int = 1) -> pd.DataFrame:
    """Execute the study; return one row per run (notebook, run folder, executed or skipped, seconds)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    root = resolve_data_dir(data_dir)
    # Only the study publishes figures (the kernels inherit this environment). The committed
    # figures/ are the quick study's; smoke and paper publish to figures/<profile>/.
    os.environ["LCC_PUBLISH_FIGURES"] = "1"
    if profile != "quick" and "LCC_FIGURES_DIR" not in os.environ:
        os.environ["LCC_FIGURES_DIR"] = str(figures_dir() / profile)
    books = [nb for nb in notebooks() if not only or nb.stem in only or nb.stem[:2] in only]
    plan = [(nb, p) for nb in books for p in profile_runs(nb, profile)]
    print(f"study: profile {profile!r}, data root {root}, {len(plan)} run(s) in {len(books)} "
          f"notebook(s), {jobs} at a time")
    done = [0]

    def one(nb: Path, params: dict) -> dict:
        t0 = time.perf_counter()
        d, executed = execute_notebook(nb, {**params, "data_dir": str(root)})
        dt = time.perf_counter() - t0
        done[0] += 1
        print(f"[{done[0]}/{len(plan)}] {nb.stem} {json.dumps(params, sort_keys=True)}\n"
              f"    {'done' if executed else 'skipped (finished before)'} in {dt:.0f} s -> {d}",
              flush=True)
        return {"notebook": nb.stem, "params": json.dumps(params, sort_keys=True),
                "run_dir": str(d), "executed": executed, "seconds": round(dt, 1)}

    rows = []
    # Notebooks run in number order (a later stage reads earlier runs); the runs of ONE notebook
    # are independent and run `jobs` at a time, each in its own kernel process (CPU training is
    # pinned to one thread per run, so jobs = cores uses the machine).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for nb in books:
            rows += list(pool.map(lambda p, nb=nb: one(nb, p), profile_runs(nb, profile)))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``make study``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "quick"), choices=PROFILES)
    ap.add_argument("--data-dir", default=None, help="data root (default: $LCC_DATA_DIR or data/)")
    ap.add_argument("--only", nargs="*", help="notebook stems or numbers to run (default: all)")
    ap.add_argument("--prepare-only", action="store_true", help="only fetch and decode the datasets")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "1")),
                    help="runs of one notebook executed at a time (default: $JOBS or 1)")
    args = ap.parse_args(argv)
    prepare_data(args.data_dir)
    if args.prepare_only:
        return 0
    summary = run_study(args.profile, args.data_dir, args.only, jobs=args.jobs)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
