"""Paper B preprocessing: Sentinel-2 L2A bands on one 10 m grid, SCL cloud mask, reflectance, patches.

Paper B uses Sentinel-2 L2A bands B2, B3, B4, B8 (10 m) and B11, B12 (20 m, resampled
to 10 m bilinearly), masks clouds with the Scene Classification Layer (SCL), works in
normalised reflectance and classifies 32x32 patches split 70/15/15 into spatially
disjoint train/val/test sets.

Where normalisation happens (two steps, on purpose):

1. Here: digital numbers -> surface reflectance,
   ``(DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE`` (offset -1000 since processing
   baseline 04.00, 2022-01-25; 0 before). Patch sets and aligned GeoTIFFs hold reflectance.
2. At training time: per-band standardisation with the statistics of the *train* split
   only (``lcc_utils.data.BatchLoader(mean=..., std=...)``; :func:`band_stats`), so no
   information from val/test leaks into the model; mapping uses the same statistics.

Every product is read through windows (:func:`iter_windows`), so a full 10980 x 10980
tile is never held whole in memory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.transform
import rasterio.warp
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm.auto import tqdm

from lcc_utils.constants import (
    EUROSAT_VEGETATION_CLASSES,
    PAPER_B_BANDS,
    PAPER_B_SPLIT_FRACTIONS,
    S2_BAND_RESOLUTION,
    S2_BASELINE_0400_DATE,
    S2_BOA_OFFSET_SINCE_BASELINE_0400,
    S2_ESA_BAND_ORDER,
    S2_QUANTIFICATION_VALUE,
    SCL_CLASSES,
    SCL_MASK_CLASSES,
    SCL_VEGETATION_LABELS,
)

#: First day products were generated with processing baseline 04.00 (BOA offset -1000).
BASELINE_0400_DATE = _dt.date.fromisoformat(S2_BASELINE_0400_DATE)
#: Nodata value of the float32 reflectance GeoTIFFs written by :func:`write_aligned`.
ALIGNED_NODATA = -9999.0
#: Split names and paper B's fractions.
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: tuple[float, float, float] = PAPER_B_SPLIT_FRACTIONS
#: Binary EuroSAT task class names (index = label).
BINARY_CLASSES: tuple[str, str] = ("non_vegetation", "vegetation")
#: ESA band order of ``band_id`` in ``MTD_MSIL2A.xml`` (B8A 9th; not the EuroSAT file order).
_ESA_BAND_ORDER = S2_ESA_BAND_ORDER
LAYOUTS: tuple[str, ...] = ("cogs", "safe", "geotiff", "bigearthnet")


# --------------------------------------------------------------------------- band names
def normalize_band_name(name: str) -> str:
    """Canonical Sentinel-2 band name: ``"B2"``/``"b02"`` -> ``"B02"``, ``"B8A"``, ``"SCL"``.

    Raises:
        ValueError: ``name`` is not a Sentinel-2 band.

    """
    s = str(name).strip().upper()
    m = re.fullmatch(r"B0?(\d{1,2}|8A)", s)
    if m:
        s = "B8A" if m.group(1) == "8A" else f"B{int(m.group(1)):02d}"
    if s not in S2_BAND_RESOLUTION:
        raise ValueError(
            f"unknown band {name!r}; choose from: {', '.join(S2_BAND_RESOLUTION)}"
        )
    return s


def _check_bands(bands: Sequence[str]) -> tuple[str, ...]:
    if isinstance(bands, str):
        raise ValueError(f"bands must be a list of band names, got the string {bands!r}")
    out = tuple(normalize_band_name(b) for b in bands)
    if not out:
        raise ValueError("bands is empty")
    if "SCL" in out:
        raise ValueError("bands: SCL is read as the cloud mask, not as a spectral band")
    if len(set(out)) != len(out):
        raise ValueError(f"bands has duplicates: {list(out)}")
    return out


# --------------------------------------------------------------------------- product
@dataclass
class L2AProduct:
    """A Sentinel-2 L2A product opened lazily on its 10 m grid (nothing is read yet).

    The grid is that of the finest selected band (10 m on real products; 100 m on the
    10x shrunk test tile). ``sources`` maps each band to ``(file, 1-based band index)``.
    """

    path: Path
    layout: str
    bands: tuple[str, ...]
    sources: dict[str, tuple[Path, int]]
    scl: tuple[Path, int] | None
    crs: CRS
    transform: Affine
    width: int
    height: int
    boa_offsets: dict[str, float]
    quantification_value: float
    offset_source: str
    date: str | None = None
    processing_baseline: str | None = None
    nodata: dict[str, float | None] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the 10 m grid."""
        return self.height, self.width

    @property
    def resolution(self) -> float:
        """Pixel size of the grid in CRS units (metres)."""
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height, left + self.transform.a * self.width,
                top)

    def describe(self) -> dict[str, Any]:
        """Plain-dict summary (for run folders and printing)."""
        return {
            "path": str(self.path), "layout": self.layout, "bands": list(self.bands),
            "crs": self.crs.to_string(), "width": self.width, "height": self.height,
            "resolution": self.resolution, "date": self.date,
            "processing_baseline": self.processing_baseline,
            "boa_offsets": self.boa_offsets, "quantification_value": self.quantification_value,
            "offset_source": self.offset_source, "has_scl": self.scl is not None,
        }


def _parse_date(s: str | None) -> _dt.date | None:
    if not s:
        return None
    m = re.search(r"(\d{4})-?(\d{2})-?(\d{2})", str(s))
    return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _baseline_offset(baseline: str | None) -> float | None:
    if not baseline:
        return None
    try:
        v = float(str(baseline).strip().lstrip("N"))
    except ValueError:
        return None
    return S2_BOA_OFFSET_SINCE_BASELINE_0400 if v >= 4.0 else 0.0


