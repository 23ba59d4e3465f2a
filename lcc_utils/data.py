"""Dataset layer: locate or download, decode once into a memory-mapped cache, split, batch.

Three scene-classification datasets in their official archives' own layouts
below one data root (``LCC_DATA_DIR``, default ``data/``):

* EuroSAT RGB   ``<root>/eurosat/2750/<Class>/<Class>_N.jpg``   (27,000 x 64x64x3)
* EuroSAT MS    ``<root>/eurosat-ms/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/...``
  (13-band L1C GeoTIFFs, 64x64, uint16 digital numbers, UTM-georeferenced)
* UC Merced     ``<root>/ucmerced/UCMerced_LandUse/Images/<class>/<class>NN.tif|.jpg``
  (2,100 x 256x256x3)

Decoding is the slow part of a naive pipeline, so every image is decoded exactly
once into a uint8 (RGB) or uint16 (MS) array memory-mapped from the cache and
keyed by the dataset's **content hash** (``ImageDataset.hash``: sha256 over every file's
relative path and content digest; :mod:`lcc_utils.fingerprints` keeps it cheap on repeat
loads), so changed content is decoded again and a run made on it is flagged by its data
hash. Resizing, TrivialAugmentWide and normalisation then run on batches of tensors
(:class:`BatchLoader`).

One concept (getting a dataset's pixels into batches) in about 800 lines: fetching, decoding,
caching and batching are steps of one path that share its content hash and error handling;
splits live in :mod:`lcc_utils.splits` (re-exported here).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import constants as C
from . import fingerprints
from .augment import trivial_augment_wide
from .files import broken, open_npy, read_json
from .paths import atomic_path, atomic_write, cache_dir, resolve_data_dir
from .progress import tqdm

# Splits live in lcc_utils.splits; re-exported because notebooks call data.get_split.
from .splits import SPLIT_KINDS, Split, get_split, spatial_blocks  # noqa: F401

#: ImageNet statistics: the convention of timm backbones, used for every RGB dataset
#: (pretrained or not) so that a run can switch to pretrained weights without a new pipeline.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Scale of each stored dtype to [0, 1]-ish floats: uint8 images /255; uint16 Sentinel-2
#: digital numbers /10000 (the L1C/L2A quantification value, giving reflectance).
_DTYPE_SCALE = {np.dtype("uint8"): 255.0, np.dtype("uint16"): C.S2_QUANTIFICATION_VALUE}

ON_BAD_CHOICES = ("raise", "skip")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not under the data root and could not be downloaded."""


class BadImageError(ValueError):
    """An image file is corrupt, truncated, of the wrong size or band count."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like on disk."""

    name: str
    subdir: str
    classes: tuple[str, ...]
    extensions: tuple[str, ...]
    size: int | None
    bands: tuple[str, ...]
    resize_to: int | None = None


DATASETS: dict[str, DatasetSpec] = {
    "eurosat": DatasetSpec(
        "eurosat", C.DATASET_SUBDIRS["eurosat"], C.EUROSAT_CLASSES, (".jpg", ".jpeg"), 64,
        ("R", "G", "B"),
    ),
    "eurosat_ms": DatasetSpec(
        "eurosat_ms", C.DATASET_SUBDIRS["eurosat_ms"], C.EUROSAT_CLASSES, (".tif", ".tiff"), 64,
        C.EUROSAT_MS_BANDS,
    ),
    # The official UC Merced files are .tif; the shared copies are .jpg re-encodings.
    # A few official images are 247-256 px instead of 256: they are resized to 256x256
    # (bilinear) on decode and listed in ``ImageDataset.resized`` -- never dropped.
    "ucmerced": DatasetSpec(
        "ucmerced", C.DATASET_SUBDIRS["ucmerced"], C.UCMERCED_CLASSES,
        (".tif", ".tiff", ".jpg", ".jpeg", ".png"), None, ("R", "G", "B"), resize_to=C.UCMERCED_SIZE,
    ),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name`` or raise a ValueError listing the choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@dataclass
class ImageDataset:
    """A decoded dataset: images (memory-mapped), labels, and where they came from."""

    name: str
    root: Path
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    images: np.ndarray
    bands: tuple[str, ...]
    hash: str
    geo: pd.DataFrame | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    #: (file, what) for images decoding converted: a mode other than RGB (grayscale, palette,
    #: RGBA, CMYK, 16-bit) or content of another format than its extension says.
    converted: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> pd.DataFrame:
        """Images per class, in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return pd.DataFrame({"class": self.classes, "images": counts})


# --------------------------------------------------------------------------- download
def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_archive(path: Path, name: str) -> None:
    """Check an archive against every published checksum of dataset ``name``; raise if any differs."""
    info = C.DATASET_ARCHIVES[name]
    for algo in ("sha256", "md5"):
        expected = info.get(algo)
        if expected:
            got = _file_digest(path, algo)
            if got != expected:
                raise BadImageError(
                    f"archive {path} fails its {algo} check (expected {expected}, got {got}); "
                    "delete it and download again"
                )


def _download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` with resume: a ``.part`` file continues with an HTTP Range."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (documented https/http URLs)
        mode = "ab" if start and resp.status == 206 else "wb"
        total = int(resp.headers.get("Content-Length", 0)) + (start if mode == "ab" else 0)
        with open(part, mode) as f, tqdm(
            total=total or None, initial=start if mode == "ab" else 0, unit="B", unit_scale=True,
            desc=f"download {dest.name}",
        ) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))
    # Not paths.atomic_path: that removes its temporary file on an error, and the ``.part``
    # file must survive an interrupted download so the next call resumes it.
    os.replace(part, dest)


def _manual_instructions(name: str, root: Path) -> str:
    info = C.DATASET_ARCHIVES[name]
    urls = "\n  ".join(info["urls"])  # type: ignore[arg-type]
    return (
        f"dataset {name!r} not found at {root / DATASETS[name].subdir}.\n"
        f"Download {info['filename']} from one of:\n  {urls}\n"
        f"(md5 {info['md5']}{', sha256 ' + str(info['sha256']) if info['sha256'] else ''}) "
        f"and either put the zip in {root / 'archives'} or unzip it into "
        f"{root / str(info['extract_to'])} so that {root / DATASETS[name].subdir} exists; "
        "or point LCC_DATA_DIR / the data_dir parameter at a folder that already holds it."
    )


def _writable_root(name: str, root: Path, folder: Path) -> None:
    """Create ``folder`` under the data root for a download; a read-only root gets the instructions.

    A shared, read-only data root (``../shared/data`` mounted read-only) lacking a dataset would
    otherwise fail with ``OSError: [Errno 30] Read-only file system: '.../archives'``.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "Permission denied", str(folder))
    except OSError as err:
        raise DatasetNotFoundError(
            f"cannot download {name}: the data root {root} is not writable ({err.strerror or err}).\n"
            + _manual_instructions(name, root)
            + "\nOr point LCC_DATA_DIR / the data_dir parameter at a writable folder to download it there.") from None


