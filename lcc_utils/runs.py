"""Run folders: every notebook run explains itself, and a finished run is never redone.

``runs/<stage>/<slug>-<hash>/`` holds ``params.json`` (the notebook's parameters, the
code version, the data hash), ``metrics.json`` (written last: its presence marks the
run finished), tables as CSV, ``history.csv`` where there is training, and the executed
notebook when the run was made by :func:`execute_notebook`. The hash covers the
parameters only (not ``data_dir``, a location), so the same parameters always land in
the same folder, whether the notebook was run by ``make study``, by papermill directly
or in JupyterLab.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .paths import project_root, resolve_path, runs_root

#: Parameters that say *where* things are, not *what* is computed: left out of the hash.
LOCATION_PARAMS = ("data_dir",)
#: Parameters shown first in the readable part of a folder name.
SLUG_KEYS = ("run", "dataset", "task", "model", "coreset", "fraction", "method", "scene", "seed")


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


def params_hash(params: dict[str, Any]) -> str:
    """Short sha256 of the parameters that define a run (location parameters excluded)."""
    core = {k: _jsonable(v) for k, v in sorted(params.items()) if k not in LOCATION_PARAMS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:8]


def _slug(params: dict[str, Any]) -> str:
    parts = []
    for k in SLUG_KEYS:
        v = params.get(k)
        if v in (None, "", []):
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


def git_commit() -> str:
    """The code version: ``git describe`` of the project (``+dirty`` when uncommitted edits exist)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=project_root(),
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


@dataclass
class Run:
    """A run folder: write artefacts with its methods, finish with :meth:`log_metrics`."""

    stage: str
    params: dict[str, Any]
    dir: Path

    @property
    def finished(self) -> bool:
        """Whether the run has written its ``metrics.json``."""
        return (self.dir / "metrics.json").exists()

    def path(self, name: str) -> Path:
        """Path of an artefact inside the run folder (sub-folders are created)."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save_table(self, df: pd.DataFrame, name: str, index: bool = False) -> Path:
        """Write a table as ``<name>.csv``."""
        p = self.path(f"{name}.csv")
        _atomic_write(p, df.to_csv(index=index))
        return p

    def save_json(self, obj: Any, name: str) -> Path:
        """Write ``obj`` as ``<name>.json``."""
        p = self.path(f"{name}.json")
        _atomic_write(p, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
        return p

    def save_figure(self, fig: Any, name: str) -> Path:
        """Write a per-run figure as ``<name>.png`` in the run folder.

        Figures the study reports go to ``figures/`` through :func:`lcc_utils.plots.save_figure`;
        per-run diagnostics (learning curves, confusion matrices of every seed) stay with their run.
        """
        p = self.path(f"{name}.png")
        fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Software": None})
        return p

    def log_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` and so mark the run finished.

        Writing the same values again is a no-op (a rerun of a deterministic run);
        different values raise :class:`RunConflictError`: a finished run is never overwritten.
        """
        p = self.dir / "metrics.json"
        new = _jsonable(metrics)
        if p.exists():
            old = json.loads(p.read_text())
            if _close(old, json.loads(json.dumps(new)), rel=1e-6):
                return p
            raise RunConflictError(
                f"run {self.dir} already finished with different metrics; it is never overwritten. "
                f"Old: {old}; new: {new}. Delete the folder to redo it, or change a parameter."
            )
        _atomic_write(p, json.dumps(new, indent=2, sort_keys=True) + "\n")
        return p

    def metrics(self) -> dict[str, Any]:
        """The stored metrics (empty while the run is unfinished)."""
        p = self.dir / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else {}


