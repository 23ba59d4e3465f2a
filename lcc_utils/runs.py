"""Run folders: every notebook run explains itself, and a finished run is never redone.

``runs/<stage>/<slug>-<hash>/`` holds ``params.json`` (the notebook's parameters, the
code version, the data hash), ``metrics.json`` (written last: its presence marks the
run finished), tables as CSV, ``history.csv`` where there is training, and the executed
notebook when the run was made by :func:`execute_notebook`. The hash covers the
parameters only (not ``data_dir``, a location), so the same parameters always land in
the same folder, whether the notebook was run by ``make study``, by papermill directly
or in JupyterLab.

A finished run folder is never written into. Reopening it (a rerun of the notebook, by hand or
by nbval) gives a :class:`Run` that reads from the folder but writes everything into a staging
folder outside the tracked tree, :func:`rerun_dir` (``cache/rerun/<stage>/<folder>/``);
:meth:`Run.log_metrics` then compares with the committed metrics, before and without touching
the committed folder. The same staging folder holds the checkpoint that
:func:`lcc_utils.trained.reopen_trained` rebuilds for a folder whose checkpoint is not committed.
A run that fails leaves no folder behind (:func:`execute_notebook`).

One process writes a run folder: :func:`start_run` takes its lock (:func:`lock_run`, a file
under ``cache/locks/``) before writing anything, :meth:`Run.log_metrics` releases it after
``metrics.json``, the folder's last file. Every run file is read through
:func:`read_run_json`: a broken one is an error naming it and the rerun; a ``metrics.json``
that does not parse marks no finished run (:func:`run_finished`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import numbers
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .files import json_parses, read_json
from .paths import (
    atomic_path,
    atomic_write,
    cache_dir,
    data_relative,
    project_root,
    resolve_data_dir,
    resolve_path,
    runs_root,
)

#: Parameters that say *where* things are, not *what* is computed: left out of the hash.
LOCATION_PARAMS = ("data_dir",)
#: Parameters added to a notebook after runs were committed, with the value that reproduces the
#: behaviour from before they existed. At that value a parameter is left out of the hash (and of
#: the slug), so every run made before it existed keeps its folder; any other value is hashed
#: like every parameter. A new parameter of an existing notebook belongs here.
ADDED_PARAMS: dict[str, Any] = {
    "backbone_run": {},  # 03/04: in-project pretrained backbone (issue 21); {} = none
    "binary_labels": "landuse",  # 02/06/07: EuroSAT classes grouped by name (issue 22); sentinel2.labels
}
#: Metrics added to a notebook after runs were committed: a rerun of a run committed before
#: them that now also logs them is not a conflict (nor a failed reproduction), as long as every
#: metric both have agrees. Any other metric present on one side only still is.
ADDED_METRICS = (
    "val_rise_last30_points", "coreset_train_accuracy",  # 04 (issue 21: convergence, fit)
    # 08 (issue 22: the desert tile as a specificity control, the NDVI-threshold map beside the CNN's)
    "scl_not_vegetated_as_non_vegetation", "scl_vegetation_as_vegetation", "binary_labels", "ndvi_threshold",
    "ndvi_scl_oa", "ndvi_scl_not_vegetated_as_non_vegetation", "ndvi_share_vegetation", "ndvi_share_non_vegetation",
    "ndvi_share_masked",
    "grid_m",  # 02 (issue 23: the grid's pixel size, 100 m on the shrunk tile, not always 10 m)
)
#: Parameters shown first in the readable part of a folder name.
SLUG_KEYS = ("run", "dataset", "task", "binary_labels", "model", "coreset", "fraction", "method", "scene", "seed")
#: Metric names measured by a clock (or memory), not results: a rerun is never compared on them
#: (here and in :mod:`lcc_utils.reproduce`).
TIMING_METRICS = r"seconds|_s$|^s_|time|throughput|latency|speed|mpx|peak_mem|memory|cost_ratio|estimate"
#: Metric names that say where a run kept a local file (e.g. ``scores_file``, a cache path named by
#: the data's hash) or which folder it read (08's ``model_source``: ``runs/smoke/evaluation/...`` in
#: the committed smoke run, ``runs/evaluation/...`` in a reproduction's scratch root): a location,
#: not a result.
LOCATION_METRICS = r"(_file|_path|_dir|_source)$"
NOT_COMPARED = re.compile(f"{TIMING_METRICS}|{LOCATION_METRICS}")


class RunConflictError(RuntimeError):
    """A finished run would be overwritten with different results."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return v.item()
    return v


def _at_added_default(name: str, value: Any) -> bool:
    """Whether ``name`` is one of :data:`ADDED_PARAMS` at its before-it-existed value."""
    return name in ADDED_PARAMS and _jsonable(value) == _jsonable(ADDED_PARAMS[name])


#: Scene defaults written as ``data:<rel>`` (under the data root) were ``../shared/data/<rel>``
#: when runs were committed: hashed as before, so those runs keep their folders.
_DATA_SCENE_HASHED_AS = "../shared/data/"


def _hashed(name: str, value: Any) -> Any:
    if name == "scene" and isinstance(value, str) and value.startswith("data:"):
        return _DATA_SCENE_HASHED_AS + value[len("data:"):]
    return value


def params_hash(params: dict[str, Any]) -> str:
    """Short sha256 of the parameters that define a run (location parameters excluded)."""
    core = {k: _hashed(k, _jsonable(v)) for k, v in sorted(params.items())
            if k not in LOCATION_PARAMS and not _at_added_default(k, v)}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:8]


def _slug(params: dict[str, Any]) -> str:
    # a reference to an earlier run (a dict of its parameters) lends its readable keys
    flat = {**{k: v for ref in params.values() if isinstance(ref, dict) for k, v in ref.items()}, **params}
    parts = []
    for k in SLUG_KEYS:
        v = flat.get(k)
        if isinstance(v, dict):
            continue
        if v in (None, "", []) or _at_added_default(k, v):  # an added parameter at its old value: old slug
            continue
        s = Path(str(v)).name if k in ("scene", "run") else str(v)
        parts.append(s)
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(parts)).strip("-")
    return (slug[:60] or "run")


def run_dir(stage: str, params: dict[str, Any]) -> Path:
    """The folder of the run of ``stage`` with ``params``: ``runs/<stage>/<slug>-<hash>``."""
    if not re.fullmatch(r"[a-z0-9_]+", stage):
        raise ValueError(f"stage={stage!r} must be lowercase letters, digits or '_'")
    return runs_root() / stage / f"{_slug(params)}-{params_hash(params)}"