def fetch_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the folder of dataset ``name``, downloading and extracting the official archive if needed.

    Present data is never downloaded again. A verified archive in ``<root>/archives`` is
    extracted without a download. Offline, the error says exactly what to fetch and where.
    A data root named explicitly (``data_dir``, ``LCC_DATA_DIR``) must exist: a misspelled
    path is an error naming it, never a new ``<path>/archives/``; only the default root
    ``<project>/data`` is created for a download.
    """
    spec = get_dataset_spec(name)
    root = resolve_data_dir(data_dir)
    folder = root / spec.subdir
    if folder.is_dir():
        return folder
    named = "data_dir" if data_dir not in (None, "") else "LCC_DATA_DIR" if os.environ.get("LCC_DATA_DIR") else None
    if named and not root.is_dir():
        raise DatasetNotFoundError(f"data root {root} (from {named}) does not exist: a misspelled path? "
                                   f"Create it first to download {name} into it.\n"
                                   + _manual_instructions(name, root))
    info = C.DATASET_ARCHIVES[name]
    archive = root / "archives" / str(info["filename"])
    if not archive.exists():
        if not download:
            raise DatasetNotFoundError(_manual_instructions(name, root))
        _writable_root(name, root, archive.parent)
        errors = []
        for url in info["urls"]:  # type: ignore[union-attr]
            try:
                _download(str(url), archive)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(f"{url}: {e}")
        else:
            raise DatasetNotFoundError(
                _manual_instructions(name, root) + "\nDownload failed:\n  " + "\n  ".join(errors)
            )
    verify_archive(archive, name)
    _writable_root(name, root, root)
    target = root / str(info["extract_to"])
    # A folder tree, not a file (paths.atomic_path writes files): extract beside the target,
    # then move each top-level entry in with one rename.
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".extract-{name}-"))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        target.mkdir(parents=True, exist_ok=True)
        for child in tmp.iterdir():
            os.replace(child, target / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"extracted {archive} but {folder} still does not exist")
    return folder


# --------------------------------------------------------------------------- scanning
def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _bad_entry(entry: os.DirEntry) -> str | None:
    """Why a directory entry with an image extension cannot be read as a file, or None."""
    try:
        if entry.is_file():  # follows a symlink; a loop raises, a dangling link gives False
            return None
    except OSError as e:
        return f"broken symbolic link ({e.strerror})"
    if entry.is_symlink():
        return "broken symbolic link (its target does not exist)"
    return "not a regular file"


def scan_folder(spec: DatasetSpec, folder: Path) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """List image files class by class; raise on unknown or empty class folders.

    Returns relative paths, labels and the bad entries found: non-image files, and image
    names that are no readable file (a symlink loop, a dangling symlink, a folder). Bad
    entries are never silently ignored: the caller raises on them unless ``on_bad="skip"``.
    Hidden files (``.DS_Store``) are skipped.
    """
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in found if c not in spec.classes]
    if unknown:
        raise ValueError(
            f"unknown class folder(s) {unknown} in {folder}; {spec.name} has: {', '.join(spec.classes)}"
        )
    missing = [c for c in spec.classes if c not in found]
    if missing:
        raise ValueError(f"class folder(s) {missing} missing from {folder}")
    files, labels, others = [], [], []
    for k, cls in enumerate(spec.classes):
        # os.scandir, not Path.is_file: that answers False for a symlink loop (Python >= 3.8
        # swallows ELOOP), and the loop would then raise later, in the hash, unnamed.
        with os.scandir(folder / cls) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: _natural_key(e.name))
        images, unreadable = [], []
        for e in entries:
            rel = f"{cls}/{e.name}"
            if os.path.splitext(e.name)[1].lower() not in spec.extensions:
                others.append((rel, "not an image file of this dataset"))
            elif (why := _bad_entry(e)) is not None:
                unreadable.append((rel, why))
            else:
                images.append(rel)
        others += unreadable
        if not images and not unreadable:  # unreadable images are reported by name instead
            raise ValueError(f"class folder {folder / cls} is empty (no {'/'.join(spec.extensions)} files)")
        files += images
        labels += [k] * len(images)
    return files, np.asarray(labels, dtype=np.int64), others


def dataset_hash(folder: Path, files: Sequence[str]) -> str:
    """Content hash of a dataset: sha256 over (relative path, sha256 of the file's bytes), 16 hex.

    Machine-independent (no mtime or inode enters it): a copy of the same files elsewhere
    has the same hash, any changed byte gives another. It keys the decode cache and is the
    ``data_hash`` of run folders. Repeat loads stat every file and re-hash only those whose
    (size, mtime, ctime, inode) changed (:func:`lcc_utils.fingerprints.content_hash`).
    """
    return fingerprints.content_hash(folder, files)


def current_hash(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """:func:`dataset_hash` of dataset ``name`` as it is on disk now, without decoding it.

    None when the dataset is not there (nothing is downloaded). Repeat calls only stat the
    files (the fingerprint index), so a run's data can be checked before it is skipped.
    """
    spec = get_dataset_spec(name)
    folder = resolve_data_dir(data_dir) / spec.subdir
    if not folder.is_dir():  # not extracted yet: the notebook fetches it (and says how)
        return None
    files, _, _ = scan_folder(spec, folder)
    return dataset_hash(folder, files)


# --------------------------------------------------------------------------- decoding
#: Format an image extension promises (PIL ``Image.format`` names; GDAL's for GeoTIFFs).
_EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
#: Modes decoding converts to RGB, and what the conversion loses (reported per file).
_RGB_CONVERSIONS = {
    "L": "grayscale (L) converted to RGB", "P": "palette (P) converted to RGB",
    "RGBA": "RGBA converted to RGB (alpha dropped)", "CMYK": "CMYK converted to RGB",
    "I;16": "16-bit grayscale (I;16) converted to RGB (values above 255 clipped)",
}


def _decode_rgb(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, bool, str]:
    """Pixels, whether they were resized, and what decoding converted ("" if nothing)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            notes = []
            expected = _EXTENSION_FORMATS.get(path.suffix.lower())
            if expected and im.format != expected:
                notes.append(f"{im.format} content under a {path.suffix} name")
            if im.mode != "RGB":
                if im.mode in _RGB_CONVERSIONS:
                    notes.append(_RGB_CONVERSIONS[im.mode])
                    im = im.convert("RGB")
                else:
                    raise BadImageError(f"{path}: unsupported image mode {im.mode!r}")
            resized = False
            if spec.size is not None and im.size != (spec.size, spec.size):
                raise BadImageError(
                    f"{path}: wrong size {im.size[0]}x{im.size[1]}, {spec.name} images are "
                    f"{spec.size}x{spec.size}"
                )
            if spec.resize_to is not None and im.size != (spec.resize_to, spec.resize_to):
                im = im.resize((spec.resize_to, spec.resize_to), Image.BILINEAR)
                resized = True
            return np.asarray(im, dtype=np.uint8), resized, "; ".join(notes)
    except BadImageError:
        raise
    except Exception as e:  # PIL raises many types for corrupt/truncated files
        raise BadImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def _decode_ms(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, dict, str]:
    """Bands (H, W, C), georeference, and the format note ("" for a GeoTIFF)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            note = "" if src.driver in ("GTiff", "COG") else f"{src.driver} content under a {path.suffix} name"
            if src.count != len(spec.bands):
                raise BadImageError(f"{path}: {src.count} bands, {spec.name} needs {len(spec.bands)}")
            if (src.height, src.width) != (spec.size, spec.size):
                raise BadImageError(
                    f"{path}: wrong size {src.width}x{src.height}, expected {spec.size}x{spec.size}"
                )
            arr = src.read()
            if (src.nodata is not None and np.all(arr == src.nodata)) or not arr.any():
                what = f"the nodata value {src.nodata:g}" if src.nodata is not None else "0 in every band"
                raise BadImageError(f"{path}: every pixel is no data ({what}): an empty tile, not an "
                                    "image of its class; remove it")
            b = src.bounds
            geo = {
                "crs": src.crs.to_string() if src.crs else "",
                "x": (b.left + b.right) / 2, "y": (b.bottom + b.top) / 2,
                "left": b.left, "bottom": b.bottom, "right": b.right, "top": b.top,
            }
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(f"{path}: cannot read GeoTIFF ({type(e).__name__}: {e})") from e
    if arr.dtype != np.uint16:
        raise BadImageError(f"{path}: dtype {arr.dtype}, EuroSAT MS stores uint16 digital numbers")
    return np.transpose(arr, (1, 2, 0)), geo, note


def _decode_all(
    spec: DatasetSpec, folder: Path, files: list[str], on_bad: str
) -> tuple[np.ndarray, list[int], list[tuple[str, str]], list[str], list[dict], list[tuple[str, str]]]:
    """Decode every file (2 threads); the stacked array and what was kept/skipped/resized/converted."""
    ms = spec.name == "eurosat_ms"
    size = spec.size or spec.resize_to
    dtype = np.uint16 if ms else np.uint8
    out = np.empty((len(files), size, size, len(spec.bands)), dtype=dtype)
    ok = np.zeros(len(files), dtype=bool)
    skipped: list[tuple[str, str]] = []
    resized: list[str] = []
    converted: list[tuple[str, str]] = []
    geo: list[dict] = [{}] * len(files)

    def work(i: int):
        path = folder / files[i]
        try:
            if ms:
                arr, g, note = _decode_ms(path, spec)
                geo[i] = g
            else:
                arr, r, note = _decode_rgb(path, spec)
                if r:
                    resized.append(files[i])
            if note:
                converted.append((files[i], note))
            out[i] = arr
            ok[i] = True
        except BadImageError as e:
            if on_bad == "raise":
                raise
            skipped.append((files[i], str(e)))

    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in tqdm(pool.map(work, range(len(files))), total=len(files), desc=f"decode {spec.name}",
                      mininterval=1.0):
            pass
    keep = [i for i in range(len(files)) if ok[i]]
    kept = {files[i] for i in keep}
    return out, keep, sorted(skipped), sorted(resized), geo, sorted(c for c in converted if c[0] in kept)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    on_bad: str = "raise",
    download: bool = True,
) -> ImageDataset:
    """Load a dataset, decoding it once into a memory-mapped cache keyed by its content hash.

    Args:
        name: ``eurosat``, ``eurosat_ms`` or ``ucmerced``.
        data_dir: data root (else ``LCC_DATA_DIR``, else ``data/``).
        on_bad: ``"raise"`` (default): a corrupt, truncated, wrongly sized image or a stray
            file stops everything with an error naming the file. ``"skip"``: such files are
            left out, counted and named in a warning and in ``ImageDataset.skipped``.
            Either way, images decoding resized or converted (grayscale, RGBA, PNG content
            under a ``.jpg`` name...) are kept and listed in ``resized`` / ``converted``.
        download: fetch the official archive when the dataset is missing.

    ``ImageDataset.hash`` is the content hash (:func:`dataset_hash`) of every image file
    found (those decoding skips included; stray files and broken links are not read): any
    changed byte changes it, and the changed dataset is decoded again.

    """
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad={on_bad!r} is not valid; choose one of: {', '.join(ON_BAD_CHOICES)}")
    spec = get_dataset_spec(name)
    folder = fetch_dataset(name, data_dir, download=download)
    files, labels, others = scan_folder(spec, folder)
    if others and on_bad == "raise":
        raise BadImageError(
            f"{folder / others[0][0]}: {others[0][1]} ({len(others)} such file(s); "
            "remove them or pass on_bad='skip')"
        )
    key = dataset_hash(folder, files)
    twins = _cross_class_twins(folder, files)
    if twins and on_bad == "raise":
        a, b = twins[0]
        raise BadImageError(f"{folder / a} and {folder / b}: the same image (identical bytes) in two class "
                            f"folders, so it has two labels ({len(twins)} such pair(s)); remove the copy from "
                            "the wrong class, or pass on_bad='skip' to leave both out")
    cdir = cache_dir() / "decoded"
    cdir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{key}-{on_bad}"
    meta_path, arr_path = cdir / f"{stem}.json", cdir / f"{stem}.raw"
    from filelock import FileLock

    # One process decodes a dataset; another that wants it meanwhile (a second Dask worker, the
    # test suite beside `make reproduce` in CI) waits and reads the cache instead of decoding it
    # again. The writes are atomic either way, so the lock saves work, not correctness.
    with FileLock(str(cdir / f"{stem}.lock")):
        meta = _cached_or_decoded(name, spec, folder, files, labels, key, twins, on_bad, meta_path, arr_path)
    # bad entries found by this scan, not the cached ones: they are not part of the hash
    skipped = [tuple(s) for s in meta["skipped"]] + others
    if skipped:
        names = ", ".join(s[0] for s in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(f"{name}: skipped {len(skipped)} bad file(s) (on_bad='skip'): {names}",
                      stacklevel=2)
    images = open_npy(arr_path, _cache_remedy(meta_path, arr_path), rows=len(meta["files"]))
    check_cached_array(images, meta, arr_path, _cache_remedy(meta_path, arr_path))
    return ImageDataset(
        name=name, root=folder, classes=list(spec.classes), files=meta["files"],
        labels=np.asarray(meta["labels"], dtype=np.int64), images=images, bands=spec.bands,
        hash=key, geo=pd.DataFrame(meta["geo"]) if meta["geo"] else None,
        skipped=skipped, resized=meta["resized"],
        converted=[tuple(c) for c in meta.get("converted", [])],
    )


def _cached_or_decoded(name: str, spec, folder: Path, files: list[str], labels, key: str, twins, on_bad: str,
                       meta_path: Path, arr_path: Path) -> dict:
    """The decoded-array cache entry's index, decoding the dataset into it first where it is missing."""
    if meta_path.exists() and arr_path.exists():
        meta = _read_cache_meta(meta_path, arr_path)
    else:
        arr, keep, skipped, resized, geo, converted = _decode_all(spec, folder, files, on_bad)
        if twins:  # on_bad="skip": an image with two labels is left out, every copy of it
            drop = {f for pair in twins for f in pair}
            keep = [i for i in keep if files[i] not in drop]
            skipped = sorted(skipped + [(f, "the same image in two class folders") for f in drop])
        # a file edited while it was decoded would leave pixels of other content under this key
        if dataset_hash(folder, files) != key:
            raise RuntimeError(f"{name}: files under {folder} changed while they were decoded; load again")
        arr = arr[keep] if len(keep) < len(files) else arr
        with atomic_path(arr_path) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=arr.dtype, shape=arr.shape)
            mm[:] = arr
            mm.flush()
            del mm
        meta = {
            "name": name, "hash": key, "files": [files[i] for i in keep],
            "labels": [int(labels[i]) for i in keep], "skipped": skipped,
            "resized": resized, "converted": converted,
            "geo": [geo[i] for i in keep] if name == "eurosat_ms" else None,
            "block_digests": array_block_digests(arr),
        }
        atomic_write(meta_path, json.dumps(meta))
    return meta