def _offsets_from_date(date: str | None, where: str) -> tuple[float, str]:
    d = _parse_date(date)
    if d is None:
        raise ValueError(
            f"{where}: no BOA_ADD_OFFSET, processing baseline or acquisition date in the "
            "metadata; pass boa_offset= (DN offset, -1000 for baseline >= 04.00) or date="
        )
    off = S2_BOA_OFFSET_SINCE_BASELINE_0400 if d >= BASELINE_0400_DATE else 0.0
    return off, (f"inferred from the acquisition date {d.isoformat()} (baseline 04.00, "
                 f"offset -1000, since {BASELINE_0400_DATE.isoformat()})")


def _find_one(folder: Path, patterns: Sequence[str]) -> Path | None:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def _cogs_sources(folder: Path, bands: tuple[str, ...]):
    sources = {}
    for b in bands:
        p = _find_one(folder, [f"{b}.tif", f"{b}.TIF", f"{b}.tiff"])
        if p is None:
            raise FileNotFoundError(f"band {b}: file {folder / (b + '.tif')} is missing")
        sources[b] = (p, 1)
    scl = _find_one(folder, ["SCL.tif", "SCL.TIF", "SCL.tiff"])
    items = [p for p in sorted(folder.glob("*.json"))]
    meta: dict[str, Any] = {}
    for p in items:
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(d, dict) and "properties" in d:
            meta = d
            break
    return sources, (scl, 1) if scl else None, meta


def _stac_offsets(meta: dict, sources: dict) -> tuple[dict | None, float | None, str, str | None,
                                                     str | None]:
    """Offsets from a STAC item: processing baseline + ``earthsearch:boa_offset_applied``."""
    props = meta.get("properties", {}) if meta else {}
    date = props.get("datetime")
    baseline = props.get("s2:processing_baseline")
    if props.get("earthsearch:boa_offset_applied") is True:
        return ({b: 0.0 for b in sources}, S2_QUANTIFICATION_VALUE,
                "STAC item: earthsearch:boa_offset_applied=true (offset already in the DNs)",
                date, baseline)
    off = _baseline_offset(baseline)
    if off is not None:
        return ({b: off for b in sources}, S2_QUANTIFICATION_VALUE,
                f"STAC item: s2:processing_baseline {baseline}", date, baseline)
    # raster:bands scale/offset per asset (reflectance = DN * scale + offset)
    by_file = {}
    for a in meta.get("assets", {}).values() if meta else []:
        rb = (a.get("raster:bands") or [{}])[0]
        if "scale" in rb:
            by_file[Path(str(a.get("href", ""))).name] = rb
    if by_file and all(p.name in by_file for p, _ in sources.values()):
        offs, q = {}, None
        for b, (p, _) in sources.items():
            rb = by_file[p.name]
            q = 1.0 / float(rb["scale"])
            offs[b] = float(rb.get("offset", 0.0)) * q
        return offs, q, "STAC item: raster:bands scale/offset", date, baseline
    return None, None, "", date, baseline


def _safe_sources(folder: Path, bands: tuple[str, ...]):
    granules = sorted((folder / "GRANULE").glob("*/IMG_DATA"))
    if not granules:
        raise FileNotFoundError(f"{folder}: no GRANULE/*/IMG_DATA folder in this .SAFE product")
    img = granules[0]

    def find(b: str) -> Path | None:
        native = S2_BAND_RESOLUTION[b]
        for res in sorted({native, 10, 20, 60}, key=lambda r: (r < native, r)):
            p = _find_one(img / f"R{res}m", [f"*_{b}_{res}m.jp2", f"*_{b}_{res}m.tif"])
            if p is not None:
                return p
        return None

    sources = {}
    for b in bands:
        p = find(b)
        if p is None:
            raise FileNotFoundError(f"band {b}: no {img}/R*m/*_{b}_*m.jp2 file in this .SAFE")
        sources[b] = (p, 1)
    scl = find("SCL")
    mtd = folder / "MTD_MSIL2A.xml"
    return sources, (scl, 1) if scl else None, mtd


def _safe_offsets(mtd: Path, bands: tuple[str, ...]):
    if not mtd.exists():
        return None, None, "", None, None
    root = ET.parse(mtd).getroot()
    q, offs, date, baseline = None, {}, None, None
    for el in root.iter():
        tag = el.tag.split("}")[-1]
        if tag in ("BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE") and el.text:
            q = float(el.text)
        elif tag == "BOA_ADD_OFFSET" and el.text:
            offs[_ESA_BAND_ORDER[int(el.attrib["band_id"])]] = float(el.text)
        elif tag == "PRODUCT_START_TIME" and el.text:
            date = el.text
        elif tag == "PROCESSING_BASELINE" and el.text:
            baseline = el.text
    if offs:
        missing = [b for b in bands if b not in offs]
        if missing:
            raise ValueError(f"{mtd}: BOA_ADD_OFFSET list lacks bands {missing}")
        return ({b: offs[b] for b in bands}, q or S2_QUANTIFICATION_VALUE,
                f"{mtd.name}: BOA_ADD_OFFSET / QUANTIFICATION_VALUE", date, baseline)
    off = _baseline_offset(baseline)
    if off is not None:
        return ({b: off for b in bands}, q or S2_QUANTIFICATION_VALUE,
                f"{mtd.name}: PROCESSING_BASELINE {baseline}", date, baseline)
    return None, q, "", date, baseline