def start_run(stage: str, params: dict[str, Any], data_hash: str | None = None, **extra: Any) -> Run:
    """Open (or reopen) the run folder for ``params`` and write its ``params.json``.

    Args:
        stage: pipeline stage (``data``, ``train``, ``compression``...).
        params: exactly the variables of the notebook's ``parameters`` cell.
        data_hash: content hash of the data the run reads.
        **extra: more provenance to record (split hash, weights description...).

    """
    d = run_dir(stage, params)
    d.mkdir(parents=True, exist_ok=True)
    info = {
        "stage": stage, "params": _jsonable(params), "params_hash": params_hash(params),
        "data_hash": data_hash, "code_version": git_commit(), "lcc_utils": __version__,
        "python": platform.python_version(), "platform": platform.platform(),
        **{k: _jsonable(v) for k, v in extra.items()},
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    p = d / "params.json"
    if p.exists():
        old = json.loads(p.read_text())
        if old.get("params_hash") == info["params_hash"] and (old.get("data_hash") not in (None, data_hash)):
            raise RunConflictError(
                f"run {d} was made on other data (hash {old['data_hash']}, now {data_hash})"
            )
        if (d / "metrics.json").exists():
            return Run(stage, dict(params), d)  # keep the provenance of the finished run
    _atomic_write(p, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Run(stage, dict(params), d)


# --------------------------------------------------------------------------- papermill
def stage_of(notebook: str | os.PathLike) -> str:
    """Stage name of a numbered notebook: ``04_train.ipynb`` -> ``train``."""
    stem = Path(notebook).stem
    return re.sub(r"^\d+_", "", stem)


_STAGE_ALIASES = {"sentinel2_preprocessing": "sentinel2", "coreset_scoring": "coresets"}


def notebook_stage(notebook: str | os.PathLike) -> str:
    """Stage under ``runs/`` for a notebook (``02_sentinel2_preprocessing`` -> ``sentinel2``)."""
    s = stage_of(notebook)
    return _STAGE_ALIASES.get(s, s)


def notebook_defaults(notebook: str | os.PathLike) -> dict[str, Any]:
    """The default values of a notebook's ``parameters`` cell."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one cell tagged 'parameters' (found {len(cells)})")
    out: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            out[node.target.id] = ast.literal_eval(node.value)
    return out


def resolve_params(notebook: str | os.PathLike, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults of ``notebook`` updated with ``params``; an unknown name is an error."""
    defaults = notebook_defaults(notebook)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {Path(notebook).name}; "
                         f"it takes: {', '.join(defaults)}")
    return {**defaults, **params}


def shrink_notebook_images(path: str | os.PathLike, max_px: int = 700) -> int:
    """Downscale the PNG outputs of an executed notebook so run folders stay small text artefacts.

    Full-resolution figures live in ``figures/`` (or the run folder); the executed notebook keeps a
    preview: at most ``max_px`` wide, 256-colour PNG. Returns the bytes saved.
    """
    import base64
    import io

    import nbformat
    from PIL import Image

    path = Path(path)
    before = path.stat().st_size
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
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
    tmp = path.with_name(f".{path.name}.shrink")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)
    return before - path.stat().st_size


def execute_notebook(
    notebook: str | os.PathLike,
    params: dict[str, Any] | None = None,
    kernel: str | None = None,
    force: bool = False,
) -> tuple[Path, bool]:
    """Execute ``notebook`` with ``params`` through papermill into its run folder.

    The executed copy lands in ``runs/<stage>/<slug>-<hash>/<notebook name>``. A run
    whose ``metrics.json`` exists is skipped (never recomputed, never overwritten).

    Returns:
        The run folder and whether the notebook was executed (False: skipped).

    """
    import papermill as pm

    notebook = resolve_path(notebook)
    full = resolve_params(notebook, params or {})
    d = run_dir(notebook_stage(notebook), full)
    if (d / "metrics.json").exists() and not force:
        return d, False
    d.mkdir(parents=True, exist_ok=True)
    out = d / notebook.name
    tmp = d / f".{notebook.stem}.partial.ipynb"
    pm.execute_notebook(str(notebook), str(tmp), parameters=params or {},
                        kernel_name=kernel or os.environ.get("LCC_KERNEL") or None,
                        cwd=str(project_root()), progress_bar=False)
    shrink_notebook_images(tmp)
    os.replace(tmp, out)
    if not (d / "metrics.json").exists():
        raise RuntimeError(f"{notebook.name} finished but wrote no metrics.json in {d}: "
                           "the notebook must call run.log_metrics(...) last")
    return d, True


def collect_runs(stage: str | None = None) -> pd.DataFrame:
    """Read every finished run folder into one DataFrame (flattened params + metrics)."""
    root = runs_root()
    rows = []
    pattern = f"{stage}/*/metrics.json" if stage else "*/*/metrics.json"
    for m in sorted(root.glob(pattern)):
        d = m.parent
        info = json.loads((d / "params.json").read_text()) if (d / "params.json").exists() else {}
        metrics = json.loads(m.read_text())
        try:
            shown = str(d.relative_to(project_root()))
        except ValueError:
            shown = str(d)
        row = {"stage": d.parent.name, "run_dir": shown}
        row.update({k: v for k, v in info.get("params", {}).items() if k not in LOCATION_PARAMS})
        row.update({k: info.get(k) for k in ("data_hash", "code_version", "cuda") if k in info})
        row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return pd.DataFrame(rows)
