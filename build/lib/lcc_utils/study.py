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
* ``paper``: the papers' full protocol (224 px, 10 epochs, four backbones): GPU work;
* ``paper-smoke``: the paper grids' shapes (four backbones, both datasets, recipe ``paper_a``,
  backbone-as-proxy scoring, 05 on each backbone, 09's table) at toy scale on the CPU: 32 px,
  one or two epochs, a few steps, no pretrained weights. It runs the paper's code paths in
  minutes before GPU hours are spent on them.

A later stage names earlier runs by their parameters; :func:`check_references` checks, before
anything runs, that every such name resolves to a run the earlier stage's grid of the same
profile plans (``make study`` refuses a profile that fails it).

Every run keeps its figures in its run folder. ``make study`` also *publishes* the figures the
study reports (``run.save_figure(..., publish=True)``): the ``quick`` study's to ``figures/``,
those of ``smoke`` and ``paper`` to ``figures/smoke/`` and ``figures/paper/``, so no profile
overwrites another's and a notebook run by hand never touches ``figures/``.

Each parameter set becomes one run folder (see :mod:`lcc_utils.runs`); a run that
already finished is skipped, so an interrupted study resumes where it stopped.

Runs execute on Dask (:mod:`lcc_utils.cluster`): ``--jobs N`` single-threaded workers on this
machine (one per GPU on a GPU machine), or batch jobs on SLURM/PBS through dask-jobqueue
(``--cluster slurm``), or an existing scheduler (``--scheduler tcp://...``). A run starts as soon
as the runs of the stages it reads (:data:`READS`) have finished. ``--jobs 1`` runs serially
in this process, the reference the parallel study is tested against.

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
from typing import Any

import pandas as pd

from . import runs
from .cluster import CLUSTERS
from .files import read_json
from .paths import figures_dir, project_root, resolve_data_dir, runs_root
from .runs import execute_notebook, notebook_defaults

PROFILES = ("smoke", "quick", "paper", "paper-smoke")


def notebooks() -> list[Path]:
    """The numbered notebooks in ``notebooks/``, in number order (a missing folder is an error naming it)."""
    folder = project_root() / "notebooks"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no notebooks folder; run from a project checkout (git clone), "
                                "or set LCC_PROJECT_ROOT to one")
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


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
    """Parameter sets of ``notebook`` under ``profile`` (one run with the defaults if none are listed).

    ``demo`` is one run of each notebook picked from ``smoke`` (:func:`demo_runs`, ``make demo``).
    """
    if profile == "demo":
        return demo_runs(notebook)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    folder = project_root() / "profiles"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no profiles folder (the study's parameter grids); run from a project "
                                "checkout (git clone), or set LCC_PROJECT_ROOT to one")
    f = folder / f"{notebook.stem}.json"
    if not f.exists():
        return [{}]
    spec = read_json(f, f"A tracked profile: fix it by hand, or restore it with `git checkout -- profiles/{f.name}`")
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


#: Which smoke run of a notebook ``make demo`` runs (the first whose parameters include these);
#: notebooks not named here run their first smoke run; ``None``: every smoke run. 01: the
#: 910-image EuroSAT MS sample (the one dataset the later stages read); 04: random and forgetting
#: (05 compresses the random one; 09's Table 1 sets forgetting beside it); 06: the binary task
#: (08 maps with it).
DEMO_CHOICE: dict[str, dict | None] = {
    "01_data": {"dataset": "eurosat_ms"},
    "04_train": None,
    "06_evaluation": {"task": "binary"},
}
#: Parameters the demo sets over the smoke run's (09 tabulates the demo's own 04/05 runs).
DEMO_OVERRIDE: dict[str, dict] = {"09_paper_a_tables": {"profile": "demo"}}


def demo_runs(notebook: Path) -> list[dict]:
    """The runs of ``notebook`` in ``make demo``: smoke runs, one per notebook but 04's (:data:`DEMO_CHOICE`)."""
    smoke = profile_runs(notebook, "smoke")
    want = DEMO_CHOICE.get(notebook.stem, {})
    if want is None:
        return [{**r, **DEMO_OVERRIDE.get(notebook.stem, {})} for r in smoke]
    pick = next((r for r in smoke if all(r.get(k) == v for k, v in want.items())), None)
    if pick is None:
        raise ValueError(f"profiles/{notebook.stem}.json: no smoke run with {want} for the demo")
    return [{**pick, **DEMO_OVERRIDE.get(notebook.stem, {})}]


