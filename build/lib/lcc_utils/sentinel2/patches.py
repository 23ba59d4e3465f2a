"""Labelled patch sets: the container, its files, and sampling patches from a scene.

A :class:`PatchSet` holds channels-last reflectance patches with labels, georeference
and a spatially disjoint train/val/test split (:func:`lcc_utils.splits.spatial_split`);
its content hash is what runs record. :func:`extract_patches` samples one from an L2A
scene and a reference (SCL classes, a label raster or a GeoJSON); the adapters in
:mod:`.adapters` build one from EuroSAT MS.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from lcc_utils.constants import SCL_CLASSES, SCL_MASK_CLASSES, SCL_VEGETATION_LABELS
from lcc_utils.files import broken, read_json, read_npz
from lcc_utils.paths import atomic_path, atomic_write, data_relative
from lcc_utils.sentinel2.product import L2AProduct
from lcc_utils.sentinel2.windows import WindowData, grid_windows, iter_windows
from lcc_utils.spectral import NIR_BANDS, ndvi
from lcc_utils.splits import SPLITS, spatial_split


@dataclass
class PatchSet:
    """Labelled reflectance patches, channels-last so ``data.BatchLoader`` takes them as is.

    ``x`` (N, S, S, C) float32 reflectance; ``y`` (N,) int64 into ``classes``; ``crs``
    (N,) CRS strings and ``bounds`` (N, 4) left, bottom, right, top of each patch;
    ``split`` (N,) in train/val/test (spatially disjoint blocks); ``meta`` says where
    the patches came from and how many were dropped, and why.
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    bands: tuple[str, ...]
    crs: np.ndarray
    bounds: np.ndarray
    split: np.ndarray
    block: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    hash: str = ""

    def __post_init__(self) -> None:
        n = len(self.y)
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.int64)
        self.crs = np.asarray(self.crs, dtype=object)
        self.bounds = np.asarray(self.bounds, dtype=np.float64).reshape(n, 4)
        self.split = np.asarray(self.split, dtype="<U5")
        self.block = np.asarray(self.block, dtype="<U64")
        for name in ("x", "crs", "split", "block"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PatchSet.{name} has {len(getattr(self, name))} rows, y has {n}")
        if self.x.ndim != 4 or self.x.shape[-1] != len(self.bands):
            raise ValueError(f"PatchSet.x must be (N, S, S, {len(self.bands)}), got {self.x.shape}")
        if n and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise ValueError("PatchSet.y holds labels outside classes")
        bad = set(np.unique(self.split)) - set(SPLITS)
        if bad:
            raise ValueError(f"PatchSet.split has values {sorted(bad)}; allowed: {SPLITS}")
        self.hash = self.content_hash()

    def __len__(self) -> int:
        return len(self.y)

    def content_hash(self) -> str:
        """sha256 (16 hex) of pixels, labels, splits, bands and classes."""
        h = hashlib.sha256()
        for a in (self.x, self.y, self.bounds):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("|".join(self.split.tolist()).encode())
        h.update("|".join(self.bands).encode() + b"#" + "|".join(self.classes).encode())
        return h.hexdigest()[:16]

    def indices(self, split: str) -> np.ndarray:
        """int64 indices of one split (for ``data.BatchLoader``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == split).astype(np.int64)

    def counts(self) -> Any:
        """Patches per class (rows) and split (columns), a pandas DataFrame."""
        import pandas as pd

        df = pd.crosstab(pd.Categorical(np.asarray(self.classes)[self.y], self.classes),
                         pd.Categorical(self.split, SPLITS), dropna=False)
        df.index.name, df.columns.name = "class", "split"
        df["total"] = df.sum(axis=1)
        return df


def band_stats(ps: PatchSet, split: str = "train") -> tuple[list[float], list[float]]:
    """Per-band mean and std of one split's reflectance (training-time standardisation)."""
    x = ps.x[ps.indices(split)]
    if len(x) == 0:
        raise ValueError(f"split {split!r} is empty")
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return x.mean(0).tolist(), np.maximum(x.std(0), 1e-6).tolist()


def _patchset_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


def save_patchset(ps: PatchSet, path: str | os.PathLike) -> Path:
    """Write ``<path>.npz`` (arrays) and ``<path>.json`` (classes, bands, meta, hash), atomically."""
    npz, js = _patchset_paths(path)
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=ps.x, y=ps.y, crs=ps.crs.astype(str), bounds=ps.bounds, split=ps.split,
                 block=ps.block)
    atomic_write(js, json.dumps({"classes": list(ps.classes), "bands": list(ps.bands),
                                 "hash": ps.hash, "n": len(ps), "meta": ps.meta},
                                indent=1, default=str))
    return npz


