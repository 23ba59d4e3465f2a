"""Where things live: project root, data root, cache, runs and figures.

Notebooks run with two different working directories: the repo root (papermill
from the command line, ``make study``) and ``notebooks/`` (JupyterLab). Every
path therefore goes through these helpers instead of being written relative.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def project_root() -> Path:
    """Return the repository root (the folder holding ``pyproject.toml`` and ``lcc_utils/``).

    The package is installed in editable mode, so the root is found next to the
    package itself; ``LCC_PROJECT_ROOT`` overrides it.
    """
    env = os.environ.get("LCC_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd().resolve()


def _resolve(path: str | os.PathLike) -> Path:
    """Resolve a user path: absolute as is; relative against the cwd, else the project root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if (Path.cwd() / p).exists():
        return (Path.cwd() / p).resolve()
    return (project_root() / p).resolve()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data root.

    In order: the ``data_dir`` parameter; ``LCC_DATA_DIR``; ``<root>/data`` if it exists; a
    ``shared/data`` folder beside the project (the layout of CI and of the team's machines) if
    it exists; else ``<root>/data``, where missing datasets are downloaded. An empty string
    counts as "not given", so notebooks can default ``data_dir = ""``.
    """
    if data_dir not in (None, ""):
        return _resolve(data_dir)
    env = os.environ.get("LCC_DATA_DIR")
    if env:
        return _resolve(env)
    local = project_root() / "data"
    sibling = project_root().parent / "shared" / "data"
    if not local.exists() and sibling.is_dir():
        return sibling
    return local


def resolve_path(path: str | os.PathLike) -> Path:
    """Resolve any user-supplied path (scene, run folder) the same way as the data root."""
    return _resolve(path)


#: Prefix of a path under the data root (``data:sentinel2-l2a/S2A_...``): a notebook default that
#: follows ``data_dir`` / ``LCC_DATA_DIR`` instead of assuming where the data are.
DATA_PREFIX = "data:"


def resolve_data_path(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """``data:<rel>`` under the data root (:func:`resolve_data_dir`), anything else as :func:`resolve_path`."""
    s = str(path)
    if s.startswith(DATA_PREFIX):
        return resolve_data_dir(data_dir) / s[len(DATA_PREFIX):]
    return resolve_path(path)


def in_checkout(root: Path | None = None) -> bool:
    """Whether ``root`` (default: :func:`project_root`) is a project checkout (``pyproject.toml`` + ``lcc_utils/``)."""
    root = project_root() if root is None else root
    return (root / "pyproject.toml").is_file() and (root / "lcc_utils").is_dir()


def data_relative(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> str:
    """``path`` named without the machine: ``data:<rel>`` under the data root, project-relative, else its name.

    For what the project writes into files (GeoTIFF tags, reports): ``data:sentinel2-l2a/S2A_...``
    reads the same on every machine, whatever the data root is called there.
    """
    p = Path(path).resolve()
    for base, prefix in ((resolve_data_dir(data_dir).resolve(), "data:"), (project_root().resolve(), "")):
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return p.name


def cache_dir() -> Path:
    """Decoded-array and split cache: ``LCC_CACHE_DIR``, else ``<root>/cache`` (git-ignored).

    Outside a project checkout (the package installed from a wheel, run from another folder) the
    cache goes to the user's cache folder (``platformdirs.user_cache_dir("lcc")``, e.g.
    ``~/.cache/lcc``), never into whatever folder the command happens to run in.
    """
    env = os.environ.get("LCC_CACHE_DIR")
    if env:
        d = _resolve(env)
    elif in_checkout():
        d = project_root() / "cache"
    else:
        from platformdirs import user_cache_dir

        d = Path(user_cache_dir("lcc", appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def runs_root() -> Path:
    """Run folders: ``LCC_RUNS_DIR``, else ``<root>/runs``."""
    env = os.environ.get("LCC_RUNS_DIR")
    return _resolve(env) if env else project_root() / "runs"


def figures_dir() -> Path:
    """Published figures: ``LCC_FIGURES_DIR``, else ``<root>/figures``."""
    env = os.environ.get("LCC_FIGURES_DIR")
    return _resolve(env) if env else project_root() / "figures"


# --------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_path(path: str | os.PathLike, keep_on_error: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path`` in one rename.

    The one way the package writes a file that others read: a reader (another notebook, an
    interrupted study resumed later) sees the old file or the complete new one, never a half
    written one. The temporary name keeps the suffix, so writers that infer the format from it
    (``np.savez``, rasterio, ``torch.save``) behave as for ``path``. On an error ``path`` is
    left as it was and the temporary file is removed (kept with ``keep_on_error``, e.g. the
    partial output of a failed notebook, which shows the traceback).

    Each writer gets its own temporary name (process id and a random token): two processes that
    compute the same shared cache file at once (two pytest-xdist workers, two notebooks) each
    write their own complete copy and the last rename wins. A fixed name let the first rename
    take the second writer's file away mid-write (a CI failure, ``FileNotFoundError`` on the
    rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    ok = False
    try:
        yield tmp
        os.replace(tmp, path)
        ok = True
    except OSError as err:
        if err.errno != errno.ENOSPC or isinstance(err, DiskFullError):
            raise
        raise disk_full(path, err) from err
    finally:
        if not ok and not keep_on_error and tmp.exists():
            tmp.unlink()


class DiskFullError(OSError):
    """A write the disk could not hold (``errno`` ENOSPC); the message names the file and what to do."""


def disk_full(path: str | os.PathLike, err: BaseException) -> DiskFullError:
    """The error for a write of ``path`` that the disk could not hold: the file, the free space, what to do.

    A full disk shows up as ``OSError: [Errno 28]`` from plain writes, but torch's zip writer says only
    ``[enforce fail at inline_container.cc:...] unexpected pos``, naming no file.
    """
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:,.0f} MB free there now"
    except OSError:
        free = "free space unknown"
    full = DiskFullError(f"{path}: could not be written, the disk is probably full ({free}; "
                         f"{type(err).__name__}: {err}). Nothing was replaced: the old file, if any, is intact. "
                         "Free some space (`make clean-cache` frees the cache) and run again; a training run "
                         "resumes from its last complete checkpoint")
    full.errno = errno.ENOSPC
    return full


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically (see :func:`atomic_path`); return the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)