def profile_runs_root(profile: str) -> Path:
    """Where a profile's runs live: the quick study's in ``runs/``, the others in ``runs/<profile>/``.

    Like ``figures/<profile>/``: a smoke or paper study never mixes its runs with the committed
    quick ones. ``LCC_RUNS_DIR`` overrides it.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    if os.environ.get("LCC_RUNS_DIR"):
        return runs_root()
    return runs_root() if profile == "quick" else runs_root() / profile


def prepare_data(data_dir: str | None = None, names: tuple[str, ...] = ("eurosat", "ucmerced", "eurosat_ms")) -> None:
    """Fetch (if missing) and decode every dataset once, so notebook runs start from the cache."""
    from .data import load_dataset

    for name in names:
        ds = load_dataset(name, data_dir)
        print(f"data: {name} ready ({len(ds):,} images, hash {ds.hash})", flush=True)


#: Which earlier stages a notebook's runs read (by the notebooks' two-digit numbers). A run is
#: dispatched once every run of those stages in the same study has finished; runs of unrelated
#: stages (e.g. paper B's 06 beside paper A's 04) run side by side. Stage-level, not run-level, on
#: purpose: it is what the notebooks' lookups (``runs.find_run``, the caches they share) need, and
#: it is checked against them by ``tests/test_study.py``.
READS: dict[str, tuple[str, ...]] = {
    "04": ("03",),  # coreset scores: 03 computes them into the shared cache
    "05": ("04",),  # train_run
    "06": ("02", "07"),  # sentinel2_run; ablation_run (paper B's ablation claim in the claims table)
    "07": ("02",),  # sentinel2_run
    "08": ("06",),  # evaluation_run
    "09": ("03", "04", "05"),  # the linear probes of its 03 grid, Table 1 over its 04 grid, Table 2 over its 05 grid
}
#: Parameters that name one run of notebook 04 that a 03 or 04 run starts from (issue 21's
#: in-project backbone): run-level edges beside the stage-level READS. A 04 run that needs no
#: coreset scores (random or the whole split, e.g. the backbone itself) does not wait for 03, so
#: a 03 run scoring with a backbone can wait for it without a cycle.
SAME_STAGE_REFERENCES = ("backbone_run",)


def _memo(fn):
    """Cache a function of one run ``(nb, params)`` (plans hold hundreds of runs; params are dicts)."""
    cache: dict[tuple[str, str], Any] = {}

    def wrapped(nb: Path, params: dict):
        key = (str(nb), json.dumps(params, sort_keys=True))
        if key not in cache:
            cache[key] = fn(nb, params)
        return cache[key]

    return wrapped


@_memo
def _referenced(nb: Path, params: dict) -> frozenset[str]:
    """Folder names of the 04 runs a run starts from (:data:`SAME_STAGE_REFERENCES`)."""
    out = set()
    for key in SAME_STAGE_REFERENCES:
        ref = params.get(key)
        if ref:
            train = runs.notebook_path("04_train")
            out.add(runs.run_dir("train", runs.resolve_params(train, dict(ref))).name)
    return frozenset(out)


@_memo
def _folder(nb: Path, params: dict) -> str:
    stage = runs.notebook_stage(nb)
    return runs.run_dir(stage, runs.resolve_params(nb, params)).name if nb.stem[:2] == "04" else ""


@_memo
def _reads_stage(nb: Path, params: dict) -> frozenset[str]:
    """The stages a run waits for: READS, less 03 for a 04 run that needs no coreset scores."""
    stages = set(READS.get(nb.stem[:2], ()))
    if nb.stem[:2] == "04":
        full = runs.resolve_params(nb, params)
        if float(full.get("fraction", 1.0)) >= 1.0 or full.get("coreset") == "random":
            stages.discard("03")
    return frozenset(stages)


def waits_for(run: tuple[Path, dict], other: tuple[Path, dict]) -> bool:
    """Whether ``run`` must wait until ``other`` has finished (stage-level READS, run-level backbones)."""
    (nb, params), (onb, oparams) = run, other
    return onb.stem[:2] in _reads_stage(nb, params) or (
        onb.stem[:2] == "04" and _folder(onb, oparams) in _referenced(nb, params))


#: The parameters by which a stage names one run of an earlier stage (a dict of that run's
#: parameters; ``{}`` for ``backbone_run`` and ``None`` for ``ablation_run`` name none).
REFERENCES: dict[str, dict[str, str]] = {
    "03": {"backbone_run": "04"},  # the proxy starts from an in-project pretrained 04 run
    "04": {"backbone_run": "04"},
    "05": {"train_run": "04"},
    "06": {"sentinel2_run": "02", "ablation_run": "07"},
    "07": {"sentinel2_run": "02"},
    "08": {"evaluation_run": "06"},
}
#: References that name no run: "none" for these parameters.
_NO_REFERENCE = {"backbone_run": ({},), "ablation_run": (None,)}


class ProfileReferenceError(ValueError):
    """A later stage of a profile names a run that the earlier stage's grid does not plan."""


