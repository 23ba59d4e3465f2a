"""Adapters from other archives to patch sets and products: EuroSAT MS and BigEarthNet.

EuroSAT MS (``data.load_dataset("eurosat_ms")``) becomes a paper B-style
:class:`~lcc_utils.sentinel2.patches.PatchSet` (:func:`eurosat_ms_patchset`). The six
real BigEarthNet-S2 L2A example patches shipped in the ``bigearthnet-common`` wheel
exercise :func:`~lcc_utils.sentinel2.product.open_l2a` on real files
(:func:`bigearthnet_example_dir`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lcc_utils.constants import PAPER_B_BANDS
from lcc_utils.sentinel2 import labels as _labels
from lcc_utils.sentinel2.patches import PatchSet
from lcc_utils.spectral import check_bands, normalize_band_name
from lcc_utils.splits import buffer_drop, spatial_block_names, spatial_split, split_distances

from ..progress import tqdm

#: Binary EuroSAT task class names (index = label).
BINARY_CLASSES: tuple[str, str] = ("non_vegetation", "vegetation")
#: The PyPI release whose wheel ships the BigEarthNet-S2 example patches.
BIGEARTHNET_EXAMPLE_WHEEL = "bigearthnet-common==2.8.0"
_BIGEARTHNET_ARCHIVE = "BigEarthNet-S2-Example.tar.bz2"


# --------------------------------------------------------------------------- EuroSAT MS
def eurosat_ms_patchset(
    ds: Any,
    task: str = "binary",
    patch_size: int = 32,
    bands: Sequence[str] = PAPER_B_BANDS,
    seed: int = 0,
    block_size_m: float = 50000.0,
    buffer_m: float = 0.0,
    binary_labels: str = _labels.DEFAULT_BINARY_LABELS,
) -> PatchSet:
    """Paper B-style patch set from EuroSAT MS (``data.load_dataset("eurosat_ms")``).

    EuroSAT MS holds uint16 L1C top-of-atmosphere DNs: reflectance = DN / 10000 (no
    BOA offset: the archive predates baseline 04.00). The six paper B bands are taken
    from the 13 in ``EUROSAT_MS_BANDS`` order. Each 64x64 image is cut into its four
    32x32 quadrants (``(64 // patch_size)**2`` tiles); all tiles of one image share its
    spatial block, so no quadrant of a training image can be a test patch. The split
    groups images into ``block_size_m`` blocks of their UTM centres, per CRS zone, and
    assigns whole blocks 70/15/15 (:func:`lcc_utils.splits.spatial_split`).

    Args:
        ds: The EuroSAT MS ``ImageDataset`` (``images`` (N, 64, 64, 13) uint16, ``geo``).
        task: ``"binary"`` (``EUROSAT_VEGETATION_CLASSES`` = vegetation, label 1) or
            ``"multiclass"`` (the 10 EuroSAT classes).
        patch_size: Tile side; must divide 64 (32 -> four quadrants per image).
        bands: Bands to keep, from the 13 of ``EUROSAT_MS_BANDS``.
        seed: Seed of the block split.
        block_size_m: Spatial block side in metres (UTM, per zone). Paper B splits by
            Sentinel-2 tile (~110 km); EuroSAT MS has no tile ids, so square blocks of
            the image centres stand in (default 50 km: 361 blocks on the 910-image sample).
        buffer_m: Optional buffer between the splits: training images whose centre lies
            closer than this to a val/test image are dropped (counted in ``meta``).
        binary_labels: Which EuroSAT classes are vegetation in the binary task
            (:data:`lcc_utils.sentinel2.labels.BINARY_LABELS`; ignored for ``multiclass``).
            ``ndvi_sides`` splits stratified on the ten classes, decides each class's side
            from its training patches' NDVI and drops the images of classes left out.

    The minimum (and median nearest) distance from val / test images to the training
    images is recorded in ``meta["split_distances"]``; for the binary task ``meta`` also holds
    ``binary_labels``, ``class_sides`` and ``class_ndvi`` (each source class's training NDVI,
    :func:`~lcc_utils.sentinel2.labels.class_ndvi_table`).

    """
    tasks = ("binary", "multiclass")
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(tasks)}")
    bands = check_bands(bands)
    ds_bands = tuple(normalize_band_name(b) for b in ds.bands)
    missing = [b for b in bands if b not in ds_bands]
    if missing:
        raise ValueError(f"bands {missing} are not in the dataset's bands {list(ds.bands)}")
    if ds.geo is None:
        raise ValueError(f"dataset {ds.name!r} has no georeference (ds.geo), needed for the "
                         "spatial split")
    size = ds.images.shape[1]
    ps_ = int(patch_size)
    if not 1 <= ps_ <= size or size % ps_:
        raise ValueError(f"patch_size={patch_size} must divide the image size {size}")
    bidx = [ds_bands.index(b) for b in bands]
    t = size // ps_
    n = len(ds.labels)
    xs = np.empty((n * t * t, ps_, ps_, len(bands)), np.float32)
    for i in tqdm(range(0, n, 256), desc="eurosat_ms patches", leave=False):
        chunk = np.asarray(ds.images[i:i + 256][..., bidx], dtype=np.float32) / 10000.0
        m = len(chunk)
        # (m, t, ps, t, ps, C) -> (m, t, t, ps, ps, C): quadrants in row-major order
        q = chunk.reshape(m, t, ps_, t, ps_, len(bands)).transpose(0, 1, 3, 2, 4, 5)
        xs[i * t * t:(i + m) * t * t] = q.reshape(m * t * t, ps_, ps_, len(bands))
    src_classes = list(ds.classes)
    src = np.asarray(ds.labels, np.int64)
    lab = _labels.get_binary_labels(binary_labels) if task == "binary" else None
    sides = None
    if lab is not None and lab.rule == "names":
        sides = _labels.class_sides(lab, src_classes)
    if task == "binary" and sides is not None:
        y_img = np.asarray([sides[src_classes[k]] == _labels.VEGETATION for k in src], np.int64)
        classes = list(BINARY_CLASSES)
    else:
        y_img, classes = src, src_classes
    geo = ds.geo.reset_index(drop=True)
    # a GeoTIFF without georeference has no CRS and a pixel-unit "centre": it would land in a
    # made-up spatial block, so the split could not keep it apart from its neighbours
    no_crs = geo["crs"].fillna("").astype(str).str.strip() == ""
    if no_crs.any():
        files = [str(f) for f, bad in zip(ds.files, no_crs, strict=True) if bad]
        raise ValueError(f"{len(files)} EuroSAT MS file(s) have no georeference (no CRS), needed for the "
                         f"spatial split: {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}")
    if not block_size_m > 0:
        raise ValueError(f"block_size_m={block_size_m} must be > 0 metres")
    blocks_img = spatial_block_names(geo, block_size_m)
    if len(np.unique(blocks_img)) < 3:
        raise ValueError(f"block_size_m={block_size_m:g} leaves {len(np.unique(blocks_img))} spatial block(s) "
                         f"for {len(geo)} images: train/val/test need at least 3; use smaller blocks")
    # landuse: stratified on the binary label (as the committed runs); ndvi_sides: on the ten classes,
    # the 10-class task's split, which the sides (decided on its train split) cannot influence
    split_img = spatial_split(blocks_img, src if lab is not None and lab.stratify == "source" else y_img, seed=seed)
    in_buffer = buffer_drop(geo["x"], geo["y"], geo["crs"], split_img, buffer_m)
    keep_img = ~in_buffer
    rep = t * t
    zero = (xs == 0).all(axis=-1).any(axis=(1, 2))
    class_ndvi = None
    if lab is not None:
        from lcc_utils.baselines import patch_ndvi

        ok = ~zero & np.repeat(keep_img, rep)
        tile_class = np.asarray(src_classes)[np.repeat(src, rep)]
        class_ndvi = _labels.class_ndvi_table(patch_ndvi(xs[ok], bands), tile_class[ok],
                                              np.repeat(split_img, rep)[ok], src_classes)
        if sides is None:
            sides = _labels.class_sides(lab, src_classes, class_ndvi)
            y_img = np.asarray([sides[src_classes[k]] == _labels.VEGETATION for k in src], np.int64)
            classes = list(BINARY_CLASSES)
            keep_img &= np.asarray([sides[src_classes[k]] != _labels.LEFT_OUT for k in src])
        class_ndvi["side"] = class_ndvi["class"].map(sides)
    distances = split_distances(geo["x"][keep_img], geo["y"][keep_img], geo["crs"][keep_img],
                                split_img[keep_img])
    # Bounds of each tile from the image bounds (row-major tiles, row 0 at the top).
    L, B, R, T = (geo[k].to_numpy() for k in ("left", "bottom", "right", "top"))
    dx, dy = (R - L) / t, (T - B) / t
    tb = []
    for i in range(t):
        for j in range(t):
            tb.append(np.stack([L + j * dx, T - (i + 1) * dy, L + (j + 1) * dx, T - i * dy], 1))
    bounds = np.stack(tb, axis=1).reshape(n * rep, 4)
    if zero.any():  # DN 0 in every band = nodata; report and drop, never silently
        warnings.warn(f"{int(zero.sum())} EuroSAT MS tiles hold nodata pixels and are dropped",
                      stacklevel=2)
    keep = ~zero & np.repeat(keep_img, rep)
    y = np.repeat(y_img, rep)
    meta = {
        "source": f"EuroSAT MS ({ds.name}, hash {ds.hash}), L1C TOA reflectance = DN/10000",
        "task": task, "patch_size": ps_, "tiles_per_image": rep, "images": int(n),
        "block_size_m": float(block_size_m), "n_blocks": int(len(np.unique(blocks_img))),
        "seed": int(seed), "dropped_nodata": int(zero.sum()),
        "buffer_m": float(buffer_m), "dropped_buffer_images": int(in_buffer.sum()),
        "split_distances": {k: {c: round(float(v), 1) for c, v in r.items()}
                            for k, r in distances.to_dict("index").items()},
        "file": list(np.repeat(np.asarray(ds.files, dtype=object), rep)[keep]),
    }
    if task == "binary":
        meta["vegetation_classes"] = [c for c in src_classes if sides[c] == _labels.VEGETATION]
        meta.update({"binary_labels": lab.name, "class_sides": sides, "ndvi_reflectance": _labels.NDVI_REFLECTANCE,
                     "dropped_left_out_images": int(sum(sides[src_classes[k]] == _labels.LEFT_OUT for k in src)),
                     "class_ndvi": class_ndvi.round(6).to_dict("records")})
    return PatchSet(x=xs[keep], y=y[keep], classes=classes, bands=bands,
                    crs=np.repeat(geo["crs"].to_numpy().astype(object), rep)[keep],
                    bounds=bounds[keep], split=np.repeat(split_img, rep)[keep],
                    block=np.repeat(blocks_img, rep)[keep], meta=meta)


# --------------------------------------------------------------------------- BigEarthNet
def _download_hint(folder: Path) -> str:
    return (f"fetch the wheel once with:  pip download --no-deps {BIGEARTHNET_EXAMPLE_WHEEL} "
            f"-d {folder}  (then call bigearthnet_example_dir again, or pass the wheel as source=)")


def _installed_archive() -> Path | None:
    """The example archive inside an installed ``bigearthnet_common`` package, if any."""
    spec = importlib.util.find_spec("bigearthnet_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / _BIGEARTHNET_ARCHIVE
        if p.is_file():
            return p
    return None


def _extract_archive(archive: Path, done: Path) -> Path:
    """Unpack the example ``.tar.bz2`` (or the one inside a wheel) into ``done``, atomically."""
    done.parent.mkdir(parents=True, exist_ok=True)
    # A folder, not a file (paths.atomic_path writes files): unpack beside it, then rename.
    tmp = Path(tempfile.mkdtemp(dir=done.parent, prefix=f".{done.name}-"))
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if n.endswith(_BIGEARTHNET_ARCHIVE)]
                if not names:
                    raise FileNotFoundError(f"{archive}: no {_BIGEARTHNET_ARCHIVE} inside this wheel")
                z.extract(names[0], tmp / "wheel")
                archive = tmp / "wheel" / names[0]
        with tarfile.open(archive, "r:bz2") as tf:
            tf.extractall(tmp / "patches", filter="data")
        os.replace(tmp / "patches", done)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def bigearthnet_example_dir(source: str | os.PathLike | None = None,
                            cache: str | os.PathLike | None = None) -> Path:
    """Folder of the six real BigEarthNet-S2 L2A example patches (``<name>_B02.tif`` ...).

    The patches ship as ``bigearthnet_common/BigEarthNet-S2-Example.tar.bz2`` inside the
    ``bigearthnet-common==2.8.0`` wheel. Nothing is downloaded here: the package never
    runs pip. The archive is taken from, in order: ``source``; the installed
    ``bigearthnet_common`` package; a ``bigearthnet_common-2.8.0-*.whl`` in the cache
    folder. It is unpacked once into ``<cache>/patches``.

    Args:
        source: A folder of already extracted patches (returned as is), the wheel, a
            folder holding the wheel (where ``pip download`` put it), or the
            ``.tar.bz2`` itself.
        cache: Where the patches are unpacked (default ``<cache_dir>/bigearthnet-example``).

    Raises:
        FileNotFoundError: no wheel, archive or extracted example is found; the message
            names the ``pip download`` command that fetches the wheel.

    """
    from lcc_utils.paths import cache_dir

    root = Path(cache) if cache else cache_dir() / "bigearthnet-example"
    wheel_glob = "bigearthnet_common-2.8.0-*.whl"
    archive: Path | None = None
    if source is not None:
        src = Path(source)
        if src.is_dir():
            if bigearthnet_patches(src):
                return src
            wheels = sorted(src.glob(wheel_glob))
            if not wheels:
                raise FileNotFoundError(f"{src} holds neither BigEarthNet patches nor a "
                                        f"{wheel_glob}; {_download_hint(src)}")
            archive = wheels[0]
        elif src.is_file():
            archive = src
        else:
            raise FileNotFoundError(f"BigEarthNet example source {src} does not exist; "
                                    f"{_download_hint(src.parent)}")
    done = root / "patches"
    if done.is_dir() and bigearthnet_patches(done):
        return done
    archive = archive or _installed_archive() or next(iter(sorted(root.glob(wheel_glob))), None)
    if archive is None:
        raise FileNotFoundError(f"BigEarthNet example: no {wheel_glob} in {root} and no installed "
                                f"bigearthnet_common package; {_download_hint(root)}")
    return _extract_archive(archive, done)


def bigearthnet_patches(folder: str | os.PathLike) -> list[Path]:
    """BigEarthNet patch folders (each holding ``<name>_B02.tif`` ...) below ``folder``."""
    return sorted({p.parent for p in Path(folder).rglob("*_B02.tif")})