def _cross_class_twins(folder: Path, files: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of files with identical bytes in two different class folders (a label conflict).

    Copies within one class are kept: UC Merced ships two identical airplane images. The
    digests come from the fingerprint index the content hash just filled, so this only stats.
    """
    digests = fingerprints.content_digests(folder, files)
    first: dict[str, str] = {}
    twins = []
    for f in files:
        seen = first.setdefault(digests[f], f)
        if seen != f and seen.split("/")[0] != f.split("/")[0]:
            twins.append((seen, f))
    return twins


#: Blocks (along the image axis) a decoded array is hashed in. The loader checks a sample of
#: them on every load (cheap: a few MB read); ``make verify-data`` checks every one.
CACHE_BLOCKS = 64
#: Blocks the loader checks: the first, the last and two more that change with the day.
CACHE_SAMPLE = 4


def _blocks(n: int, blocks: int = CACHE_BLOCKS) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, min(blocks, max(n, 1)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def array_block_digests(arr: np.ndarray) -> list[str]:
    """blake2b (16 bytes) of each of :data:`CACHE_BLOCKS` row blocks of a decoded array."""
    return [hashlib.blake2b(np.ascontiguousarray(arr[a:b]).tobytes(), digest_size=16).hexdigest()
            for a, b in _blocks(len(arr))]


def check_cached_array(images: np.ndarray, meta: dict, arr_path: Path, remedy: str,
                       full: bool = False) -> list[int]:
    """Compare a decoded array with the block digests its index recorded; raise on a mismatch.

    A ``.raw`` overwritten in place (same size, other bytes) would otherwise serve garbage
    pixels under the dataset's content hash. The loader checks :data:`CACHE_SAMPLE` blocks,
    ``full`` (``make verify-data``) every one. An index written before digests existed has
    none: nothing to compare (``make clean-cache`` rebuilds it with them).

    Returns:
        The numbers of the blocks that differ (``full`` only; otherwise the first raises).

    """
    want = meta.get("block_digests")
    if not want:
        return []
    blocks = _blocks(len(images))
    if len(want) != len(blocks):
        raise broken(arr_path, f"{len(blocks)} blocks where its index records {len(want)} digests", remedy)
    day = int(time.time() // 86400)
    picks = range(len(blocks)) if full else sorted({0, len(blocks) - 1, day % len(blocks),
                                                   (7 * day + 3) % len(blocks)})[:CACHE_SAMPLE]
    bad = [i for i in picks if hashlib.blake2b(np.ascontiguousarray(images[slice(*blocks[i])]).tobytes(),
                                               digest_size=16).hexdigest() != want[i]]
    if bad and not full:
        a, b = blocks[bad[0]]
        raise broken(arr_path, f"images {a}-{b - 1} differ from the checksum recorded when they were decoded "
                               "(the file was changed after it was written)", remedy)
    return bad


def _read_cache_meta(meta_path: Path, arr_path: Path) -> dict:
    """The index (``.json``) of a decoded-array cache entry, checked to hold every key a load reads."""
    meta = read_json(meta_path, _cache_remedy(meta_path, arr_path))
    missing = sorted({"files", "labels", "skipped", "resized", "geo"} - meta.keys())
    if missing or len(meta["files"]) != len(meta["labels"]):
        raise broken(meta_path, f"an incomplete cache index (missing {missing} or files and labels of "
                                "different lengths)", _cache_remedy(meta_path, arr_path))
    return meta


def _cache_remedy(meta_path: Path, arr_path: Path) -> str:
    """What to do about a broken decoded-array cache entry: delete its two files, load again."""
    return (f"It is the decoded-array cache of the dataset: delete {meta_path.name} and {arr_path.name} in "
            f"{meta_path.parent} (or run `make clean-cache`); the next load decodes the images again")


# --------------------------------------------------------------------------- verification
def verify_data(names: Sequence[str] | None = None, data_dir: str | os.PathLike | None = None,
                other_folders: bool = True) -> pd.DataFrame:
    """Re-hash every data file in full, ignoring the fingerprint index; report and rebuild it.

    ``make verify-data``. For each dataset present under the data root (all of
    :data:`DATASETS` by default) and, with ``other_folders``, every other folder indexed
    in this cache (Sentinel-2 products), a row counts the files whose content is as
    indexed (``unchanged``), changed together with their stat key (``changed``: a load
    notices those by itself), changed while their (size, mtime, ctime, inode) stayed the
    same (``stale``: the index would have served an old digest -- the mismatch this check
    exists for), not yet indexed (``new``) and indexed but gone (``gone``). ``hash`` is a
    dataset's content hash from the full re-hash (what ``load_dataset`` now returns). Every
    decoded-array cache entry is checked block by block against the digests recorded when it
    was written (a ``cache/decoded/...`` row; ``changed`` counts the blocks that differ).
    """
    root = resolve_data_dir(data_dir)
    rows, done = [], set()
    for name in names or list(DATASETS):
        spec = get_dataset_spec(name)
        folder = root / spec.subdir
        if not folder.is_dir():
            continue
        files, _, _ = scan_folder(spec, folder)
        rep = fingerprints.verify(folder, files)
        rows.append((name, rep, fingerprints.hash_digests((f, rep.digests[f]) for f in files)))
        done.add(folder.resolve())
    if other_folders and not names:
        for folder in fingerprints.indexed_folders():
            if folder.resolve() not in done and folder.is_dir():
                rows.append((str(folder), fingerprints.verify(folder), ""))
    rows += _verify_decoded_cache(names)
    return pd.DataFrame([
        {"data": what, "files": rep.files, "unchanged": len(rep.unchanged), "changed": len(rep.changed),
         "stale": len(rep.stale), "new": len(rep.new), "gone": len(rep.gone), "hash": h,
         "stale_files": rep.stale, "changed_files": rep.changed}
        for what, rep, h in rows
    ], columns=["data", "files", "unchanged", "changed", "stale", "new", "gone", "hash",
                "stale_files", "changed_files"])


def _verify_decoded_cache(names: Sequence[str] | None) -> list[tuple[str, fingerprints.VerifyReport, str]]:
    """A row per decoded-array cache entry (of ``names``): its blocks, ``changed`` = blocks whose bytes differ."""
    rows = []
    for meta_path in sorted((cache_dir() / "decoded").glob("*.json")):
        arr_path = meta_path.with_suffix(".raw")
        meta = _read_cache_meta(meta_path, arr_path) if arr_path.exists() else None
        if meta is None or (names and meta.get("name") not in names) or not meta.get("block_digests"):
            continue
        images = open_npy(arr_path, _cache_remedy(meta_path, arr_path), rows=len(meta["files"]))
        bad = check_cached_array(images, meta, arr_path, _cache_remedy(meta_path, arr_path), full=True)
        n = len(meta["block_digests"])
        report = fingerprints.VerifyReport(arr_path, files=n, changed=[f"block {i}" for i in bad],
                                           unchanged=[str(i) for i in range(n) if i not in bad])
        rows.append((f"cache/decoded/{arr_path.name}", report, ""))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lcc_utils.data --verify [NAME ...]``: the table of :func:`verify_data`; 1 if stale or corrupt."""
    ap = argparse.ArgumentParser(prog="python -m lcc_utils.data", description=main.__doc__)
    ap.add_argument("--verify", action="store_true", required=True,
                    help="re-hash every data file, report mismatches with the fingerprint index, rebuild it")
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"datasets ({', '.join(DATASETS)}); default: all present + other indexed folders")
    ap.add_argument("--data-dir", default=None, help="data root (default: $LCC_DATA_DIR, else data/)")
    args = ap.parse_args(argv)
    table = verify_data(args.names or None, args.data_dir)
    if table.empty:
        print(f"no data found under {resolve_data_dir(args.data_dir)} and nothing indexed in the cache")
        return 0
    print(table.drop(columns=["stale_files", "changed_files"]).to_string(index=False))
    for _, r in table.iterrows():
        for kind in ("stale", "changed"):
            for f in r[f"{kind}_files"][:20]:
                print(f"{kind}: {r['data']}: {f}")
    cached = table[table["data"].str.startswith("cache/decoded/")]
    corrupt = cached[cached["changed"] > 0]
    for _, r in corrupt.iterrows():
        print(f"{r['data']}: {r['changed']} of {r['files']} blocks differ from the checksum recorded when it "
              "was decoded; delete it and its .json (or run `make clean-cache`), the next load decodes again")
    n = int(table["stale"].sum())
    if len(corrupt):
        return 1
    if n:
        print(f"{n} file(s) changed behind the fingerprint index's back (same size, mtime, ctime and "
              "inode); the index is rebuilt, the next load re-decodes them")
        return 1
    print(f"no file changed behind the fingerprint index's back ({int(table['files'].sum()):,} files "
          "re-hashed, index rebuilt)")
    return 0