def _score_key(stage: str, p: dict) -> tuple | None:
    """The coreset-score cache key a 03 run writes or a 04 run reads (None: a 04 run reads none).

    :func:`lcc_utils.coresets.get_scores` keys scores by dataset, seed, proxy, its epochs and
    pixels, and its starting weights; a 04 proxy starts from the target's weights only when it
    is the target backbone itself (:func:`lcc_utils.paper_a.prepare_training`).
    """
    from .coresets import get_coreset_method

    if stage == "03":
        return (p["dataset"], p["seed"], p["scoring_model"], p["scoring_epochs"], p["scoring_image_size"],
                bool(p["scoring_pretrained"]), json.dumps(p["backbone_run"], sort_keys=True))
    if not get_coreset_method(p["coreset"]).needs_scores or float(p["fraction"]) >= 1.0:
        return None
    same = p["scoring_model"] == p["model"]
    return (p["dataset"], p["seed"], p["scoring_model"], p["scoring_epochs"], p["scoring_image_size"],
            bool(p["pretrained"]) and same, json.dumps(p["backbone_run"] if same else {}, sort_keys=True))


def _closest(ref: dict, planned: list[dict]) -> str:
    """How ``ref`` differs from the planned run nearest to it (fewest differing parameters)."""
    if not planned:
        return "the earlier grid plans no run at all"
    def diff(p: dict) -> list[str]:
        return sorted(k for k in set(ref) | set(p) if k != "data_dir" and ref.get(k) != p.get(k))
    best = min(planned, key=lambda p: len(diff(p)))
    return "the nearest planned run differs in " + ", ".join(
        f"{k} ({ref.get(k)!r} here, {best.get(k)!r} there)" for k in diff(best))


def check_references(profile: str, plans: dict[str, list[dict]] | None = None) -> None:
    """Check that every run a later stage of ``profile`` names is one an earlier grid plans.

    For each reference parameter (:data:`REFERENCES`), the folder :func:`lcc_utils.runs.find_run`
    would look in (:func:`~lcc_utils.runs.resolve_params` + :func:`~lcc_utils.runs.run_dir`) must
    be the folder of a run in the earlier stage's grid of the same profile; a 04 run's coreset
    scores must be ones a 03 run of the grid computes (:func:`_score_key`); 09's ``profile`` must
    be the profile itself. Catching a parameter the two grids spell differently (``device``:
    ``"cuda"`` in 04, left at the default in 05's ``train_run``) here costs nothing; in the
    study it costs the GPU hours before the later stage fails to find its runs.

    Args:
        profile: One of :data:`PROFILES`.
        plans: ``{"04": [params, ...], ...}`` to check instead of the profile's grids (a stage
            left out takes its grid), e.g. a grid under test.

    Raises:
        ProfileReferenceError: naming, for every broken reference, the profile, the stage, the
            parameter, the run it names and how it differs from the nearest planned run.

    """
    from .runs import notebook_stage, resolve_params, run_dir

    books = {nb.stem[:2]: nb for nb in notebooks()}
    plans = dict(plans or {})
    for num, nb in books.items():
        plans.setdefault(num, profile_runs(nb, profile))
    resolved = {num: [resolve_params(books[num], p) for p in plans[num]] for num in books}
    folders = {num: {run_dir(notebook_stage(books[num]), p).name for p in resolved[num]} for num in books}
    problems = []
    for num, refs in REFERENCES.items():
        for full, given in zip(resolved.get(num, []), plans.get(num, []), strict=True):
            for name, earlier in refs.items():
                ref = full[name]
                if any(ref == none for none in _NO_REFERENCE.get(name, ())):
                    continue
                target = resolve_params(books[earlier], ref)
                folder = run_dir(notebook_stage(books[earlier]), target).name
                if folder not in folders[earlier]:
                    problems.append(
                        f"profile {profile!r}: {books[num].stem} {json.dumps(given, sort_keys=True)[:200]} names "
                        f"{name}={json.dumps(ref, sort_keys=True)}, but the {profile!r} grid of "
                        f"{books[earlier].stem} plans no such run (folder {folder}); "
                        f"{_closest(target, resolved[earlier])}")
    if "03" in books and "04" in books:
        computed = {_score_key("03", p) for p in resolved["03"]}
        for full, given in zip(resolved["04"], plans["04"], strict=True):
            key = _score_key("04", full)
            if key is not None and key not in computed:
                problems.append(
                    f"profile {profile!r}: 04_train {json.dumps(given, sort_keys=True)[:200]} reads coreset "
                    f"scores (dataset, seed, scoring_model, scoring_epochs, scoring_image_size, pretrained, "
                    f"backbone_run) = {key}, but the {profile!r} grid of 03_coreset_scoring computes none "
                    f"such; 04 would score the split itself, and 09 would miss its linear probe")
    for num, nb in books.items():
        if "profile" in notebook_defaults(nb):
            for full in resolved[num]:
                if full["profile"] != profile:
                    problems.append(f"profile {profile!r}: {nb.stem} names profile={full['profile']!r}, "
                                    f"so its tables would cover another profile's runs")
    if problems:
        raise ProfileReferenceError(f"{len(problems)} reference(s) of profile {profile!r} name no planned run:\n  "
                                    + "\n  ".join(problems))


