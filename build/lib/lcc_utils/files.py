"""Reading the project's own files: a broken file is an error naming it, its fault and the remedy.

The package writes every file atomically (:func:`lcc_utils.paths.atomic_write`), yet a file can
still arrive broken: a disk that filled up, an interrupted copy or sync, a hand edit. A reader
that lets ``json.loads`` or ``torch.load`` fail deep inside a library shows a bare
``JSONDecodeError`` or ``PytorchStreamReader failed reading zip archive`` that names neither the
file nor what to do. Every reader of a kind of project file -- run JSON, checkpoints, the
decoded-array cache, split files -- goes through here with its own remedy (delete the file, the
command that makes it again), and fails with a :class:`BrokenFileError`.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

#: The remedy for a file of the git-ignored cache: it is only a cache, made again when missing.
CACHE_REMEDY = "It is a cache: delete it (or run `make clean-cache`) and the next run makes it again."


class BrokenFileError(ValueError):
    """A project file exists but cannot be read: the message names it, the fault and the remedy."""


def broken(path: str | os.PathLike, fault: str, remedy: str) -> BrokenFileError:
    """The error for ``path``: ``<path>: <fault>. <remedy>`` (remedy: what to delete, what reruns it)."""
    return BrokenFileError(f"{Path(path)}: {fault}. {remedy}")


def read_json(path: str | os.PathLike, remedy: str, kind: type | None = dict) -> Any:
    """The JSON in ``path``; an empty, truncated or non-``kind`` file is a :class:`BrokenFileError`.

    A missing file stays a ``FileNotFoundError``: callers decide whether absence is normal (an
    unfinished run) or an error.
    """
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise broken(path, f"empty file ({len(raw)} bytes): not the JSON it should hold", remedy)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise broken(path, f"not valid JSON ({getattr(err, 'msg', err)}{where}; truncated or edited "
                           "by hand?)", remedy) from None
    if kind is not None and not isinstance(obj, kind):
        raise broken(path, f"holds a JSON {type(obj).__name__}, not the {kind.__name__} it should", remedy)
    return obj


def json_parses(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and holds a JSON object (a marker file such as ``metrics.json``)."""
    try:
        read_json(path, "")
    except (OSError, BrokenFileError):
        return False
    return True


def load_torch(path: str | os.PathLike, remedy: str, weights_only: bool = False) -> Any:
    """``torch.load`` of ``path`` on the CPU; an empty or truncated file is a :class:`BrokenFileError`.

    Zero bytes give torch's ``EOFError: Ran out of input``, a cut zip ``PytorchStreamReader failed
    reading zip archive`` (or ``OSError: Invalid argument``, by torch version): all mean the file is
    broken, not the code.
    """
    import torch

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise broken(path, "empty file (0 bytes): not a checkpoint", remedy)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (EOFError, zipfile.BadZipFile, pickle.UnpicklingError, RuntimeError, OSError) as err:
        # a refused pickle or a file that cannot be opened is not a broken file
        if "Weights only load failed" in str(err) or isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise broken(path, f"unreadable ({size:,} bytes; {type(err).__name__}: {first}): truncated or "
                           "not a torch file", remedy) from None


def open_npy(path: str | os.PathLike, remedy: str, rows: int | None = None) -> Any:
    """The ``.npy``-format array in ``path``, memory-mapped read-only; checked to hold ``rows`` rows.

    A truncated file gives numpy's ``mmap length is greater than file size``, an empty one
    ``No data left in file``: both are a :class:`BrokenFileError` naming the file.
    """
    import numpy as np

    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        size = path.stat().st_size
        raise broken(path, f"unreadable array ({size:,} bytes; {err}): truncated or not an array file",
                     remedy) from None
    if rows is not None and arr.shape[:1] != (rows,):
        raise broken(path, f"holds {arr.shape[0] if arr.ndim else 0} images where its index lists {rows}",
                     remedy)
    return arr


def read_npz(path: str | os.PathLike, remedy: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The arrays ``keys`` of the ``.npz`` file ``path`` (loaded), or a :class:`BrokenFileError`."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise broken(path, f"unreadable arrays ({path.stat().st_size:,} bytes; {type(err).__name__}: {err}): "
                           "truncated or written by something else", remedy) from None