def load_patchset(path: str | os.PathLike) -> PatchSet:
    """Read a patch set written by :func:`save_patchset`; checks the content hash."""
    npz, js = _patchset_paths(path)
    for p in (npz, js):
        if not p.exists():
            raise FileNotFoundError(f"patch set file {p} is missing")
    remedy = ("Delete the patch set's .npz and .json: rerunning notebook 02 (or the notebook-06/07 "
              "run that reads it) builds it again")
    d = read_json(js, remedy)
    missing = sorted({"classes", "bands", "meta", "hash"} - d.keys())
    if missing:
        raise broken(js, f"a patch set index without {missing}", remedy)
    a = read_npz(npz, remedy, ("x", "y", "crs", "bounds", "split", "block"))
    ps = PatchSet(x=a["x"], y=a["y"], classes=d["classes"], bands=tuple(d["bands"]),
                  crs=a["crs"], bounds=a["bounds"], split=a["split"], block=a["block"], meta=d["meta"])
    if ps.hash != d["hash"]:
        raise broken(npz, f"content hash {ps.hash} != recorded {d['hash']}; file corrupt", remedy)
    return ps


# --------------------------------------------------------------------------- reference labels
class _LabelSource:
    """Per-window raw label rasters on the product grid (-1 = unlabelled) and class names."""

    def __init__(self, product: L2AProduct, labels: Any, label_field: str,
                 classes: Mapping[int, str] | None):
        self.product, self.kind = product, None
        self._vrt = self._src = None
        if isinstance(labels, str) and labels.lower() == "scl":
            labels = dict(SCL_VEGETATION_LABELS)
        if isinstance(labels, Mapping):
            if product.scl is None:
                raise ValueError(f"labels: an SCL mapping needs the SCL layer; {product.path} "
                                 "has none")
            codes = {int(k): str(v) for k, v in labels.items()}
            bad = [k for k in codes if k in SCL_MASK_CLASSES or k not in SCL_CLASSES]
            if bad:
                raise ValueError(f"labels: SCL codes {bad} are masked or unknown; usable codes: "
                                 f"{sorted(set(SCL_CLASSES) - set(SCL_MASK_CLASSES))}")
            names = sorted(set(codes.values()), key=list(codes.values()).index)
            self.kind = "scl"
            self.lut = np.full(256, -1, np.int32)
            for k, v in codes.items():
                self.lut[k] = names.index(v)
            self.classes = names
            self.description = f"SCL classes {codes}"
            return
        path = Path(labels)
        if not path.exists():
            raise FileNotFoundError(f"labels: reference file {path} does not exist")
        sfx = path.suffix.lower()
        if sfx in (".tif", ".tiff"):
            self._init_raster(path, classes)
        elif sfx in (".geojson", ".json"):
            self._init_geojson(path, label_field, classes)
        elif sfx == ".gpkg":
            raise ValueError(f"labels: {path}: GeoPackage needs a vector reader (fiona/pyogrio) "
                             "that is not a dependency; convert it to GeoJSON")
        else:
            raise ValueError(f"labels: {path}: unsupported reference ({sfx}); use 'scl', an SCL "
                             "code mapping, a label GeoTIFF or a GeoJSON")

    def _init_raster(self, path: Path, classes: Mapping[int, str] | None) -> None:
        p = self.product
        self._src = rasterio.open(path)
        if self._src.crs is None:
            raise ValueError(f"labels: {path} has no CRS")
        lb = rasterio.warp.transform_bounds(self._src.crs, p.crs, *self._src.bounds)
        if not _overlaps(lb, p.bounds):
            raise ValueError(f"labels: {path} lies outside the scene {p.path} "
                             f"(label bounds {tuple(round(v) for v in lb)}, scene "
                             f"{tuple(round(v) for v in p.bounds)})")
        nd = self._src.nodata
        # Label codes must not be blended: nearest, and nodata = unlabelled.
        self._vrt = WarpedVRT(self._src, crs=p.crs, transform=p.transform, width=p.width,
                              height=p.height, resampling=Resampling.nearest,
                              src_nodata=nd, nodata=nd)
        self._nd = nd
        if classes is None:
            tags = self._src.tags()
            if "CLASSES" in tags:
                classes = {int(k): v for k, v in json.loads(tags["CLASSES"]).items()}
            else:
                raise ValueError(f"labels: {path}: pass classes={{code: name}} (or set a CLASSES "
                                 "JSON tag) to name the label codes")
        codes = {int(k): str(v) for k, v in classes.items()}
        self.classes = sorted(set(codes.values()), key=list(codes.values()).index)
        self.code_to_idx = {k: self.classes.index(v) for k, v in codes.items()}
        self.kind = "raster"
        self.description = f"label raster {path} (nearest onto the 10 m grid), codes {codes}"

    def _init_geojson(self, path: Path, label_field: str,
                      classes: Mapping[int, str] | None) -> None:
        from rasterio.warp import transform_geom

        p = self.product
        d = json.loads(path.read_text())
        feats = d.get("features") if isinstance(d, dict) else None
        if not feats:
            raise ValueError(f"labels: {path} has no features")
        # RFC 7946: GeoJSON is WGS84 lon/lat unless a (legacy) "crs" member says otherwise.
        src_crs = "EPSG:4326"
        if isinstance(d.get("crs"), dict):
            name = d["crs"].get("properties", {}).get("name", "")
            m = re.search(r"EPSG:+(\d+)", name)
            if m:
                src_crs = f"EPSG:{m.group(1)}"
        raw = []
        for i, f in enumerate(feats):
            props = f.get("properties") or {}
            if label_field not in props:
                raise ValueError(f"labels: {path} feature {i} has no property {label_field!r}")
            raw.append(props[label_field])
        if classes is not None:
            names = [str(v) for v in classes.values()]
            keymap = {str(k): str(v) for k, v in classes.items()}
            keymap.update({v: v for v in names})
            val = []
            for i, r in enumerate(raw):
                if str(r) not in keymap:
                    raise ValueError(f"labels: feature {i} of {path} has {label_field}={r!r}, not "
                                     f"in classes {list(classes)}")
                val.append(keymap[str(r)])
            self.classes = list(dict.fromkeys(names))
        else:
            val = [str(r) for r in raw]
            self.classes = sorted(set(val))
        self.shapes = []
        outside = 0
        for f, v in zip(feats, val, strict=True):
            g = transform_geom(src_crs, p.crs, f["geometry"])
            if not _overlaps(rasterio.features.bounds(g), p.bounds):
                outside += 1
                continue
            self.shapes.append((g, self.classes.index(v)))
        if not self.shapes:
            raise ValueError(f"labels: all {len(feats)} features of {path} lie outside the scene "
                             f"{p.path} (bounds {tuple(round(b) for b in p.bounds)} in {p.crs})")
        self.outside = outside
        if outside:
            warnings.warn(f"labels: {outside} of {len(feats)} features of {path} lie outside "
                          "the scene and are not used", stacklevel=3)
        self.kind = "geojson"
        self.description = (f"GeoJSON {path} ({len(feats)} features, field {label_field!r}, "
                            f"{outside} outside the scene)")

    def read(self, wd: WindowData) -> np.ndarray:
        h, w = wd.mask.shape
        if self.kind == "scl":
            return self.lut[wd.scl]
        if self.kind == "raster":
            a = self._vrt.read(1, window=wd.window)
            out = np.full((h, w), -1, np.int32)
            for k, i in self.code_to_idx.items():
                out[a == k] = i
            return out
        from rasterio.features import rasterize

        return rasterize(self.shapes, out_shape=(h, w), transform=wd.transform, fill=-1,
                         dtype="int32")

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()
        if self._src is not None:
            self._src.close()