#: Set to 1 by ``--refresh-notebooks``: finished runs re-render their executed notebook
#: (:func:`lcc_utils.runs.execute_notebook` with ``refresh``); workers inherit it.
REFRESH_ENV = "LCC_REFRESH_NOTEBOOKS"


def execute_run(notebook: str, params: dict, data_dir: str, env: dict[str, str], *after) -> dict:
    """Execute one run (a Dask task; ``after`` are the finished runs it waits for, unused)."""
    os.environ.update(env)  # a batch worker does not inherit the driver's LCC_* settings
    nb = Path(notebook)
    t0 = time.perf_counter()
    d, executed = execute_notebook(nb, {**params, "data_dir": data_dir},
                                   refresh=os.environ.get(REFRESH_ENV) == "1")
    return {"notebook": nb.stem, "params": json.dumps(params, sort_keys=True), "run_dir": str(d),
            "executed": executed, "seconds": round(time.perf_counter() - t0, 1)}


def study_plan(profile: str, only: list[str] | None = None) -> list[tuple[Path, dict]]:
    """The runs of ``profile`` (optionally of the stages in ``only``), in an order that reads nothing unmade.

    Notebook order, except that a stage reading a later-numbered one (06 reads 07's ablation)
    moves after it, and a 04 run another run starts from (a ``backbone_run``) moves before the
    first run that names it. The serial study never runs a run before the runs it reads.
    """
    pending = [nb for nb in notebooks() if not only or nb.stem in only or nb.stem[:2] in only]
    books = []
    while pending:
        stages = {b.stem[:2] for b in pending}
        nb = next((b for b in pending if not (set(READS.get(b.stem[:2], ())) - {b.stem[:2]}) & stages),
                  pending[0])  # a cycle (none today) falls back to notebook order
        books.append(nb)
        pending.remove(nb)
    plan = [(nb, p) for nb in books for p in profile_runs(nb, profile)]
    for run in list(plan):
        for other in [o for o in plan if o is not run and waits_for(run, o) and o[0].stem[:2] == "04"
                      and _folder(*o) in _referenced(*run)]:
            if plan.index(other) > plan.index(run):
                plan.remove(other)
                plan.insert(plan.index(run), other)
    return plan