def _geotiff_sources(path: Path, bands: tuple[str, ...]):
    with rasterio.open(path) as src:
        desc = list(src.descriptions)
        tags = src.tags()
    names: dict[str, int] = {}
    for i, d in enumerate(desc, start=1):
        if not d:
            continue
        try:
            names[normalize_band_name(d)] = i
        except ValueError:
            continue
    if not names:
        raise ValueError(f"{path}: the GeoTIFF's bands have no Sentinel-2 band descriptions "
                         f"(found {desc}); set them (e.g. 'B02') so bands can be selected")
    sources = {}
    for b in bands:
        if b not in names:
            raise ValueError(f"band {b}: not in {path} (its bands: {', '.join(names)})")
        sources[b] = (path, names[b])
    scl = (path, names["SCL"]) if "SCL" in names else None
    offs = q = None
    source = ""
    if "BOA_ADD_OFFSET" in tags or "QUANTIFICATION_VALUE" in tags:
        offs = {b: float(tags.get("BOA_ADD_OFFSET", 0.0)) for b in bands}
        q = float(tags.get("QUANTIFICATION_VALUE", S2_QUANTIFICATION_VALUE))
        source = f"{path.name} tags BOA_ADD_OFFSET / QUANTIFICATION_VALUE"
    date = tags.get("DATETIME") or tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITION_DATE")
    baseline = tags.get("PROCESSING_BASELINE")
    if offs is None and _baseline_offset(baseline) is not None:
        offs = {b: _baseline_offset(baseline) for b in bands}
        q, source = S2_QUANTIFICATION_VALUE, f"{path.name} tag PROCESSING_BASELINE {baseline}"
    return sources, scl, offs, q, source, date, baseline


def _bigearthnet_sources(folder: Path, bands: tuple[str, ...]):
    sources = {}
    for b in bands:
        p = _find_one(folder, [f"*_{b}.tif"])
        if p is None:
            raise FileNotFoundError(f"band {b}: no {folder}/<name>_{b}.tif in this BigEarthNet patch")
        sources[b] = (p, 1)
    date = None
    meta = _find_one(folder, ["*_labels_metadata.json"])
    if meta is not None:
        date = json.loads(meta.read_text()).get("acquisition_date")
    if date is None:  # the patch name holds the acquisition time: S2A_MSIL2A_20170613T101031_...
        date = folder.name
    return sources, date


def _detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() in (".tif", ".tiff"):
            return "geotiff"
        raise ValueError(f"{path}: not an L2A product (expected a .tif, a .SAFE folder, a "
                         "sentinel-cogs folder or a BigEarthNet patch folder)")
    if not path.is_dir():
        raise FileNotFoundError(f"L2A product {path} does not exist")
    if path.suffix.upper() == ".SAFE" or (path / "GRANULE").is_dir():
        return "safe"
    if any(path.glob("B0[2-8].tif")) or any(path.glob("B1[12].tif")):
        return "cogs"
    if any(path.glob("*_B0[2-8].tif")):
        return "bigearthnet"
    raise ValueError(f"{path}: unrecognised L2A layout (no B02.tif, GRANULE/ or *_B02.tif)")


def open_l2a(
    path: str | os.PathLike,
    bands: Sequence[str] = PAPER_B_BANDS,
    boa_offset: float | None = None,
    quantification_value: float | None = None,
    date: str | None = None,
) -> L2AProduct:
    """Open a Sentinel-2 L2A product on its 10 m grid (lazily: no pixel is read here).

    Layouts: a sentinel-cogs folder (``B02.tif`` ... ``SCL.tif`` + STAC item ``*.json``),
    a ``.SAFE`` folder (``GRANULE/*/IMG_DATA/R10m|R20m|R60m/*_B02_10m.jp2`` +
    ``MTD_MSIL2A.xml``), a multi-band GeoTIFF whose band descriptions name the bands
    (``B02``..., optional ``SCL``), or a BigEarthNet patch folder (``<name>_B02.tif``).

    The reflectance offset comes from the metadata when present (``BOA_ADD_OFFSET``;
    else the processing baseline); otherwise it is inferred from the acquisition date
    and ``offset_source`` says so. ``boa_offset``/``quantification_value`` override both.

    Raises:
        ValueError: unknown band, bands whose CRS or extent cannot be aligned, no way to
            know the offset.
        FileNotFoundError: the product or a band file is missing.

    """
    path = Path(path)
    bands = _check_bands(bands)
    layout = _detect_layout(path)
    offs = q = None
    source, baseline, mdate = "", None, None
    if layout == "cogs":
        sources, scl, meta = _cogs_sources(path, bands)
        offs, q, source, mdate, baseline = _stac_offsets(meta, sources)
    elif layout == "safe":
        sources, scl, mtd = _safe_sources(path, bands)
        offs, q, source, mdate, baseline = _safe_offsets(mtd, bands)
    elif layout == "geotiff":
        sources, scl, offs, q, source, mdate, baseline = _geotiff_sources(path, bands)
    else:
        sources, mdate = _bigearthnet_sources(path, bands)
        scl = None
    date = date or mdate
    if boa_offset is not None:
        offs, source = {b: float(boa_offset) for b in bands}, "given by the caller (boa_offset=)"
    if offs is None:
        off, source = _offsets_from_date(date, str(path))
        offs = {b: off for b in bands}
    if quantification_value is not None:
        q = float(quantification_value)
    q = float(q or S2_QUANTIFICATION_VALUE)
    if q <= 0:
        raise ValueError(f"quantification_value must be > 0, got {q}")

    # The 10 m grid: the finest selected band. Every other band must share its CRS and
    # extent (within half a pixel of the coarser band), else it cannot be aligned.
    info = {}
    for b, (p, i) in sources.items():
        try:
            with rasterio.open(p) as src:
                if i > src.count:
                    raise ValueError(f"band {b}: {p} has {src.count} bands, no band {i}")
                info[b] = (src.crs, src.transform, src.width, src.height, src.nodata)
        except rasterio.errors.RasterioIOError as e:
            raise ValueError(f"band {b}: cannot read {p} ({e})") from e
    ref = min(bands, key=lambda b: (abs(info[b][1].a), bands.index(b)))
    crs, tr, w, h, _ = info[ref]
    if crs is None:
        raise ValueError(f"band {ref}: {sources[ref][0]} has no CRS")
    ref_bounds = rasterio.transform.array_bounds(h, w, tr)
    checks = dict(info)
    if scl is not None:
        with rasterio.open(scl[0]) as src:
            checks["SCL"] = (src.crs, src.transform, src.width, src.height, src.nodata)
    for b, (c, t, ww, hh, _) in checks.items():
        fname = scl[0] if b == "SCL" else sources[b][0]
        if c != crs:
            raise ValueError(f"band {b}: {fname} has CRS {c}, band {ref} has {crs}; "
                             "bands in different CRS cannot be aligned")
        bb = rasterio.transform.array_bounds(hh, ww, t)
        tol = max(abs(t.a), abs(tr.a)) / 2
        if max(abs(x - y) for x, y in zip(bb, ref_bounds, strict=True)) > tol:
            raise ValueError(f"band {b}: {fname} covers {tuple(round(v, 2) for v in bb)}, band "
                             f"{ref} covers {tuple(round(v, 2) for v in ref_bounds)}; "
                             "extents differ, the bands cannot be aligned")
    nodata = {b: (info[b][4] if info[b][4] is not None else 0.0) for b in bands}
    return L2AProduct(
        path=path, layout=layout, bands=bands, sources=sources, scl=scl, crs=crs,
        transform=tr, width=w, height=h, boa_offsets=offs, quantification_value=q,
        offset_source=source, date=str(date) if date else None,
        processing_baseline=baseline, nodata=nodata,
    )