# --------------------------------------------------------------------------- batches
def _scaled(x: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Stored values (uint8, uint16 or their int32 copy, float) -> float32, divided by ``scale``."""
    if x.dtype in (torch.uint16, torch.int32):
        x = x.to(torch.int32)
    x = x.float()
    return x / scale if scale else x


#: Largest augmentation size (px) at which our batched TrivialAugmentWide beats torchvision's
#: per-image v2 transform on one CPU thread; above it the loader uses torchvision's. Measured
#: by ``benchmarks/augment_speed.py`` (results in ``benchmarks/results/augment_speed.csv``).
#: On a GPU (the device path of :class:`BatchLoader`) the batched op is used at every size.
TAW_BATCHED_MAX_SIZE = 128

#: Largest shrink-once memo a CPU ``BatchLoader`` keeps (bytes; see its docstring): EuroSAT's whole
#: training split at 32 px is 58 MB as uint8. Larger sets shrink every batch anew, as before.
SHRUNK_MEMO_MAX_BYTES = 512 * 2**20

#: Values of ``BatchLoader(augment=...)``.
AUGMENT_POLICIES = (False, True, "trivial", "dihedral")


@functools.cache
def _torchvision_taw() -> torch.nn.Module:
    """The TrivialAugmentWide of torchvision, built on first use.

    Importing torchvision costs about 2 s (it imports torch._dynamo), which every notebook
    without a timm model would otherwise pay at its start.
    """
    from torchvision.transforms import v2

    return v2.TrivialAugmentWide()

#: Host dtype a batch is read into on the device path: torch has no arithmetic on uint16, so
#: Sentinel-2 digital numbers travel as int32 (exact), as the CPU path converts them.
_HOST_DTYPE = {np.dtype("uint8"): (torch.uint8, np.uint8), np.dtype("uint16"): (torch.int32, np.int32)}


def loader_device(device: str | torch.device | None) -> torch.device | None:
    """The device :func:`make_loaders` moves batches to: the training device when it is CUDA, else None.

    None keeps the CPU path, which every committed run was made by: on the CPU there is no copy
    to save, and the device path's one difference there (the batched TrivialAugmentWide above
    :data:`TAW_BATCHED_MAX_SIZE` px) is slower on a CPU. ``"auto"`` means CUDA when present.
    """
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    dev = torch.device(device)
    return dev if dev.type == "cuda" else None


class BatchLoader:
    """Batches of (x, y, idx) from a decoded array: augment, resize and normalise on tensors.

    Augmentation happens at the **smaller** of the native and the model's size (paper A
    resizes to 224 first, then augments): geometric ops commute with resizing up to
    interpolation and photometric ops act per pixel, so the result matches closely at a
    fraction of the work. EuroSAT (64 px) to 224 px is augmented at 64 px; UC Merced
    (256 px) to 32 px is first resized (antialiased; uint8 images are rounded back to
    uint8, an error of at most half a grey level) and then augmented at 32 px, 64x fewer
    pixels than augmenting at 256 px.

    ``augment``: False (none), True / ``"trivial"``: 3-band uint8 images get
    TrivialAugmentWide, one op per image, vectorised over the batch
    (:mod:`lcc_utils.augment`), multispectral or float inputs the 8 flips/rotations only
    (colour ops are undefined for 13 reflectance bands); ``"dihedral"``: the 8
    flips/rotations for every input.

    ``device``: None (the default, the **CPU path**) does all of the above on the CPU and yields
    float32 CPU batches. A device (the **device path**, what :func:`make_loaders` chooses for a
    CUDA training device) reads the stored uint8 (or int32 for uint16) pixels into pinned host
    memory in a background thread, one batch ahead, copies them non-blocking, and runs the same
    resize / augmentation / normalisation on that device, yielding channels-last float32 images
    there (labels and indices stay on the CPU). The random draws are the CPU path's, in the same
    order; only TrivialAugmentWide above :data:`TAW_BATCHED_MAX_SIZE` px is batched on a GPU
    where the CPU path loops over torchvision's transform. With ``device="cpu"`` the device path
    gives exactly the CPU path's batches (tested): it exists for the tests and the benchmark.

    **Shrink once.** On the CPU path, when augmentation shrinks the stored images (UC Merced or
    EuroSAT to 32 px), the shrunk images do not depend on the epoch: the loader shrinks each of
    its images once, on the first epoch, keeps them (at most :data:`SHRUNK_MEMO_MAX_BYTES`) and
    augments those copies every epoch. The bilinear resize treats each image alone, so the
    batches are bit-identical to shrinking every batch anew (tested), and a run's numbers do not
    change; a 3000-step run on a 76-image coreset shrank each image ~2500 times
    (``benchmarks/shrink_memo.py`` measures the ratio: 1.30x per optimizer step on UC Merced coresets).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int = 64,
        image_size: int | None = None,
        augment: bool | str = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C); got shape {images.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size={image_size} must be >= 8 pixels")
        self.images, self.all_labels = images, np.asarray(labels)
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(images)):
            raise ValueError("indices out of range for the images array")
        self.batch_size, self.image_size, self.augment = batch_size, image_size, augment
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0
        nb = images.shape[-1]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, nb, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, nb, 1, 1)
        if augment not in AUGMENT_POLICIES:
            raise ValueError(f"augment={augment!r}: choose one of False, True, "
                             f"{', '.join(repr(a) for a in AUGMENT_POLICIES if isinstance(a, str))}")
        self.augment = bool(augment)
        self._trivial = augment in (True, "trivial") and images.dtype == np.uint8 and nb == 3
        self._scale = _DTYPE_SCALE.get(images.dtype)
        self.device = None if device is None else torch.device(device)
        # augment at the smaller size: shrink first (see the class docstring)
        self._shrinks = self.augment and image_size is not None and image_size < images.shape[2]
        self._memo_on = self.device is None and self._shrinks and (
            len(np.unique(self.indices)) * nb * image_size**2 * (1 if self._trivial else 4) <= SHRUNK_MEMO_MAX_BYTES)
        self._memo: tuple[np.ndarray, torch.Tensor] | None = None
        if self.device is not None and self.mean is not None:
            self._mean, self._std = self.mean.to(self.device), self.std.to(self.device)
        else:
            self._mean, self._std = self.mean, self.std

    @property
    def labels(self) -> np.ndarray:
        """Labels of this loader's images, in index order."""
        return self.all_labels[self.indices]

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling and augmentation for ``epoch`` (same epoch, same batches)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augment an NCHW batch: uint8 for TrivialAugmentWide, else float already scaled."""
        if self._trivial:
            if x.shape[-1] <= TAW_BATCHED_MAX_SIZE or x.device.type != "cpu":
                return trivial_augment_wide(x, rng, reference_size=self.image_size).float() / 255.0
            # large images: torchvision's per-image transform is faster (see the benchmark);
            # it draws from torch's RNG, seeded here from ours so a run stays reproducible
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**31)))
                return torch.stack([_torchvision_taw()(img) for img in x]).float() / 255.0
        k = rng.integers(0, 4, len(x))
        flip = rng.integers(0, 2, len(x)).astype(bool)
        out = torch.empty_like(x)
        for i in range(len(x)):
            xi = torch.rot90(x[i], int(k[i]), dims=(1, 2))
            out[i] = torch.flip(xi, dims=(2,)) if flip[i] else xi
        return out

    def _shrunk(self, raw: torch.Tensor) -> torch.Tensor:
        """Stored (B, H, W, C) pixels -> (B, C, S, S) at the model's size, as augmentation takes them.

        Antialiased bilinear; uint8 again for TrivialAugmentWide, else float scaled. Each image is
        resized alone (one image's result does not depend on the rest of the batch), which is what
        lets the CPU path shrink once and keep the result (the class docstring).
        """
        x = raw.permute(0, 3, 1, 2)  # a view: channels-last memory, as the CPU path always had
        x = F.interpolate(_scaled(x, self._scale), size=(self.image_size, self.image_size), mode="bilinear",
                          antialias=True, align_corners=False)
        return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8) if self._trivial else x

    def _shrunk_rows(self, idx: np.ndarray) -> torch.Tensor:
        """:meth:`_shrunk` of the stored images ``idx``, from the memo (built on first use)."""
        if self._memo is None:
            keys = np.unique(self.indices)
            chunk = 256
            rows = [self._shrunk(self._read(keys[i:i + chunk])) for i in range(0, len(keys), chunk)]
            self._memo = (keys, torch.cat(rows) if rows else torch.empty(0))
        keys, memo = self._memo
        return memo[torch.from_numpy(np.searchsorted(keys, idx))]  # a copy: augmenting it leaves the memo

    def _transform(self, raw: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Stored (B, H, W, C) pixels -> the model's float (B, C, H, W) batch, on ``raw``'s device."""
        if self._shrinks:
            return self._normalised(self._augment(self._shrunk(raw), rng))
        x = raw.permute(0, 3, 1, 2)  # a view: channels-last memory, as the CPU path always had
        if self.augment:
            x = self._augment(x if self._trivial else _scaled(x, self._scale), rng)
        else:
            x = _scaled(x, self._scale)
        return self._normalised(x)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled float (B, C, h, w) -> normalised (B, C, S, S) at the model's size."""
        # Normalising before resizing is exact (bilinear weights sum to one) and, when
        # upsampling 64 -> 224, 12x cheaper. Antialiasing only matters when downsampling.
        if self._mean is not None:
            x = (x - self._mean) / self._std
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=self.image_size < x.shape[-1], align_corners=False)
        return x

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        """The stored pixels of ``idx`` as a (B, H, W, C) CPU tensor (pinned on the way to CUDA)."""
        # sorted reads are much faster on a memmap; the batch order is restored after
        srt = np.argsort(idx, kind="stable")
        shape = (len(idx),) + self.images.shape[1:]
        if self.device is None:
            raw = np.empty(shape, dtype=self.images.dtype)
            raw[srt] = self.images[idx[srt]]
            return torch.from_numpy(raw)
        tdtype, ndtype = _HOST_DTYPE.get(self.images.dtype, (None, None))
        if tdtype is None:  # float arrays (patch sets) travel as they are
            tdtype = torch.from_numpy(self.images[:0]).dtype
        # pinned buffers come from torch's caching host allocator, which does not hand one out
        # again before the non-blocking copy that read it has finished
        buf = torch.empty(shape, dtype=tdtype, pin_memory=self.device.type == "cuda")
        buf.numpy()[srt] = self.images[idx[srt]]
        return buf

    def _batch_indices(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The epoch's batches of dataset indices (the permutation is ``rng``'s first draw)."""
        order = rng.permutation(self.indices) if self.shuffle else self.indices
        return [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]

    def _read_ahead(self, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """The epoch's (stored pixels, indices), each read in a thread while the one before is used."""
        batches = self._batch_indices(rng)
        if self.device is None:
            for idx in batches:
                yield self._read(idx), idx
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self._read, batches[0]) if batches else None
            for b, idx in enumerate(batches):
                host = ahead.result()
                if b + 1 < len(batches):
                    ahead = pool.submit(self._read, batches[b + 1])
                yield host, idx

    def stored_batches(self) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """This epoch's batches as stored, (B, H, W, C) uint8 (int32 for uint16), with their indices.

        What the device path copies to the device, before any transform: on the device path read
        ahead in a thread into pinned memory. The CPU work a GPU run asks of the loader
        (``benchmarks/data_pipeline.py`` times it).
        """
        return self._read_ahead(np.random.default_rng([self.seed, self.epoch]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # One generator draws the permutation, then each batch's augmentation, in that order:
        # both paths draw the same numbers (the device path reads in a thread, draws here).
        rng = np.random.default_rng([self.seed, self.epoch])
        if self._memo_on:  # the same permutation, then the same augmentation draws, batch by batch
            for idx in self._batch_indices(rng):
                x = self._normalised(self._augment(self._shrunk_rows(idx), rng))
                yield x, torch.from_numpy(self.all_labels[idx]), torch.from_numpy(idx)
            return
        for host, idx in self._read_ahead(rng):
            if self.device is None:
                x = self._transform(host, rng)
            else:
                x = self._transform(host.to(self.device, non_blocking=True), rng)
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.from_numpy(self.all_labels[idx]), torch.from_numpy(idx)


def channel_stats(ds: ImageDataset, indices: np.ndarray, chunk: int = 2048) -> tuple[list, list]:
    """Per-band mean and std of the scaled images at ``indices`` (use the training part only)."""
    idx = np.sort(np.asarray(indices))
    s = np.zeros(ds.images.shape[-1])
    ss = np.zeros_like(s)
    n = 0
    scale = _DTYPE_SCALE.get(ds.images.dtype, 1.0)
    for i in range(0, len(idx), chunk):
        a = ds.images[idx[i:i + chunk]].astype(np.float64) / scale
        s += a.sum(axis=(0, 1, 2))
        ss += (a**2).sum(axis=(0, 1, 2))
        n += a.shape[0] * a.shape[1] * a.shape[2]
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def normalization(ds: ImageDataset, split: Split) -> tuple[list, list]:
    """Normalisation used for ``ds``: ImageNet statistics for RGB, train-split band statistics for MS."""
    if ds.images.shape[-1] == 3 and ds.images.dtype == np.uint8:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return channel_stats(ds, split.train)


def make_loaders(
    ds: ImageDataset,
    split: Split,
    image_size: int | None,
    batch_size: int,
    seed: int = 0,
    train_indices: np.ndarray | None = None,
    augment: bool | str = True,
    device: str | torch.device | None = None,
) -> dict[str, BatchLoader]:
    """Train (augmented, shuffled; optionally a coreset ``train_indices``), val and test loaders.

    ``device``: the training device. A CUDA device gets the device path of :class:`BatchLoader`
    (uint8 batches pinned and copied non-blocking, augmented, resized and normalised on the GPU);
    the CPU, and None, keep the CPU path (:func:`loader_device` says why).
    """
    mean, std = normalization(ds, split)
    tr = split.train if train_indices is None else np.asarray(train_indices, dtype=np.int64)
    if train_indices is not None and not np.isin(tr, split.train).all():
        raise ValueError("train_indices must be a subset of the split's training part")
    common = dict(image_size=image_size, mean=mean, std=std, device=loader_device(device))
    return {
        "train": BatchLoader(ds.images, ds.labels, tr, batch_size, augment=augment, shuffle=True,
                             seed=seed, **common),
        "val": BatchLoader(ds.images, ds.labels, split.val, batch_size, **common),
        "test": BatchLoader(ds.images, ds.labels, split.test, batch_size, **common),
    }


# --------------------------------------------------------------------------- summaries
def band_statistics(ds: ImageDataset, indices: np.ndarray | None = None) -> pd.DataFrame:
    """Per-band min/mean/std/max of the scaled values (reflectance for MS)."""
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices)
    mean, std = channel_stats(ds, idx)
    scale = _DTYPE_SCALE.get(ds.images.dtype, 1.0)
    a = ds.images[np.sort(idx)]
    return pd.DataFrame({
        "band": list(ds.bands), "min": a.min(axis=(0, 1, 2)) / scale, "mean": mean, "std": std,
        "max": a.max(axis=(0, 1, 2)) / scale,
    })


def rgb_composite(ds: ImageDataset, index: int, stretch: float = 0.3) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] for display; MS patches use B04/B03/B02, linearly stretched."""
    img = ds.images[index]
    if img.dtype == np.uint8 and img.shape[-1] == 3:
        return img.astype(np.float32) / 255.0
    bands = list(ds.bands)
    rgb = np.stack([img[..., bands.index(b)] for b in ("B04", "B03", "B02")], axis=-1)
    return np.clip(rgb.astype(np.float32) / C.S2_QUANTIFICATION_VALUE / stretch, 0, 1)


def sample_images(ds: ImageDataset, per_class: int = 6, seed: int = 0, max_px: int = 96) -> list[list[np.ndarray]]:
    """A seeded random pick of ``per_class`` display images (RGB composites) for each class.

    Images larger than ``max_px`` are shown as thumbnails, so a grid of 21 UC Merced classes
    stays a small figure file.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for k in range(len(ds.classes)):
        idx = np.flatnonzero(ds.labels == k)
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        row = []
        for i in pick:
            img = rgb_composite(ds, int(i))
            if img.shape[0] > max_px:
                small = Image.fromarray((img * 255).round().astype(np.uint8)).resize((max_px, max_px), Image.LANCZOS)
                img = np.asarray(small, dtype=np.float32) / 255.0
            row.append(img)
        rows.append(row)
    return rows


def split_summary(ds: ImageDataset, split: Split) -> pd.DataFrame:
    """Images per class in each part of the split (train, val, test) and the 80/20 totals."""
    parts = {"train": split.train, "val": split.val, "test": split.test}
    df = pd.DataFrame({p: np.bincount(ds.labels[i], minlength=len(ds.classes)) for p, i in parts.items()},
                      index=pd.Index(ds.classes, name="class"))
    df["train+val"] = df["train"] + df["val"]
    df.loc["total"] = df.sum()
    return df[["train+val", "train", "val", "test"]]


if __name__ == "__main__":
    sys.exit(main())