def dispatch(plan: list[tuple[Path, dict]], data_dir: str, jobs: int = 1, cluster: str = "local",
             address: str | None = None) -> pd.DataFrame:
    """Execute ``plan``: as Dask futures, or serially here when ``jobs == 1`` and no cluster is named.

    A Dask run waits for the runs of the stages it reads (:data:`READS`).

    Every run is attempted even when another fails (runs depending on a failed one fail with
    it); a failure is raised at the end, naming every failed run.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    from .cluster import open_client, worker_environment

    env = worker_environment()
    rows, failed = [], []

    def report(row_or_err, nb: Path, params: dict) -> None:
        done = len(rows) + len(failed)
        label = f"[{done}/{len(plan)}] {nb.stem} {json.dumps(params, sort_keys=True)}"
        if isinstance(row_or_err, BaseException):
            print(f"{label}\n    FAILED: {type(row_or_err).__name__}: {row_or_err}", flush=True)
        else:
            what = "done" if row_or_err["executed"] else "skipped (finished before)"
            print(f"{label}\n    {what} in {row_or_err['seconds']:.0f} s -> {row_or_err['run_dir']}",
                  flush=True)

    if jobs == 1 and cluster == "local" and not address:
        for nb, params in plan:
            try:
                rows.append(execute_run(str(nb), params, data_dir, env))
                report(rows[-1], nb, params)
            except Exception as err:  # keep going: independent runs still run
                failed.append((nb, params, err))
                report(err, nb, params)
    else:
        from distributed import as_completed

        # A run is submitted once every run of the stages it reads has finished. The ordering is
        # not given to Dask as data dependencies: Dask places a task on the worker holding its
        # dependencies' results (data locality), and for these result-less ordering edges that
        # queued 07 and both 06 runs of the smoke study on one worker while the other idled.
        # Submitted runs have no dependencies, so Dask sends each to the least busy worker.
        waiting, running = list(plan), {}
        keys = itertools.count()

        def ready(nb: Path, params: dict) -> bool:
            busy = [*waiting, *running.values()]
            return not any(waits_for((nb, params), o) for o in busy if o != (nb, params))

        with open_client(cluster, jobs, address) as client:
            pool = as_completed([])

            def submit_ready() -> None:
                for nb, params in [(nb, p) for nb, p in waiting if ready(nb, p)]:
                    waiting.remove((nb, params))
                    fut = client.submit(execute_run, str(nb), params, data_dir, env, pure=False,
                                        key=f"{nb.stem}-{next(keys)}")
                    running[fut.key] = (nb, params)
                    pool.add(fut)

            submit_ready()
            for fut in pool:
                nb, params = running.pop(fut.key)
                try:
                    rows.append(fut.result())
                    report(rows[-1], nb, params)
                except Exception as err:  # a run reading this one fails with a message naming it
                    failed.append((nb, params, err))
                    report(err, nb, params)
                submit_ready()
    if failed:
        names = "; ".join(f"{nb.stem} {json.dumps(p, sort_keys=True)}: {type(e).__name__}: {e}"
                          for nb, p, e in failed)
        raise RuntimeError(f"{len(failed)} of {len(plan)} run(s) failed: {names}")
    order = {(str(nb.stem), json.dumps(p, sort_keys=True)): i for i, (nb, p) in enumerate(plan)}
    return pd.DataFrame(sorted(rows, key=lambda r: order[(r["notebook"], r["params"])]))


def run_study(profile: str = "quick", data_dir: str | None = None, only: list[str] | None = None,
              jobs: int = 1, cluster: str = "local", address: str | None = None) -> pd.DataFrame:
    """Execute the study; return one row per run (notebook, run folder, executed or skipped, seconds)."""
    root = resolve_data_dir(data_dir)
    # Only the study publishes figures (the kernels inherit this environment). The committed
    # figures/ are the quick study's; smoke and paper publish to figures/<profile>/.
    os.environ["LCC_PUBLISH_FIGURES"] = "1"
    if profile != "quick" and "LCC_FIGURES_DIR" not in os.environ:
        os.environ["LCC_FIGURES_DIR"] = str(figures_dir() / profile)
    os.environ["LCC_RUNS_DIR"] = str(profile_runs_root(profile))
    check_references(profile)  # before any run: a later stage must find what the earlier ones make
    plan = study_plan(profile, only)
    where = address or (cluster if cluster != "local" else
                        "this process" if jobs == 1 else f"a local Dask cluster of {jobs} workers")
    print(f"study: profile {profile!r}, data root {root}, {len(plan)} run(s), on {where}", flush=True)
    return dispatch(plan, str(root), jobs, cluster, address)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``make study``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "quick"), choices=PROFILES)
    ap.add_argument("--data-dir", default=None, help="data root (default: $LCC_DATA_DIR or data/)")
    ap.add_argument("--only", nargs="*", help="notebook stems or numbers to run (default: all)")
    ap.add_argument("--prepare-only", action="store_true", help="only fetch and decode the datasets")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "1")),
                    help="Dask workers, i.e. runs at a time (default: $JOBS or 1 = serial, no Dask)")
    ap.add_argument("--cluster", default=os.environ.get("LCC_CLUSTER", "local"), choices=CLUSTERS,
                    help="where the workers run (default: $LCC_CLUSTER or local; see lcc_utils.cluster)")
    ap.add_argument("--scheduler", default=os.environ.get("LCC_SCHEDULER") or None,
                    help="address of a running Dask scheduler to use instead (tcp://host:8786)")
    ap.add_argument("--refresh-notebooks", action="store_true",
                    help="re-render the executed notebooks of finished runs: executed again (continuing "
                         "their checkpoints), the copy replaced only where every metric is unchanged")
    args = ap.parse_args(argv)
    if args.refresh_notebooks:
        os.environ[REFRESH_ENV] = "1"
    prepare_data(args.data_dir)
    if args.prepare_only:
        return 0
    summary = run_study(args.profile, args.data_dir, args.only, jobs=args.jobs,
                        cluster=args.cluster, address=args.scheduler)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