# --------------------------------------------------------------------------- windows
@dataclass
class WindowData:
    """One window of a product on the 10 m grid.

    ``x`` is (C, h, w) float32 reflectance, ``mask`` is True where a pixel is unusable
    (SCL class in ``SCL_MASK_CLASSES`` or a band's nodata), ``scl`` the SCL codes
    resampled nearest (None without SCL), ``transform`` the window's own transform.
    """

    window: Window
    transform: Affine
    x: np.ndarray
    mask: np.ndarray
    scl: np.ndarray | None
    nodata_mask: np.ndarray


class _Reader:
    """Open datasets (aligned through WarpedVRT where needed) for windowed reads."""

    def __init__(self, product: L2AProduct):
        self.p = product
        self._files: dict[Path, Any] = {}
        self._vrts: dict[tuple[Path, str], Any] = {}

    def _get(self, path: Path, resampling: Resampling, nodata: float | None):
        key = (path, resampling.name)
        if key not in self._vrts:
            if path not in self._files:
                self._files[path] = rasterio.open(path)
            src = self._files[path]
            p = self.p
            if src.transform == p.transform and (src.width, src.height) == (p.width, p.height):
                self._vrts[key] = src
            else:
                # 20 m bands -> 10 m bilinear; SCL nearest (class codes must not be blended).
                self._vrts[key] = WarpedVRT(
                    src, crs=p.crs, transform=p.transform, width=p.width, height=p.height,
                    resampling=resampling, src_nodata=nodata, nodata=nodata,
                )
        return self._vrts[key]

    def read(self, window: Window) -> WindowData:
        p = self.p
        h, w = int(window.height), int(window.width)
        x = np.empty((len(p.bands), h, w), dtype=np.float32)
        nod = np.zeros((h, w), dtype=bool)
        for k, b in enumerate(p.bands):
            path, idx = p.sources[b]
            nd = p.nodata[b]
            arr = self._get(path, Resampling.bilinear, nd).read(idx, window=window,
                                                                out_dtype="float32")
            bad = np.isnan(arr) if nd is not None and np.isnan(nd) else arr == nd
            nod |= bad
            x[k] = (arr + p.boa_offsets[b]) / p.quantification_value
        scl = None
        mask = nod.copy()
        if p.scl is not None:
            scl = self._get(p.scl[0], Resampling.nearest, 0).read(p.scl[1], window=window)
            mask |= np.isin(scl, SCL_MASK_CLASSES)
        x[:, mask] = 0.0  # masked pixels hold no data; never let nodata DNs leak as values
        return WindowData(window, rasterio.windows.transform(window, p.transform), x, mask,
                          scl, nod)

    def close(self) -> None:
        for v in self._vrts.values():
            v.close()
        for f in self._files.values():
            f.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grid_windows(height: int, width: int, window_size: int) -> list[Window]:
    """Row-major windows of ``window_size`` covering a grid (edge windows are smaller)."""
    if int(window_size) < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    ws = int(window_size)
    return [Window(c, r, min(ws, width - c), min(ws, height - r))
            for r in range(0, height, ws) for c in range(0, width, ws)]


def iter_windows(product: L2AProduct, window_size: int = 1024,
                 windows: Sequence[Window] | None = None,
                 progress: bool = False) -> Iterator[WindowData]:
    """Yield aligned 10 m reflectance, mask and transform window by window.

    Memory is bounded by one window (C x window_size^2 float32), whatever the scene size.
    """
    wins = list(windows) if windows is not None else grid_windows(
        product.height, product.width, window_size)
    with _Reader(product) as reader:
        for win in tqdm(wins, desc="windows", disable=not progress, leave=False):
            yield reader.read(win)