def rerun_dir(folder: str | os.PathLike) -> Path:
    """Where writes meant for the finished run folder ``folder`` go: ``cache/rerun/<stage>/<name>``.

    The folder's path under ``runs/`` (``train/<slug>-<hash>``, or
    ``evaluation/<run>/models/<key>`` for one network of a paper-B run) under
    ``paths.cache_dir()/"rerun"``: outside the tracked tree (``/cache/`` is git-ignored), one
    per run folder, and kept between reruns, so it doubles as the checkpoint cache of a
    committed run. A folder outside ``runs/`` goes to ``cache/rerun/elsewhere/<name>-<hash of
    its path>``.
    """
    return cache_dir() / "rerun" / _folder_key(folder)


def _folder_key(folder: str | os.PathLike) -> Path:
    """A run folder's path under ``runs/`` (``elsewhere/<name>-<hash of its path>`` outside it)."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(runs_root().resolve())
    except ValueError:
        return Path("elsewhere") / f"{folder.name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------- one writer per folder
class RunLockedError(RuntimeError):
    """Another process is writing the run folder (one writer per run folder)."""


#: Set by :func:`execute_notebook` for its kernel: the lock file the executing driver holds on the
#: kernel's behalf (the kernel is another process, which would otherwise find the lock taken).
LOCK_ENV = "LCC_RUN_LOCK"
_HELD: dict[str, Any] = {}  # lock file -> filelock.FileLock this process holds


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of a run folder: ``cache/locks/<stage>/<name>-<hash>.lock``, outside the tracked tree.

    ``<hash>`` is of the folder's absolute path: the lock guards one folder, so the same run in two
    runs roots that share a cache (``make demo``'s scratch root beside ``runs/``, two test workers)
    are two writers of two folders, not one another's holders.
    """
    key = _folder_key(folder)
    where = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:8]
    return cache_dir() / "locks" / key.parent / f"{key.name}-{where}.lock"


def lock_run(folder: str | os.PathLike) -> None:
    """Make this process the one writer of ``folder`` until :func:`release_run` (or its exit).

    Two copies of the same run (two terminals, a study and a JupyterLab session) would otherwise
    both write the folder, the slower one rewriting tables and figures after the faster one's
    ``metrics.json``. The lock is an OS file lock (``filelock``): a crashed holder releases it.

    Raises:
        RunLockedError: another process holds it (the message names the folder and the holder).

    """
    from filelock import FileLock, Timeout

    path = lock_path(folder)
    if str(path) in _HELD or Path(os.environ.get(LOCK_ENV) or "/nonexistent").resolve() == path.resolve():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(
            f"run folder {shown_path(folder)} is being written by {_lock_holder(path)} (lock {path}); "
            "one writer per run folder. Wait for that run to finish (a rerun then reopens it "
            "read-only) or stop it; a process that died has released the lock already.") from None
    _HELD[str(path)] = lock
    holder = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(path.with_suffix(".holder.json"), json.dumps(holder) + "\n")


def _lock_holder(path: Path) -> str:
    """``pid 123 on host h since <time>`` from the holder file beside a lock (best effort)."""
    try:
        h = json.loads(path.with_suffix(".holder.json").read_text())
        return f"pid {h['pid']} on host {h['host']} (since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def release_run(folder: str | os.PathLike) -> None:
    """Release this process's lock of ``folder`` (no-op when it holds none)."""
    path = lock_path(folder)
    lock = _HELD.pop(str(path), None)
    if lock is not None:
        path.with_suffix(".holder.json").unlink(missing_ok=True)
        lock.release()


def data_variant_dir(folder: str | os.PathLike, data_hash: str) -> Path:
    """Folder of a run with the same parameters as ``folder`` made on other data.

    The data are part of a run's identity: the folder named by the parameters alone belongs to
    the first data it was made on (the committed runs: the data of ``../shared/data``); the same
    parameters on data with another content hash run in ``<folder>-data-<hash[:8]>`` beside it,
    never a conflict with it and never written into it. Its ``params.json`` records the data hash.
    """
    folder = Path(folder)
    return folder.parent / f"{folder.name}-data-{data_hash[:8]}"


def run_file_remedy(folder: str | os.PathLike) -> str:
    """What to do about a broken file of the run folder ``folder``: delete the folder, rerun the run."""
    if Path(folder).parent.name == "models":  # one network of a paper-B run: the run is two up
        folder = Path(folder).parent.parent
    stage = Path(folder).parent.name
    books = [nb.name for nb in sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
             if re.match(r"\d+_", nb.name) and notebook_stage(nb) == stage]
    how = f"papermill notebooks/{books[0]} with the run's parameters" if books else "its notebook"
    return (f"Delete the run folder {shown_path(folder)} and run it again (`make study` reruns every "
            f"missing run; by hand: {how})")


def read_run_json(folder: str | os.PathLike, name: str) -> dict[str, Any]:
    """``<folder>/<name>`` (``params.json``, ``metrics.json``...) of a run folder, or a named error.

    Raises:
        BrokenFileError: the file is empty, truncated or not a JSON object (the message says to
            delete the folder and which command makes it again).

    """
    return read_json(Path(folder) / name, run_file_remedy(folder))


def run_finished(folder: str | os.PathLike) -> bool:
    """Whether the run in ``folder`` finished: its ``metrics.json`` exists *and* parses.

    ``metrics.json`` is written last, atomically; one that does not parse (a disk that filled, a
    broken copy) marks no finished run, so ``make study`` runs it again instead of skipping it.
    """
    return json_parses(Path(folder) / "metrics.json")


def recorded_data_hash(folder: str | os.PathLike) -> str | None:
    """The ``data_hash`` in a run folder's ``params.json`` (None: no such file or no hash)."""
    p = Path(folder) / "params.json"
    return read_run_json(folder, "params.json").get("data_hash") if p.is_file() else None


def _for_data(folder: Path, data_hash: str | None) -> Path:
    """``folder``, or its :func:`data_variant_dir` when ``folder`` was made on data other than ``data_hash``."""
    recorded = recorded_data_hash(folder)
    if data_hash and recorded and recorded != data_hash:
        return data_variant_dir(folder, data_hash)
    return folder