def check_label_source(product: L2AProduct, labels: Any = "scl", label_field: str = "class",
                       classes: Mapping[int, str] | None = None) -> str:
    """Open the reference labels as :func:`extract_patches` will, before any work; their description.

    Notebook 02 calls it before its run folder exists: a missing or unreadable label file, an SCL
    mapping on a product without SCL, a raster on another grid, each stops the run here, naming
    the file (``labels: ...``), not after the aligned GeoTIFF has been written.
    """
    src = _LabelSource(product, labels, label_field, classes)
    try:
        return src.description
    finally:
        src.close()


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


def extract_patches(
    product: L2AProduct,
    labels: Any = "scl",
    patch_size: int = 32,
    n_per_class: int = 500,
    seed: int = 0,
    ndvi_ambiguous: tuple[float, float] | None = None,
    block_size: int = 256,
    min_purity: float = 0.75,
    label_field: str = "class",
    classes: Mapping[int, str] | None = None,
    window_size: int = 1024,
    progress: bool = True,
) -> PatchSet:
    """Sample labelled, cloud-free 32x32 reflectance patches, split 70/15/15 by spatial blocks.

    Candidates are the non-overlapping ``patch_size`` cells of the 10 m grid. A cell's
    label is the majority reference label of its labelled pixels, kept if that label
    covers at least ``min_purity`` of them (a point label covers one pixel, so a cell
    holding one labelled point gets that point's class). Then, in this order and with
    every drop counted in ``meta``: cells with any masked pixel are dropped; cells whose
    mean NDVI falls inside ``ndvi_ambiguous`` (lo, hi) are dropped as mixed; up to
    ``n_per_class`` cells per class are drawn at random (stratified sampling). Cells are
    grouped into ``block_size`` px blocks; whole blocks go to train/val/test
    (:func:`lcc_utils.splits.spatial_split`).

    Args:
        product: The L2A product (:func:`open_l2a`).
        labels: ``"scl"`` (SCL 4 vegetation vs 5 not vegetated), a dict ``{SCL code:
            class name}``, a label GeoTIFF (any CRS; nearest; nodata = unlabelled; codes
            named by ``classes`` or a ``CLASSES`` JSON tag) or a GeoJSON of points or
            polygons with the class in property ``label_field``.
        patch_size: Patch side in 10 m pixels (paper B: 32).
        n_per_class: Patches drawn per class (fewer if fewer are eligible; warned).
        seed: Seed of the sampling and of the block split.
        ndvi_ambiguous: (lo, hi) NDVI band of mixed patches to drop, or None.
        block_size: Spatial block side in pixels (multiple of ``patch_size``).
        min_purity: Least share of a cell's labelled pixels carrying its label.
        label_field: GeoJSON property holding the class.
        classes: ``{code: name}`` for a label raster or GeoJSON codes.
        window_size: Read window side in pixels (memory bound).
        progress: Show a tqdm bar.

    Raises:
        ValueError: patch larger than the scene, labels outside the scene, a scene
            without a single unmasked candidate (e.g. entirely cloud), bad parameters.

    """
    ps_, bs = int(patch_size), int(block_size)
    if ps_ < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if ps_ > min(product.height, product.width):
        raise ValueError(f"patch_size={ps_} is larger than the scene "
                         f"({product.width}x{product.height} px)")
    if bs < ps_ or bs % ps_:
        raise ValueError(f"block_size={bs} must be a multiple of patch_size={ps_}")
    if int(n_per_class) < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if not 0 < min_purity <= 1:
        raise ValueError(f"min_purity must be in (0, 1], got {min_purity}")
    if ndvi_ambiguous is not None:
        lo, hi = (float(v) for v in ndvi_ambiguous)
        if not -1 <= lo < hi <= 1:
            raise ValueError(f"ndvi_ambiguous={ndvi_ambiguous} must be (lo, hi), -1 <= lo < hi <= 1")
    nir = next((b for b in NIR_BANDS if b in product.bands), None)  # B08, else B8A
    has_ndvi = "B04" in product.bands and nir is not None
    if not has_ndvi and ndvi_ambiguous is not None:
        raise ValueError(f"ndvi_ambiguous needs band B04 and a NIR band ({' or '.join(NIR_BANDS)}) in "
                         f"{product.path.name}; its bands are {list(product.bands)}")
    ws = max(ps_, (int(window_size) // ps_) * ps_)
    ch, cw = product.height // ps_, product.width // ps_
    src = _LabelSource(product, labels, label_field, classes)
    K = len(src.classes)
    # Per-cell statistics, first pass (window by window).
    lab = np.full((ch, cw), -1, np.int32)
    purity = np.zeros((ch, cw), np.float32)
    masked = np.zeros((ch, cw), np.int32)
    mean_ndvi = np.full((ch, cw), np.nan, np.float32)
    wins = grid_windows(ch * ps_, cw * ps_, ws)
    try:
        for wd in iter_windows(product, windows=wins, progress=progress):
            r0, c0 = int(wd.window.row_off) // ps_, int(wd.window.col_off) // ps_
            h, w = wd.mask.shape
            nh, nw = h // ps_, w // ps_
            L = src.read(wd)

            def cells(a: np.ndarray, nh: int = nh, nw: int = nw) -> np.ndarray:
                return a.reshape(nh, ps_, nw, ps_).sum(axis=(1, 3))

            counts = np.stack([cells((L == k).astype(np.int32)) for k in range(K)])
            tot = counts.sum(0)
            best = counts.argmax(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                pur = np.where(tot > 0, counts.max(0) / np.maximum(tot, 1), 0.0)
            lab[r0:r0 + nh, c0:c0 + nw] = np.where(tot > 0, best, -1)
            purity[r0:r0 + nh, c0:c0 + nw] = pur
            masked[r0:r0 + nh, c0:c0 + nw] = cells(wd.mask.astype(np.int32))
            if has_ndvi:
                nd = ndvi(wd.x, product.bands, axis=0)
                mean_ndvi[r0:r0 + nh, c0:c0 + nw] = cells(nd) / (ps_ * ps_)
    finally:
        src.close()
    if (masked == ps_ * ps_).all():
        raise ValueError(f"{product.path}: every pixel is masked (cloud/nodata): no patches")
    labelled = lab >= 0
    if not labelled.any():
        raise ValueError(f"labels: no reference label falls on a full {ps_}x{ps_} cell of the "
                         f"scene {product.path} ({src.description})")
    stats = []
    rng = np.random.default_rng(seed)
    chosen = []
    for k, name in enumerate(src.classes):
        cand = labelled & (lab == k)
        n_label = int(cand.sum())
        impure = cand & (purity < min_purity)
        cand &= ~impure
        has_mask = cand & (masked > 0)
        cand &= ~has_mask
        amb = np.zeros_like(cand)
        if ndvi_ambiguous is not None:
            amb = cand & (mean_ndvi > lo) & (mean_ndvi < hi)
            cand &= ~amb
        pool = np.flatnonzero(cand.ravel())
        take = np.sort(rng.choice(pool, size=min(int(n_per_class), len(pool)), replace=False))
        chosen.append((take, k))
        stats.append({"class": name, "labelled_cells": n_label,
                      "dropped_impure": int(impure.sum()), "dropped_masked": int(has_mask.sum()),
                      "dropped_ndvi_ambiguous": int(amb.sum()), "eligible": len(pool),
                      "sampled": len(take), "shortfall": max(0, int(n_per_class) - len(pool))})
        if len(pool) < int(n_per_class):
            warnings.warn(f"class {name!r}: only {len(pool)} eligible patches for n_per_class="
                          f"{n_per_class}; all are used", stacklevel=2)
    absent = [st["class"] for st in stats if st["labelled_cells"] == 0]
    if absent and not src.description.startswith("SCL"):
        # a user's label file naming classes that never fall on the scene is a wrong file or
        # a wrong class list, not a shortfall (SCL's classes may be absent: the desert tile)
        raise ValueError(f"labels: class(es) {absent} of {src.description} have no labelled {ps_}x{ps_} "
                         f"cell on the scene {product.path.name}; check the label file and its classes")
    flat = np.concatenate([t for t, _ in chosen]).astype(np.int64)
    if len(flat) == 0:
        raise ValueError(f"{product.path}: no eligible patch left after masking/screening "
                         f"(per class: {stats})")
    y = np.concatenate([np.full(len(t), k, np.int64) for t, k in chosen])
    order = np.argsort(flat, kind="stable")
    flat, y = flat[order], y[order]
    rows, cols = flat // cw, flat % cw
    # Second pass: read only windows holding chosen cells.
    x = np.empty((len(flat), ps_, ps_, len(product.bands)), np.float32)
    cells_per_win = ws // ps_
    wkey = (rows // cells_per_win) * 10**6 + cols // cells_per_win
    need = [w for w in wins if (int(w.row_off) // ws) * 10**6 + int(w.col_off) // ws
            in set(wkey.tolist())]
    for wd in iter_windows(product, windows=need, progress=False):
        r0, c0 = int(wd.window.row_off) // ps_, int(wd.window.col_off) // ps_
        sel = np.flatnonzero(wkey == (r0 // cells_per_win) * 10**6 + c0 // cells_per_win)
        for i in sel:
            rr, cc = (rows[i] - r0) * ps_, (cols[i] - c0) * ps_
            if wd.mask[rr:rr + ps_, cc:cc + ps_].any():
                raise AssertionError("a masked pixel reached a patch")  # cannot happen
            x[i] = np.moveaxis(wd.x[:, rr:rr + ps_, cc:cc + ps_], 0, -1)
    tr = product.transform
    res_x, res_y = tr.a, tr.e
    left = tr.c + cols * ps_ * res_x
    top = tr.f + rows * ps_ * res_y
    bounds = np.stack([left, top + ps_ * res_y, left + ps_ * res_x, top], axis=1)
    bpc = bs // ps_
    if bs > max(product.height, product.width):
        raise ValueError(f"block_size={bs} px is larger than the scene ({product.width}x{product.height} px): "
                         "one block cannot be split into train/val/test; use a smaller block_size")
    block = np.array([f"{r // bpc}:{c // bpc}" for r, c in zip(rows, cols, strict=True)])
    split = spatial_split(block, y, seed=seed)
    meta = {
        "source": data_relative(product.path), "layout": product.layout, "labels": src.description,
        "offset_source": product.offset_source, "patch_size": ps_, "block_size": bs,
        "n_per_class": int(n_per_class), "seed": int(seed), "min_purity": float(min_purity),
        "ndvi_ambiguous": list(ndvi_ambiguous) if ndvi_ambiguous is not None else None,
        "nir_band": nir,
        "grid_cells": int(ch * cw), "masked_cells": int((masked > 0).sum()),
        "per_class": stats, "n_blocks": int(len(np.unique(block))),
    }
    if getattr(src, "outside", 0):
        meta["features_outside_scene"] = int(src.outside)
    return PatchSet(x=x, y=y, classes=list(src.classes), bands=product.bands,
                    crs=np.full(len(y), product.crs.to_string(), dtype=object), bounds=bounds,
                    split=split, block=block, meta=meta)