def read_window(product: L2AProduct, window: Window | None = None) -> WindowData:
    """Read one window (default: the whole grid; only for small scenes and plots)."""
    window = window or Window(0, 0, product.width, product.height)
    with _Reader(product) as reader:
        return reader.read(window)


def read_overview(product: L2AProduct, max_size: int = 1024) -> WindowData:
    """Decimated read of the whole grid for figures (nearest; at most ``max_size`` px a side)."""
    f = max(1, int(np.ceil(max(product.width, product.height) / max_size)))
    if f == 1:
        return read_window(product)
    out = []
    step = f * max(1, 1024 // f)
    for wd in iter_windows(product, step):
        out.append(wd)
    # assemble decimated mosaic
    h, w = -(-product.height // f), -(-product.width // f)
    x = np.zeros((len(product.bands), h, w), np.float32)
    mask = np.zeros((h, w), bool)
    scl = np.zeros((h, w), np.uint8) if product.scl is not None else None
    for wd in out:
        r0, c0 = int(wd.window.row_off) // f, int(wd.window.col_off) // f
        xs = wd.x[:, ::f, ::f]
        x[:, r0:r0 + xs.shape[1], c0:c0 + xs.shape[2]] = xs
        mask[r0:r0 + xs.shape[1], c0:c0 + xs.shape[2]] = wd.mask[::f, ::f]
        if scl is not None:
            scl[r0:r0 + xs.shape[1], c0:c0 + xs.shape[2]] = wd.scl[::f, ::f]
    tr = product.transform * Affine.scale(f)
    return WindowData(Window(0, 0, w, h), tr, x, mask, scl, np.zeros_like(mask))


# --------------------------------------------------------------------------- aligned GeoTIFF
def scl_mask_share(product: L2AProduct) -> float:
    """Share of the scene whose SCL class is masked, counted on the native SCL raster.

    Independent of the 10 m resampling: with an integer 20 m -> 10 m factor, nearest
    resampling repeats each SCL pixel factor^2 times, so the share is the same.
    """
    if product.scl is None:
        raise ValueError(f"{product.path}: no SCL layer, cannot compute the SCL mask share")
    n = m = 0
    with rasterio.open(product.scl[0]) as src:
        for _, win in src.block_windows(product.scl[1]):
            a = src.read(product.scl[1], window=win)
            n += a.size
            m += int(np.isin(a, SCL_MASK_CLASSES).sum())
    return m / n


def write_aligned(product: L2AProduct, out_path: str | os.PathLike, window_size: int = 1024,
                  progress: bool = True) -> dict[str, Any]:
    """Write the 10 m aligned, cloud-masked reflectance bands as one float32 GeoTIFF.

    Masked pixels (SCL classes ``SCL_MASK_CLASSES`` or band nodata) hold
    ``ALIGNED_NODATA``. Written window by window to a temporary name, then renamed.

    Returns:
        A report: ``masked_fraction`` (of the written file), ``scl_masked_fraction``
        (same pixels counted from SCL resampled to 10 m), ``nodata_fraction`` (band
        nodata), per-SCL-class pixel counts, and the output path.

    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp.tif")
    profile = {
        "driver": "GTiff", "dtype": "float32", "count": len(product.bands),
        "width": product.width, "height": product.height, "crs": product.crs,
        "transform": product.transform, "nodata": ALIGNED_NODATA, "compress": "deflate",
        "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }
    n = n_mask = n_scl = n_nod = 0
    scl_counts = np.zeros(256, np.int64)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.descriptions = product.bands
            dst.update_tags(BOA_ADD_OFFSET=0, QUANTIFICATION_VALUE=1,
                            SOURCE=str(product.path), SOURCE_OFFSET=product.offset_source,
                            DATETIME=product.date or "")
            for wd in iter_windows(product, window_size, progress=progress):
                x = wd.x.copy()
                x[:, wd.mask] = ALIGNED_NODATA
                dst.write(x, window=wd.window)
                n += wd.mask.size
                n_mask += int(wd.mask.sum())
                n_nod += int(wd.nodata_mask.sum())
                if wd.scl is not None:
                    n_scl += int(np.isin(wd.scl, SCL_MASK_CLASSES).sum())
                    scl_counts += np.bincount(wd.scl.ravel(), minlength=256)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "path": str(out_path), "width": product.width, "height": product.height,
        "bands": list(product.bands), "pixels": n, "masked_pixels": n_mask,
        "masked_fraction": n_mask / n, "scl_masked_fraction": n_scl / n if product.scl else None,
        "nodata_fraction": n_nod / n,
        "scl_pixels": {SCL_CLASSES.get(k, str(k)): int(v) for k, v in enumerate(scl_counts) if v},
    }


def raster_masked_fraction(path: str | os.PathLike) -> float:
    """Share of nodata pixels in band 1 of a GeoTIFF, read back block by block."""
    n = m = 0
    with rasterio.open(path) as src:
        for _, win in src.block_windows(1):
            a = src.read(1, window=win, masked=True)
            n += a.size
            m += int(np.ma.getmaskarray(a).sum())
    return m / n


# --------------------------------------------------------------------------- NDVI
def ndvi(x: np.ndarray, bands: Sequence[str], axis: int = -1) -> np.ndarray:
    """NDVI = (NIR - red) / (NIR + red) from B08 and B04 of reflectance array ``x``.

    ``axis`` is the band axis (-1 for channels-last patch sets, 0 for (C, H, W) windows).
    Pixels with NIR + red <= 0 get NDVI 0.
    """
    bands = [normalize_band_name(b) for b in bands]
    for b in ("B04", "B08"):
        if b not in bands:
            raise ValueError(f"ndvi needs band {b}; bands are {bands}")
    x = np.asarray(x, dtype=np.float32)
    if x.shape[axis] != len(bands):
        raise ValueError(f"x has {x.shape[axis]} bands on axis {axis}, bands lists {len(bands)}")
    red = np.take(x, bands.index("B04"), axis=axis)
    nir = np.take(x, bands.index("B08"), axis=axis)
    den = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (nir - red) / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


# --------------------------------------------------------------------------- patch sets
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
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, x=ps.x, y=ps.y, crs=ps.crs.astype(str), bounds=ps.bounds, split=ps.split,
                 block=ps.block)
    os.replace(tmp, npz)
    tmpj = js.with_name(js.name + ".tmp")
    tmpj.write_text(json.dumps({"classes": list(ps.classes), "bands": list(ps.bands),
                                "hash": ps.hash, "n": len(ps), "meta": ps.meta},
                               indent=1, default=str))
    os.replace(tmpj, js)
    return npz


def load_patchset(path: str | os.PathLike) -> PatchSet:
    """Read a patch set written by :func:`save_patchset`; checks the content hash."""
    npz, js = _patchset_paths(path)
    for p in (npz, js):
        if not p.exists():
            raise FileNotFoundError(f"patch set file {p} is missing")
    d = json.loads(js.read_text())
    with np.load(npz, allow_pickle=False) as a:
        ps = PatchSet(x=a["x"], y=a["y"], classes=d["classes"], bands=tuple(d["bands"]),
                      crs=a["crs"], bounds=a["bounds"], split=a["split"], block=a["block"],
                      meta=d["meta"])
    if ps.hash != d["hash"]:
        raise ValueError(f"{npz}: content hash {ps.hash} != recorded {d['hash']}; file corrupt")
    return ps


def _group_fold(idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, n: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, part), part about 1/n of the patches, whole groups only.

    Stratified by class (``StratifiedGroupKFold``) when every class has at least ``n``
    patches; otherwise whole groups are drawn in a seeded random order until the part
    holds 1/n of the patches (tiny sets, where stratification is impossible).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    ug = np.unique(groups)
    n = min(n, len(ug))
    if n < 2:
        raise ValueError(f"only {len(ug)} spatial block(s): cannot split; use smaller blocks")
    if np.bincount(np.unique(labels, return_inverse=True)[1]).min() >= n:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            rest, part = next(StratifiedGroupKFold(n, shuffle=True, random_state=seed)
                              .split(idx, labels, groups))
        return idx[rest], idx[part]
    order = np.random.default_rng(seed).permutation(ug)
    sizes = np.array([(groups == g).sum() for g in order])
    k = max(1, int(np.searchsorted(np.cumsum(sizes), len(idx) / n)) + 1)
    k = min(k, len(ug) - 1)
    in_part = np.isin(groups, order[:k])
    return idx[~in_part], idx[in_part]


def spatial_split(groups: np.ndarray, labels: np.ndarray, seed: int = 0,
                  fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> np.ndarray:
    """Assign whole spatial blocks to train/val/test (about 70/15/15 of the patches).

    Blocks, not patches, are split (scikit-learn ``StratifiedGroupKFold``, which also
    keeps class shares close), so neighbouring patches never sit on both sides. With whole
    blocks the fractions are approximate: test is one of ``round(1/0.15) = 7`` folds,
    val one of ``round(0.85/0.15) = 6`` folds of the rest (seeded random whole blocks
    when a class has too few patches to stratify).

    Raises:
        ValueError: fewer blocks than folds (make the blocks smaller), or a block ends up
            in two splits (a bug).

    """
    groups, labels = np.asarray(groups), np.asarray(labels)
    ftr, fva, fte = fractions
    if abs(ftr + fva + fte - 1) > 1e-6:
        raise ValueError(f"fractions {fractions} must sum to 1")
    n_test = max(2, round(1 / fte))
    n_val = max(2, round((1 - fte) / fva))
    n_blocks = len(np.unique(groups))
    if n_blocks < n_test:
        raise ValueError(f"only {n_blocks} spatial blocks; a 70/15/15 block split needs at "
                         f"least {n_test}: use a smaller block_size")
    idx = np.arange(len(labels))
    rest, test = _group_fold(idx, labels, groups, n_test, seed)
    tr, va = _group_fold(np.arange(len(rest)), labels[rest], groups[rest], n_val, seed + 1)
    split = np.empty(len(labels), dtype="<U5")
    split[rest[tr]], split[rest[va]], split[test] = "train", "val", "test"
    for g in np.unique(groups):
        s = np.unique(split[groups == g])
        if len(s) != 1:
            raise AssertionError(f"spatial block {g} spans splits {s.tolist()}")
    return split


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
    (:func:`spatial_split`).

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
    if "B04" not in product.bands or "B08" not in product.bands:
        if ndvi_ambiguous is not None:
            raise ValueError("ndvi_ambiguous needs bands B04 and B08 in the product")
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
            if "B04" in product.bands and "B08" in product.bands:
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
    block = np.array([f"{r // bpc}:{c // bpc}" for r, c in zip(rows, cols, strict=True)])
    split = spatial_split(block, y, seed=seed)
    meta = {
        "source": str(product.path), "layout": product.layout, "labels": src.description,
        "offset_source": product.offset_source, "patch_size": ps_, "block_size": bs,
        "n_per_class": int(n_per_class), "seed": int(seed), "min_purity": float(min_purity),
        "ndvi_ambiguous": list(ndvi_ambiguous) if ndvi_ambiguous is not None else None,
        "grid_cells": int(ch * cw), "masked_cells": int((masked > 0).sum()),
        "per_class": stats, "n_blocks": int(len(np.unique(block))),
    }
    if getattr(src, "outside", 0):
        meta["features_outside_scene"] = int(src.outside)
    return PatchSet(x=x, y=y, classes=list(src.classes), bands=product.bands,
                    crs=np.full(len(y), product.crs.to_string(), dtype=object), bounds=bounds,
                    split=split, block=block, meta=meta)


# --------------------------------------------------------------------------- EuroSAT MS
def eurosat_ms_patchset(
    ds: Any,
    task: str = "binary",
    patch_size: int = 32,
    bands: Sequence[str] = PAPER_B_BANDS,
    seed: int = 0,
    block_size_m: float = 5000.0,
) -> PatchSet:
    """Paper B-style patch set from EuroSAT MS (``data.load_dataset("eurosat_ms")``).

    EuroSAT MS holds uint16 L1C top-of-atmosphere DNs: reflectance = DN / 10000 (no
    BOA offset: the archive predates baseline 04.00). The six paper B bands are taken
    from the 13 in ``EUROSAT_MS_BANDS`` order. Each 64x64 image is cut into its four
    32x32 quadrants (``(64 // patch_size)**2`` tiles); all tiles of one image share its
    spatial block, so no quadrant of a training image can be a test patch. The split
    groups images into ``block_size_m`` blocks of their UTM centres, per CRS zone, and
    assigns whole blocks 70/15/15 (:func:`spatial_split`).

    Args:
        ds: The EuroSAT MS ``ImageDataset`` (``images`` (N, 64, 64, 13) uint16, ``geo``).
        task: ``"binary"`` (``EUROSAT_VEGETATION_CLASSES`` = vegetation, label 1) or
            ``"multiclass"`` (the 10 EuroSAT classes).
        patch_size: Tile side; must divide 64 (32 -> four quadrants per image).
        bands: Bands to keep, from the 13 of ``EUROSAT_MS_BANDS``.
        seed: Seed of the block split.
        block_size_m: Spatial block side in metres (UTM, per zone).

    """
    tasks = ("binary", "multiclass")
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(tasks)}")
    bands = _check_bands(bands)
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
    if task == "binary":
        unknown = [c for c in EUROSAT_VEGETATION_CLASSES if c not in src_classes]
        if unknown:
            raise ValueError(f"vegetation classes {unknown} are not in the dataset's classes")
        veg = np.isin(np.asarray(src_classes)[ds.labels], EUROSAT_VEGETATION_CLASSES)
        y_img, classes = veg.astype(np.int64), list(BINARY_CLASSES)
    else:
        y_img, classes = np.asarray(ds.labels, np.int64), src_classes
    geo = ds.geo.reset_index(drop=True)
    bx = np.floor(geo["x"].to_numpy() / block_size_m).astype(np.int64)
    by = np.floor(geo["y"].to_numpy() / block_size_m).astype(np.int64)
    blocks_img = np.array([f"{c}:{i}:{j}" for c, i, j in zip(geo["crs"], bx, by, strict=True)])
    split_img = spatial_split(blocks_img, y_img, seed=seed)
    rep = t * t
    # Bounds of each tile from the image bounds (row-major tiles, row 0 at the top).
    L, B, R, T = (geo[k].to_numpy() for k in ("left", "bottom", "right", "top"))
    dx, dy = (R - L) / t, (T - B) / t
    tb = []
    for i in range(t):
        for j in range(t):
            tb.append(np.stack([L + j * dx, T - (i + 1) * dy, L + (j + 1) * dx, T - i * dy], 1))
    bounds = np.stack(tb, axis=1).reshape(n * rep, 4)
    zero = (xs == 0).all(axis=-1).any(axis=(1, 2))
    if zero.any():  # DN 0 in every band = nodata; report and drop, never silently
        warnings.warn(f"{int(zero.sum())} EuroSAT MS tiles hold nodata pixels and are dropped",
                      stacklevel=2)
    keep = ~zero
    y = np.repeat(y_img, rep)
    meta = {
        "source": f"EuroSAT MS ({ds.name}, hash {ds.hash}), L1C TOA reflectance = DN/10000",
        "task": task, "patch_size": ps_, "tiles_per_image": rep, "images": int(n),
        "block_size_m": float(block_size_m), "n_blocks": int(len(np.unique(blocks_img))),
        "seed": int(seed), "dropped_nodata": int(zero.sum()),
        "file": list(np.repeat(np.asarray(ds.files, dtype=object), rep)[keep]),
    }
    if task == "binary":
        meta["vegetation_classes"] = list(EUROSAT_VEGETATION_CLASSES)
    return PatchSet(x=xs[keep], y=y[keep], classes=classes, bands=bands,
                    crs=np.repeat(geo["crs"].to_numpy().astype(object), rep)[keep],
                    bounds=bounds[keep], split=np.repeat(split_img, rep)[keep],
                    block=np.repeat(blocks_img, rep)[keep], meta=meta)


# --------------------------------------------------------------------------- BigEarthNet
def bigearthnet_example_dir(cache: str | os.PathLike | None = None) -> Path:
    """Unpack the six real BigEarthNet-S2 L2A example patches shipped in the PyPI wheel.

    The archive is ``bigearthnet_common/BigEarthNet-S2-Example.tar.bz2`` inside
    ``bigearthnet-common==2.8.0``; it is fetched with ``pip download`` into the cache dir.

    Raises:
        FileNotFoundError: the wheel cannot be fetched (no network to PyPI).

    """
    import subprocess
    import sys
    import tarfile
    import zipfile

    from lcc_utils.paths import cache_dir

    root = Path(cache) if cache else cache_dir() / "bigearthnet-example"
    done = root / "patches"
    if done.is_dir() and any(done.iterdir()):
        return done
    root.mkdir(parents=True, exist_ok=True)
    wheels = sorted(root.glob("bigearthnet_common-2.8.0-*.whl"))
    if not wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "bigearthnet-common==2.8.0", "-d", str(root)],
                           capture_output=True, text=True, timeout=300)
        wheels = sorted(root.glob("bigearthnet_common-2.8.0-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"cannot fetch bigearthnet-common==2.8.0 from PyPI: "
                                    f"{r.stderr.strip()[-300:]}")
    tmp = root / "patches.tmp"
    tmp.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as z:
        name = next(n for n in z.namelist() if n.endswith("BigEarthNet-S2-Example.tar.bz2"))
        z.extract(name, root)
    with tarfile.open(root / name, "r:bz2") as tf:
        tf.extractall(tmp, filter="data")
    os.replace(tmp, done)
    return done


def bigearthnet_patches(folder: str | os.PathLike) -> list[Path]:
    """BigEarthNet patch folders (each holding ``<name>_B02.tif`` ...) below ``folder``."""
    return sorted({p.parent for p in Path(folder).rglob("*_B02.tif")})


# --------------------------------------------------------------------------- provenance
def product_hash(product: L2AProduct) -> str:
    """Short hash identifying a product: its band/SCL file names and sizes + metadata bytes.

    Cheap on purpose (a full tile is ~1 GB): file names and sizes change with any
    reprocessing, and the STAC item / ``MTD_MSIL2A.xml`` are hashed in full.
    """
    h = hashlib.sha256()
    files = sorted({p for p, _ in product.sources.values()}
                   | ({product.scl[0]} if product.scl else set()))
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}|".encode())
    root = product.path if product.path.is_dir() else product.path.parent
    for meta in sorted(root.glob("*.json")) + sorted(root.glob("MTD_MSIL2A.xml")):
        h.update(meta.read_bytes())
    h.update("|".join(product.bands).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- figures
def _stretch(rgb: np.ndarray, valid: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    """Per-channel percentile stretch of (H, W, 3) to [0, 1] using valid pixels only."""
    out = np.zeros_like(rgb, dtype=np.float32)
    for k in range(3):
        v = rgb[..., k][valid] if valid.any() else rgb[..., k].ravel()
        a, b = np.percentile(v, [lo, hi]) if v.size else (0.0, 1.0)
        out[..., k] = np.clip((rgb[..., k] - a) / max(b - a, 1e-6), 0, 1)
    return out


def plot_composites(wd: WindowData, bands: Sequence[str], masked_color: str = "#ff00ff") -> Any:
    """True-colour (B04, B03, B02) and false-colour (B08, B04, B03) composites of a window.

    Masked pixels (SCL clouds, cirrus, shadows, nodata) are painted ``masked_color``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    bands = [normalize_band_name(b) for b in bands]
    valid = ~wd.mask
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    for ax, combo, title in zip(axes, (("B04", "B03", "B02"), ("B08", "B04", "B03")),
                                ("true colour (B4, B3, B2)", "false colour (B8, B4, B3)"),
                                strict=True):
        if not all(b in bands for b in combo):
            ax.set_axis_off()
            ax.set_title(f"{title}: bands missing")
            continue
        img = _stretch(np.stack([wd.x[bands.index(b)] for b in combo], -1), valid)
        img[wd.mask] = to_rgb(masked_color)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    fig.suptitle("10 m aligned reflectance (2-98 % stretch); magenta = masked by SCL")
    fig.tight_layout()
    return fig


def plot_scl(wd: WindowData) -> Any:
    """The SCL classes of a window, with a legend of the classes present (masked ones marked)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if wd.scl is None:
        raise ValueError("this product has no SCL layer")
    colors = ["#000000", "#ff0000", "#2f2f2f", "#643200", "#00a000", "#ffe65a", "#0000ff",
              "#808080", "#c0c0c0", "#ffffff", "#64c8ff", "#ff96ff"]
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.set_facecolor("#dddddd")
    ax.imshow(wd.scl, cmap=ListedColormap(colors), vmin=-0.5, vmax=11.5, interpolation="nearest")
    present, counts = np.unique(wd.scl, return_counts=True)
    share = counts / counts.sum()
    handles = [Patch(facecolor=colors[k], edgecolor="k",
                     label=f"{k} {SCL_CLASSES.get(int(k), '?')} ({100 * s:.2f} %)"
                     + (" [masked]" if k in SCL_MASK_CLASSES else ""))
               for k, s in zip(present, share, strict=True) if k < len(colors)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title("Scene Classification Layer (nearest to 10 m)")
    ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_patches(ps: PatchSet, n_per_class: int = 6, seed: int = 0) -> Any:
    """A grid of random true-colour patches per class (rows), titled with their split."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    present = [k for k in range(len(ps.classes)) if (ps.y == k).any()]
    if not present:
        raise ValueError("the patch set is empty")
    rgb_idx = [list(ps.bands).index(b) for b in ("B04", "B03", "B02")]
    fig, axes = plt.subplots(len(present), n_per_class,
                             figsize=(1.6 * n_per_class, 1.8 * len(present)), squeeze=False)
    for row, k in enumerate(present):
        idx = np.flatnonzero(ps.y == k)
        pick = rng.choice(idx, size=min(n_per_class, len(idx)), replace=False)
        for col in range(n_per_class):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(pick):
                continue
            img = ps.x[pick[col]][..., rgb_idx]
            ax.imshow(np.clip(img / max(np.percentile(img, 98), 1e-6), 0, 1))
            ax.set_title(f"{ps.classes[k]}\n{ps.split[pick[col]]}" if col == 0
                         else ps.split[pick[col]], fontsize=8)
    fig.suptitle(f"{len(ps)} patches of {ps.x.shape[1]}x{ps.x.shape[2]} px (true colour)")
    fig.tight_layout()
    return fig