def _current_data_hash(params: dict[str, Any]) -> str | None:
    """Content hash of the dataset ``params`` name (None: no ``dataset`` parameter, or not on disk).

    Stages with a ``dataset`` parameter (01, 03, 04) record that dataset's content hash as their
    ``data_hash``; :func:`execute_notebook` checks it before it skips a finished run, so other
    data under the same parameters get a run of their own instead of the committed results.
    """
    if isinstance(params.get("scene"), str) and isinstance(params.get("eurosat_task"), str):
        return _current_preprocessing_hash(params)
    if not isinstance(params.get("dataset"), str):
        return None
    from . import data

    # hashing EuroSAT's 27,000 files takes seconds even when only stat'ed: one look per dataset
    # and root per minute serves a whole study's skip checks
    key = (params["dataset"], str(data.resolve_data_dir(params.get("data_dir") or None)))
    now = time.monotonic()
    if key not in _DATA_HASHES or now - _DATA_HASHES[key][0] > 60:
        _DATA_HASHES[key] = (now, data.current_hash(*key))
    return _DATA_HASHES[key][1]


_DATA_HASHES: dict[tuple[str, ...], tuple[float, str | None]] = {}


def _current_preprocessing_hash(params: dict[str, Any]) -> str | None:
    """Notebook 02's data hash now: its scene and the EuroSAT MS files it cuts (None: no scene here).

    Once per scene, bands, task and data root per minute, like :func:`_current_data_hash`.
    """
    from . import data, sentinel2

    scene = resolve_path(params["scene"])
    root = data.resolve_data_dir(params.get("data_dir") or None)
    key = (str(scene), "|".join(map(str, params.get("bands") or [])), params["eurosat_task"], str(root))
    now = time.monotonic()
    if key not in _DATA_HASHES or now - _DATA_HASHES[key][0] > 60:
        found = None
        if scene.exists():
            product = sentinel2.open_l2a(scene, *([params["bands"]] if params.get("bands") else []))
            found = sentinel2.preprocessing_data_hash(product, params["eurosat_task"], root)
        _DATA_HASHES[key] = (now, found)
    return _DATA_HASHES[key][1]


def git_commit() -> str:
    """The code version: ``git describe`` of the project (``+dirty`` when uncommitted edits exist)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=project_root(),
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


class RunFile(type(Path())):
    """Path of a file a run wrote; a notebook shows it as ``saved runs/<stage>/<run>/<file>``.

    The ``save_*`` methods and :meth:`Run.log_metrics` return one, so a cell ending with such a
    call shows a short line relative to the runs folder instead of ``PosixPath('/home/...')``:
    an executed copy names no machine.
    """

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"saved {shown_path(self)}")


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a notebook may show it, naming no machine.

    Relative to the project (``runs/...``, ``cache/...``); a file under a runs folder elsewhere
    (``LCC_RUNS_DIR``) as ``runs/<stage>/...``, under a cache elsewhere (``LCC_CACHE_DIR``) as
    ``cache/...``; anything else by its name only.
    """
    path = Path(path).resolve()
    for base, prefix in ((runs_root().resolve(), "runs/"), (project_root().resolve(), ""),
                         (cache_dir().resolve(), "cache/")):
        try:
            return prefix + path.relative_to(base).as_posix()
        except ValueError:
            continue
    return data_relative(path)  # data:<rel> under the data root, else the name


def rounded(obj: Any, ndigits: int = 4) -> Any:
    """``obj`` with every float rounded to ``ndigits`` decimals (dicts and lists too), for printing.

    ``1.5500000000000114`` -> ``1.55``: what a notebook prints of a dict of metrics or budgets;
    the files keep full precision.
    """
    if isinstance(obj, dict):
        return {k: rounded(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(rounded(v, ndigits) for v in obj)
    if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0
                                  and np.issubdtype(obj.dtype, np.floating)):
        return round(float(obj), ndigits)
    return obj


def machine_free(obj: Any) -> Any:
    """``obj`` (JSON-able) with every absolute path string shown as :func:`shown_path` names it.

    What a run writes names no machine (``/home/...``, ``/tmp/...``): a report that kept the
    paths a function returned (08's ``map_report.json``) records ``runs/...``, ``cache/...``
    or ``data:...`` instead.
    """
    if isinstance(obj, dict):
        return {k: machine_free(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [machine_free(v) for v in obj]
    if isinstance(obj, str) and len(obj) > 1 and "\n" not in obj and (
            obj.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", obj)):
        return shown_path(obj)
    return obj


@dataclass
class Run:
    """A run folder: write artefacts with its methods, finish with :meth:`log_metrics`.

    ``dir`` is the run's folder, to read from; ``out`` is where this session writes: ``dir``
    itself for a new or unfinished run, the staging folder :func:`rerun_dir` for a run that
    had finished when it was reopened (a finished folder is never written into). Code that
    writes into the run (training checkpoints, ``models/<key>/``...) is given ``run.out``.
    """

    stage: str
    params: dict[str, Any]
    dir: Path
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = self.dir

    @property
    def finished(self) -> bool:
        """Whether the run has written its ``metrics.json`` (one that parses: :func:`run_finished`)."""
        return run_finished(self.dir)

    @property
    def staged(self) -> bool:
        """Whether this session writes into a staging folder (the run had finished before)."""
        return self.out != self.dir

    def path(self, name: str) -> Path:
        """Path of an artefact this session writes (in :attr:`out`; sub-folders are created)."""
        if not self.staged and self.finished:
            raise RunConflictError(f"run {shown_path(self.dir)} finished (its metrics.json is written) "
                                   f"and is never written into after that: save {name} before "
                                   "run.log_metrics(...), which comes last")
        p = self.out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return RunFile(p)

    def save_table(self, df: pd.DataFrame, name: str, index: bool = False) -> Path:
        """Write a table as ``<name>.csv``."""
        p = self.path(f"{name}.csv")
        atomic_write(p, df.to_csv(index=index))
        return RunFile(p)

    def save_json(self, obj: Any, name: str) -> Path:
        """Write ``obj`` as ``<name>.json`` (absolute paths in it shown machine-free: :func:`machine_free`)."""
        p = self.path(f"{name}.json")
        atomic_write(p, json.dumps(machine_free(_jsonable(obj)), indent=2, sort_keys=True) + "\n")
        return RunFile(p)

    def save_figure(self, fig: Any, name: str, publish: bool = False, dpi: int = 150) -> Path:
        """Write a figure as ``<name>.png`` in the run folder (:attr:`out`); return its path.

        Every figure stays with the run that made it, so running a notebook by hand never
        touches the committed ``figures/``. ``publish=True`` marks a figure the study reports:
        it is *also* written to ``figures/<stage>_<name>.png/.pdf`` (at ``dpi``), but only while
        :func:`publishing` is on (``make study`` turns it on; see :mod:`lcc_utils.study`).
        """
        from .plots import save_figure

        p = save_figure(fig, self.path(name), formats=("png",), dpi=110)[0]
        if publish and publishing():
            from .paths import figures_dir

            save_figure(fig, figures_dir() / f"{self.stage}_{name}", dpi=dpi)
        return RunFile(p)

    def log_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` and so mark the run finished.

        For a run that had finished before, nothing is written: the same values (within a
        relative 1e-6) are a no-op (a rerun of a deterministic run), different values raise
        :class:`RunConflictError` naming them. Either way the committed folder is untouched and
        this rerun's files stay in the staging folder :attr:`out`. Timings and cache locations
        (``train_seconds``, ``scores_file``) are measurements of the machine, not results: they
        are not compared (:data:`NOT_COMPARED`).
        """
        p = self.dir / "metrics.json"
        new = json.loads(json.dumps(machine_free(_jsonable(metrics))))  # a path as runs/..., cache/..., data:...
        if run_finished(self.dir):
            old, now = read_run_json(self.dir, "metrics.json"), new
            differ = sorted(k for k in old.keys() | now.keys()
                            if not (k in now and k not in old and k in ADDED_METRICS) and (
                                k not in old or k not in now or (
                                    not NOT_COMPARED.search(k.lower()) and not _close(old[k], now[k], rel=1e-6))))
            if not differ:
                return RunFile(p)
            shown = "; ".join(f"{k}: {old.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}" for k in differ)
            raise RunConflictError(
                f"run {self.dir} already finished with different metrics ({', '.join(differ)}); it is "
                f"never overwritten and was left untouched. {shown}. This rerun's files are in "
                f"{self.out}. Delete the run folder to redo it, or change a parameter."
            )
        atomic_write(p, json.dumps(new, indent=2, sort_keys=True) + "\n")
        release_run(self.dir)  # metrics.json is the folder's last file: its writer is done
        return RunFile(p)

    def metrics(self) -> dict[str, Any]:
        """The stored metrics (empty while the run is unfinished)."""
        return read_run_json(self.dir, "metrics.json") if run_finished(self.dir) else {}


class NotebookParams(dict):
    """The parameters of one notebook run, as executed, and the notebook they belong to.

    A plain dict of ``name -> value`` (exactly the names of the notebook's ``parameters``
    cell) that also knows its notebook's file name and stage, so ``start_run(params)`` needs
    nothing hand-written.
    """

    def __init__(self, values: dict[str, Any], notebook: str):
        super().__init__(values)
        self.notebook = notebook
        self.stage = notebook_stage(notebook)


def portable_data_dir(data_dir: Any) -> Any:
    """A data root as a run records it: named without the machine wherever the project can.

    A root beside or inside the project (the team's and CI's ``../shared/data``, ``data/``) as
    a path relative to the project root, which :func:`lcc_utils.paths.resolve_data_dir` resolves
    the same way on every clone; the root the default resolution finds anyway (``LCC_DATA_DIR``)
    as ``""``, the notebooks' "default data root". Any other absolute root (``--data-dir
    /elsewhere``, a test's synthetic tree) stays as given: it is the only way a later session on
    that machine finds the data again to rebuild the run. Never hashed (:data:`LOCATION_PARAMS`).
    """
    if not isinstance(data_dir, str | os.PathLike) or not os.path.isabs(data_dir):
        return data_dir
    here, d = project_root().resolve(), Path(data_dir).resolve()
    if d.is_relative_to(here.parent):
        return os.path.relpath(d, here)
    if d == resolve_data_dir(None).resolve():
        return ""
    return str(data_dir)


def _recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as ``params.json`` records them: the data root by :func:`portable_data_dir`.

    The study resolves ``data_dir`` to an absolute path; recorded relative to the project
    (``../shared/data``) or as the default root (``""``) it names no machine.
    """
    out = _jsonable(params)
    if "data_dir" in out:
        out["data_dir"] = portable_data_dir(out["data_dir"])
    return out


def start_run(params: dict[str, Any], data_hash: str | None = None, stage: str | None = None,
              **extra: Any) -> Run:
    """Open (or reopen) the run folder for ``params`` and write its ``params.json``.

    A finished run (its ``metrics.json`` exists) is reopened read-only: the returned run's
    :attr:`Run.out` is the staging folder :func:`rerun_dir`, which gets this session's
    ``params.json``; the committed folder keeps its own.

    Args:
        params: the notebook's parameters, from :func:`notebook_params` (which knows its stage),
            or a plain dict together with ``stage``.
        data_hash: content hash of the data the run reads.
        stage: pipeline stage (``data``, ``train``...); default ``params.stage``.
        **extra: more provenance to record (split hash, weights description...).

    """
    stage = stage or getattr(params, "stage", None)
    if not stage:
        raise ValueError("start_run needs the stage: pass params from runs.notebook_params(globals()) "
                         "or stage='...'")
    params = dict(params)
    d = _for_data(run_dir(stage, params), data_hash)
    info = _provenance(stage, params, data_hash, extra)
    if not run_finished(d):
        lock_run(d)  # before anything is written into the folder; released by log_metrics
    try:
        if (d / "params.json").exists():
            old = read_run_json(d, "params.json")
            if old.get("data_hash") not in (None, data_hash):  # a data variant folder made on yet other data
                raise RunConflictError(f"run {d} was made on other data (hash {old['data_hash']}, now {data_hash})")
        if run_finished(d):  # finished before, or while this session waited for the lock
            release_run(d)
            # keep the provenance of the finished run; this session writes beside it, in the cache
            out = rerun_dir(d)
            atomic_write(out / "params.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
            _seed_checkpoints(d, out)
            return Run(stage, params, d, out)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / "params.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    except BaseException:
        release_run(d)
        raise
    return Run(stage, params, d)


def _provenance(stage: str, params: dict[str, Any], data_hash: str | None, extra: dict[str, Any]) -> dict:
    """What ``params.json`` records besides the parameters: code, data and library versions."""
    info = {
        "stage": stage, "params": _recorded_params(params), "params_hash": params_hash(params),
        "data_hash": data_hash, "code_version": git_commit(), "lcc_utils": __version__,
        "python": platform.python_version(), "platform": platform.platform(),
        **{k: machine_free(_jsonable(v)) for k, v in extra.items()},  # e.g. 04's scores_file: cache/...
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def _seed_checkpoints(folder: Path, out: Path) -> None:
    """Copy the checkpoints of a finished run into its staging folder, where training looks.

    Reopening a finished run (JupyterLab, nbval, ``force``) with its checkpoints at hand
    continues them -- a finished training returns at once -- instead of training again; only a
    run whose checkpoints are not there (a fresh clone: they are not committed) trains, into
    the staging folder. Every ``checkpoints/`` folder of the run is copied (paper B's runs keep
    one per network under ``models/<key>/``); what the staging folder already has is kept.
    """
    for ckpt in sorted(folder.rglob("checkpoints")):
        if not ckpt.is_dir():
            continue
        target = out / ckpt.relative_to(folder)
        for f in ckpt.iterdir():
            if f.is_file() and not (target / f.name).exists():
                target.mkdir(parents=True, exist_ok=True)
                with atomic_path(target / f.name) as tmp:
                    shutil.copy2(f, tmp)


# --------------------------------------------------------------------------- notebooks
#: Run folders of two stages are named for their product, not their notebook (kept so that the
#: committed run folders keep their paths): everything else is the file name without its number.
_STAGE_ALIASES = {"sentinel2_preprocessing": "sentinel2", "coreset_scoring": "coresets"}
#: Environment variable naming the notebook being executed (set by :func:`execute_notebook`).
NOTEBOOK_ENV = "LCC_NOTEBOOK"

#: glibc malloc settings every kernel lcc starts gets (``execute_notebook``; the ``lcc`` Jupyter
#: kernel that ``make setup`` registers has them in its kernel.json). By default glibc serves
#: every block above 32 MiB (the most its adaptive threshold reaches) with a fresh mmap and
#: returns it on free, so every float32 batch of 64 images at 224 px (38.5 MB) is page-faulted in
#: again, zeroed by the kernel page by page. Raising the mmap threshold (256 MiB) and the trim
#: threshold (1 GiB) lets freed blocks be reused: in ``benchmarks/data_pipeline.py`` at 224 px
#: (``--allocator system`` against the default, see docs/data.md) the CPU path rose from 2.8x to
#: 4.6x ImageFolder + 2 workers, whose batches arrive in the workers' shared memory (394 -> 417
#: img/s). Numbers do not change (the allocator only decides where tensors live); a kernel keeps
#: up to 1 GiB of freed memory instead of returning it. ``execute_notebook`` keeps a value already
#: in the environment; the ``lcc`` kernel's kernel.json sets its own (edit it to change them).
#: Other C libraries ignore the names. PyTorch's CPU tuning guide makes the
#: same point with jemalloc / tcmalloc, which would be one more native dependency.
KERNEL_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def notebook_stage(notebook: str | os.PathLike) -> str:
    """Stage under ``runs/`` for a notebook file: ``04_train.ipynb`` -> ``train``.

    ``02_sentinel2_preprocessing`` -> ``sentinel2`` and ``03_coreset_scoring`` -> ``coresets``
    (:data:`_STAGE_ALIASES`). A copy such as ``04_train-Copy1.ipynb`` is still ``train``.
    """
    m = re.match(r"\d+_([a-z0-9_]+)", Path(notebook).stem)
    if not m:
        raise ValueError(f"{notebook}: a study notebook is named NN_<stage>.ipynb")
    return _STAGE_ALIASES.get(m.group(1), m.group(1))


def notebooks_dir() -> Path:
    """The study's numbered notebooks."""
    return project_root() / "notebooks"


def notebook_path(name: str) -> Path:
    """``notebooks/<name>.ipynb`` of a notebook named by stem (``04_train``) or number (``04``)."""
    hits = sorted(notebooks_dir().glob(f"{name}.ipynb")) or sorted(notebooks_dir().glob(f"{name}_*.ipynb"))
    if len(hits) != 1:
        choices = ", ".join(p.stem for p in sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb")))
        raise ValueError(f"notebook {name!r} is not one of: {choices}")
    return hits[0]


def _literal_assignments(source: str) -> dict[str, Any] | None:
    """``{name: value}`` of a cell made only of ``name = <literal>`` lines, else None."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    out: dict[str, Any] = {}
    for node in body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None)
        if not isinstance(target, ast.Name):
            return None
        try:
            out[target.id] = ast.literal_eval(node.value)
        except ValueError:
            return None
    return out or None


def _parameters_source(notebook: str | os.PathLike) -> str:
    """The source of a notebook's one cell tagged ``parameters`` (read from the file)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one cell tagged 'parameters' (found {len(cells)})")
    return cells[0].source


def notebook_defaults(notebook: str | os.PathLike) -> dict[str, Any]:
    """The default values of a notebook's ``parameters`` cell (read from the file)."""
    values = _literal_assignments(_parameters_source(notebook))
    if values is None:
        raise ValueError(f"{notebook}: the parameters cell must hold only `name = <literal>` lines")
    return values


def _annotations(source: str) -> dict[str, str]:
    """``{name: annotation}`` of a parameters cell: ``seed: int = 0`` -> ``"int"`` (a string one unquoted)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return {}
    return {n.target.id: n.annotation.value if isinstance(n.annotation, ast.Constant) else ast.unparse(n.annotation)
            for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


#: What a parameters cell's annotation admits. ``str`` is not enforced: a few text parameters also
#: take a list or a mapping (05's ``budget``), as their comments say.
_ANNOTATED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool, np.bool_), "list": (list,), "dict": (dict,)}
#: Parameters that count something (images, pixels, epochs, resamples): 0 or less is never meant.
#: Before this check ``batch_size=0`` trained silently with the recipe's 64 while params.json said 0.
POSITIVE_PARAMS = ("batch_size", "image_size", "epochs", "patch_size", "window_size", "stride",
                   "num_threads", "n_boot", "n_per_class", "block_size", "samples_per_class",
                   "scoring_epochs", "scoring_image_size", "target_image_size", "target_epochs",
                   "calib_batches")


def _param_problem(name: str, value: Any, annotation: str, default: Any) -> str | None:
    """Why ``value`` does not fit parameter ``name`` (None: it fits)."""
    m = re.fullmatch(r"Optional\[(\w+)\]|(\w+)", annotation.replace(" ", ""))
    if not m or (value is None and m.group(1)):
        return None
    kind = m.group(1) or m.group(2)
    want = _ANNOTATED_TYPES.get(kind)
    if want is None:
        return None
    if not isinstance(value, want) or (kind in ("int", "float") and isinstance(value, (bool, np.bool_))):
        if kind in ("list", "dict") and isinstance(value, str):
            example = json.dumps({name: default if default not in (None, [], {}) else value})
            return (f"{name} is a {kind} but was given the text {value!r}: papermill's -p passes text; "
                    f"give a {kind} as YAML/JSON with -y, e.g. -y '{example}'")
        return f"{name}={value!r} must be a{'n' if kind == 'int' else ''} {kind}, not {type(value).__name__}"
    if name in POSITIVE_PARAMS and kind in ("int", "float") and value < 1:
        return f"{name}={value!r} must be at least 1"
    return None


def check_params(values: dict[str, Any], source: str, notebook: str) -> None:
    """Check parameter values against the annotations of the parameters cell ``source``.

    Called before any run folder exists (by :func:`notebook_params` in the kernel, by
    :func:`resolve_params` before a kernel starts), so a wrong value never becomes a folder
    whose ``params.json`` records something the run did not do.

    Raises:
        ValueError: naming every parameter that does not fit, and how to pass it.

    """
    notes, defaults = _annotations(source), _literal_assignments(source) or {}
    problems = [p for k, v in values.items() if k in notes
                and (p := _param_problem(k, v, notes[k], defaults.get(k))) is not None]
    if problems:
        raise ValueError(f"invalid parameter(s) for {notebook}: " + "; ".join(problems))


def _which_notebook(namespace: dict[str, Any], names: set[str]) -> str:
    """File name of the notebook running in ``namespace``.

    JupyterLab tells the kernel (``__session__``), :func:`execute_notebook` sets
    :data:`NOTEBOOK_ENV`; under a bare ``papermill`` call nothing does, so the notebook is the
    one in ``notebooks/`` whose parameters cell declares the most of the executed names (all
    of its names must be among them; a tie is an error).
    """
    for candidate in (namespace.get("__session__"), os.environ.get(NOTEBOOK_ENV)):
        if candidate and re.match(r"\d+_", Path(str(candidate)).name):
            return Path(str(candidate)).name
    best: list[tuple[int, str]] = []
    for nb in sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb")):
        declared = set(notebook_defaults(nb))
        if declared <= names:
            best.append((len(declared), nb.name))
    best.sort(reverse=True)
    if not best or (len(best) > 1 and best[0][0] == best[1][0]):
        raise ValueError(f"cannot tell which study notebook declares the parameters {sorted(names)}; "
                         f"set {NOTEBOOK_ENV}=NN_name.ipynb")
    return best[0][1]


def _unknown_names(unknown: list[str], names: list[str]) -> str:
    """``['epoch'] (did you mean 'epochs'?)``: the unknown names with the closest known ones."""
    import difflib

    hints = [f"{u!r} -> {close[0]!r}" for u in unknown
             if (close := difflib.get_close_matches(u, names, n=1, cutoff=0.6))]
    return f"{unknown}" + (f" (did you mean {', '.join(hints)}?)" if hints else "")


def notebook_params(namespace: dict[str, Any]) -> NotebookParams:
    """The run parameters of the notebook executing in ``namespace`` (pass ``globals()``).

    The names are those of the notebook's ``parameters`` cell, read from what the kernel
    actually executed (IPython's ``In``; a kernel without history, such as nbval's, falls back to
    the cell of the notebook file named by ``__session__`` or :data:`NOTEBOOK_ENV`), so a
    parameter added to the cell can never be left out of the run hash; the values are the
    current ones (after papermill's injected cell).
    A name injected by papermill that the cell does not declare (``-p fracton 0.1``) is an
    error naming it, instead of papermill's warning. The stage comes from the file name.

    Raises:
        ValueError: unknown injected parameters, or no parameters cell was executed.

    """
    history = namespace.get("In") or namespace.get("_ih") or []
    cells = [(src, _literal_assignments(src)) for src in history if src and src.strip()]
    literal = [(src, vals) for src, vals in cells if vals]
    declared = [vals for src, vals in literal if not src.lstrip().startswith("# Parameters")]
    known = namespace.get("__session__") or os.environ.get(NOTEBOOK_ENV)
    if not declared and known:
        # a kernel that keeps no history (nbval executes with store_history=False): the names
        # of the parameters cell of the notebook file the kernel says it runs
        path = Path(str(known))
        nb_file = path if path.is_file() else notebooks_dir() / path.name
        declared = [notebook_defaults(nb_file)]
        source = _parameters_source(nb_file)
    else:
        source = next((src for src, _ in literal if not src.lstrip().startswith("# Parameters")), "")
    if not declared:
        raise ValueError("notebook_params(globals()) found no executed parameters cell (a cell of "
                         "`name = <literal>` lines): run the parameters cell first")
    names = list(declared[0])
    injected = {k for src, vals in literal if src.lstrip().startswith("# Parameters") for k in vals}
    unknown = sorted(injected - set(names))
    notebook = _which_notebook(namespace, set(names))
    if unknown:
        raise ValueError(f"unknown parameter(s) {_unknown_names(unknown, names)} for {notebook}; "
                         f"it takes: {', '.join(names)}")
    missing = [k for k in names if k not in namespace]
    if missing:
        raise ValueError(f"parameters {missing} are not defined: run the parameters cell")
    values = {k: namespace[k] for k in names}
    check_params(values, source, notebook)
    return NotebookParams(values, notebook)


def resolve_params(notebook: str | os.PathLike, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults of ``notebook`` updated with ``params``; an unknown name is an error."""
    defaults = notebook_defaults(notebook)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {_unknown_names(unknown, list(defaults))} for "
                         f"{Path(notebook).name}; it takes: {', '.join(defaults)}")
    check_params(params, _parameters_source(notebook), Path(notebook).name)
    return {**defaults, **params}


def find_run(notebook: str, params: dict[str, Any] | None = None, finished: bool = True,
             data_hash: str | None = None) -> Path:
    """The run folder of ``notebook`` (``"04_train"`` or ``"04"``) with ``params``.

    A later stage names an earlier run by its parameters, never by a folder hash: ``params``
    overrides the notebook's defaults exactly as ``papermill -p`` would, so the folder is the
    one that notebook writes for them. The run made on the data at hand is meant: on data other
    than the folder's (``data_hash``, else the current hash of the ``dataset`` parameter's
    files) it is the folder's :func:`data_variant_dir`.

    Raises:
        FileNotFoundError: the run has not finished yet (the message says how to make it).

    """
    nb = notebook_path(notebook)
    full = resolve_params(nb, dict(params or {}))
    d = _for_data(run_dir(notebook_stage(nb), full), data_hash or _current_data_hash(full))
    if finished and not run_finished(d):
        # papermill -p passes scalars; a list or dict parameter needs -y (YAML, of which JSON is a part)
        args = " ".join(f"-p {k} {v}" if isinstance(v, str) else
                        f"-y '{json.dumps({k: v})}'" if isinstance(v, (list, dict)) else f"-p {k} {json.dumps(v)}"
                        for k, v in sorted((params or {}).items()))
        raise FileNotFoundError(
            f"no finished {nb.stem} run with parameters {params or {}} (folder {d.name}); run it first: "
            f"papermill notebooks/{nb.name} out.ipynb {args}".rstrip()
        )
    return d


def publishing() -> bool:
    """Whether figures marked ``publish`` go to ``figures/`` too (only during ``make study``)."""
    return os.environ.get("LCC_PUBLISH_FIGURES", "") == "1"


#: The temporary file IPython gives a cell's code (``/tmp/ipykernel_31098/949251715.py``), which
#: warnings and tracebacks name.
_KERNEL_CELL_FILE = re.compile(r"(?:/tmp|/var/folders/[^/\"]+/[^/\"]+/T|[A-Za-z]:\\\\[^\"]*?Temp)"
                               r"[/\\]+ipykernel_\d+[/\\]+\d+\.py")
#: ANSI escape sequences (cursor moves, colours) that terminal progress bars write.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def _rendered_stream(text: str) -> str:
    r"""A stream's text as a notebook shows it: escapes dropped, each line's last ``\r`` state kept."""
    lines = _ANSI.sub("", text).split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)


def tidy_executed_notebook(path: str | os.PathLike, max_px: int = 700) -> int:
    r"""Make an executed notebook a readable, small text artefact; return the bytes saved.

    * Stream outputs are merged per cell and stream; stderr (progress bars) is reduced to what
      a notebook renders: ANSI escapes removed, a line rewritten with ``\r`` kept in its final
      state, blank lines and empty outputs dropped. stdout is left as printed.
    * PNG outputs are downscaled to at most ``max_px`` wide, 256 colours. Full-resolution
      figures live in ``figures/`` (or the run folder).
    * Absolute paths of this machine (papermill's injected ``data_dir``, its input and output
      paths) are written relative to the project root (``../shared/data``), so a committed
      notebook names no machine.
    """
    import base64
    import io

    import nbformat
    from PIL import Image

    path = Path(path)
    before = path.stat().st_size
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                prev = outputs[-1] if outputs else None
                if prev is not None and prev.get("output_type") == "stream" and prev["name"] == out["name"]:
                    prev["text"] += out["text"]
                    continue
                outputs.append(out)
                continue
            outputs.append(out)
            png = out.get("data", {}).get("image/png")
            if not png or len(png) < 60_000:
                continue
            im = Image.open(io.BytesIO(base64.b64decode(png)))
            if im.width > max_px:
                im = im.resize((max_px, round(im.height * max_px / im.width)), Image.LANCZOS)
            buf = io.BytesIO()
            im.convert("RGB").quantize(256).save(buf, format="PNG", optimize=True)
            out["data"]["image/png"] = base64.b64encode(buf.getvalue()).decode()
            out.setdefault("metadata", {}).pop("image/png", None)
        for out in outputs:  # stdout stays exactly as printed; progress bars write to stderr
            if out.get("output_type") == "stream" and out["name"] == "stderr":
                out["text"] = "\n".join(ln for ln in _rendered_stream(out["text"]).split("\n")
                                        if ln.strip()) + "\n"
        if "outputs" in cell:
            cell["outputs"] = [o for o in outputs if o.get("output_type") != "stream" or o["text"].strip()]
    text = nbformat.writes(nb)
    # a warning raised in a cell names the kernel's temporary file of that cell
    text = _KERNEL_CELL_FILE.sub("<cell>", text)
    root = project_root().resolve()
    # the runs and cache roots first: set elsewhere (LCC_RUNS_DIR, LCC_CACHE_DIR: the tests' temporary
    # folders) they are still shown as runs/... and cache/...
    prefixes = [(runs_root().resolve(), "runs/"), (cache_dir().resolve(), "cache/"), (root, ""), (root.parent, "../")]
    for prefix, relative in sorted(prefixes, key=lambda pr: -len(str(pr[0]))):
        if len(prefix.parts) > 1:  # never rewrite a bare "/"
            text = text.replace(json.dumps(str(prefix) + "/")[1:-1], relative)
            # the folder itself, where it ends a string or a word (a Path shown, a printed folder)
            text = re.sub(re.escape(json.dumps(str(prefix))[1:-1]) + r"(?=[\\\"'\s,)\]]|$)",
                          relative.rstrip("/") or ".", text)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text if text.endswith("\n") else text + "\n")
    return before - path.stat().st_size


#: Arguments of every kernel the project starts: no IPython history written to the user's profile.
KERNEL_ARGUMENTS = ("--HistoryManager.enabled=False", "--HistoryManager.hist_file=:memory:")


@functools.cache
def ipc_kernel_manager() -> type:
    """A Jupyter kernel manager that talks to its kernel over IPC sockets instead of TCP.

    A local kernel needs no network port; over TCP without CurveZMQ keys every ipykernel
    warns "Kernel is running over TCP without encryption" once per run. Each kernel's sockets
    are files with a name of their own in Jupyter's runtime folder (never in the project), and
    go with the kernel. The kernels write no IPython history (:data:`KERNEL_ARGUMENTS`).
    """
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:
            # the sockets' path prefix, one per kernel: jupyter_client's default ("kernel-ipc" in
            # the working directory) is shared by the kernels that Dask workers start side by side
            os.makedirs(jupyter_runtime_dir(), exist_ok=True)
            return os.path.join(jupyter_runtime_dir(), f"lcc-kernel-{uuid.uuid4().hex}-ipc")

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            # a study's hundreds of kernels would fill the user's IPython history (and contend for its
            # sqlite file); the cells are in the executed notebook. IPython's `In` (read by
            # notebook_params) is kept in memory either way. A setting given twice kills the kernel
            # at start (nbclient already passes hist_file), so each is added once.
            given = {a.split("=")[0] for a in extra_arguments or []}
            return super().format_kernel_cmd([*(extra_arguments or []),
                                              *(a for a in KERNEL_ARGUMENTS if a.split("=")[0] not in given)])

    return IPCKernelManager


def execute_notebook(
    notebook: str | os.PathLike,
    params: dict[str, Any] | None = None,
    kernel: str | None = None,
    force: bool = False,
    refresh: bool = False,
) -> tuple[Path, bool]:
    """Execute ``notebook`` with ``params`` through papermill into its run folder.

    The executed copy lands in ``runs/<stage>/<slug>-<hash>/<notebook name>``. A run
    whose ``metrics.json`` exists is skipped (never recomputed, never overwritten); with
    ``force`` it is executed again as a check, into its staging folder :func:`rerun_dir`
    (the executed copy too), and the committed folder is left as it was.

    ``refresh`` re-renders the executed notebook of a finished run: it is executed again like
    ``force`` (into the staging folder, continuing the run's checkpoints when they are at hand,
    so nothing trains again), and only when every result equals the committed one
    (:meth:`Run.log_metrics` raises otherwise) the fresh executed copy replaces the folder's;
    no other file of the folder changes. This is how the committed executed notebooks are
    brought up to the current code's presentation (``python -m lcc_utils.study
    --refresh-notebooks``).

    A run that fails (an error in a cell, a refused parameter, no ``metrics.json``) leaves no
    run folder behind when it made the folder: the folder moves to
    ``cache/failed/<stage>/<name>/`` with the partial executed notebook (it shows the
    traceback), and the error names that place. A folder that existed before (an interrupted
    run, resumable from its checkpoints) is kept, as is any folder after a ``KeyboardInterrupt``.

    Returns:
        The run folder and whether the notebook was executed (False: skipped).

    """
    notebook = resolve_path(notebook)
    full = resolve_params(notebook, params or {})
    d = run_dir(notebook_stage(notebook), full)
    if (d / "params.json").is_file():  # made on this data, or on other data with the same parameters?
        d = _for_data(d, _current_data_hash(full))
    finished = run_finished(d)  # a metrics.json that does not parse is no finished run: rerun it
    if finished and not (force or refresh):
        return d, False
    if (d / "metrics.json").exists() and not finished:
        print(f"{shown_path(d / 'metrics.json')} does not parse: the run is not finished; running it again",
              flush=True)
    if not finished:  # the kernel writes the folder under this process's lock (LOCK_ENV)
        lock_run(d)
    try:
        return _execute(notebook, params, d, finished, kernel, refresh)
    finally:
        release_run(d)


def _execute(notebook: Path, params: dict[str, Any] | None, d: Path, finished: bool, kernel: str | None,
             refresh: bool) -> tuple[Path, bool]:
    """The body of :func:`execute_notebook`, run while this process holds the folder's lock."""
    import papermill as pm

    existed = d.exists()
    target = (rerun_dir(d) if finished else d) / notebook.name
    saved = {k: os.environ.get(k) for k in (NOTEBOOK_ENV, LOCK_ENV, *KERNEL_ENV)}
    os.environ[NOTEBOOK_ENV] = notebook.name  # the kernel inherits it: notebook_params knows its file
    os.environ[LOCK_ENV] = str(lock_path(d))
    for k, v in KERNEL_ENV.items():  # read by the kernel's C library at its start
        os.environ.setdefault(k, v)
    try:
        with atomic_path(target, keep_on_error=True) as tmp:
            pm.execute_notebook(str(notebook), str(tmp), parameters=params or {},
                                kernel_name=kernel or os.environ.get("LCC_KERNEL") or None,
                                cwd=str(project_root()), progress_bar=False,
                                kernel_manager_class=ipc_kernel_manager())
            tidy_executed_notebook(tmp)
        if not run_finished(d):
            raise RuntimeError(f"{notebook.name} finished but wrote no metrics.json in {d}: "
                               "the notebook must call run.log_metrics(...) last")
        if finished and refresh:  # the same results: the study means this one write
            with atomic_path(d / notebook.name) as tmp:
                shutil.copy2(target, tmp)
    except Exception as err:
        if existed:
            raise
        failed = _set_aside_failed_run(d, target)
        raise RuntimeError(f"{notebook.name} failed and left no run folder; its partial run (the "
                           f"executed notebook shows the traceback) is in {failed}. "
                           f"{type(err).__name__}: {err}") from err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return d, True


def _set_aside_failed_run(d: Path, executed: Path) -> Path:
    """Move the folder of a failed run to ``cache/failed/<stage>/<name>/`` (replacing an older one)."""
    failed = cache_dir() / "failed" / d.parent.name / d.name
    if failed.exists():
        shutil.rmtree(failed)
    failed.parent.mkdir(parents=True, exist_ok=True)
    if d.exists():
        shutil.move(str(d), str(failed))
    # papermill's output of a failed notebook (paths.atomic_path's temporary name), under its
    # plain name; this process held the folder's lock, so there is at most one
    for partial in sorted(failed.glob(f".{executed.stem}.partial-*{executed.suffix}")):
        os.replace(partial, failed / executed.name)
    return failed


def collect_runs(stage: str | None = None, folders: list[Path] | None = None) -> pd.DataFrame:
    """Read finished run folders into one DataFrame (flattened params + metrics).

    Every finished folder of ``stage`` (all stages when None), or only those of ``folders``
    (e.g. the runs of one profile's grid, from :func:`find_run` with ``finished=False``).
    """
    root = runs_root()
    rows = []
    pattern = f"{stage}/*/metrics.json" if stage else "*/*/metrics.json"
    found = sorted(root.glob(pattern)) if folders is None else [
        Path(f) / "metrics.json" for f in folders if (Path(f) / "metrics.json").is_file()]
    for m in found:
        d = m.parent
        info = read_run_json(d, "params.json") if (d / "params.json").exists() else {}
        metrics = read_run_json(d, "metrics.json")
        try:
            shown = str(d.relative_to(project_root()))
        except ValueError:
            shown = str(d)
        row = {"stage": d.parent.name, "run_dir": shown}
        row.update({k: v for k, v in info.get("params", {}).items() if k not in LOCATION_PARAMS})
        row.update({k: info.get(k) for k in ("data_hash", "code_version", "cuda", "backbone_state_sha256")
                    if k in info})
        row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return pd.DataFrame(rows)
