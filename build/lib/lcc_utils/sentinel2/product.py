"""A Sentinel-2 L2A product opened on its 10 m grid: layouts, reflectance offsets, provenance.

Four layouts are read: a sentinel-cogs folder (``B02.tif`` ... + STAC item), a ``.SAFE``
folder (``GRANULE/*/IMG_DATA/R10m|R20m|R60m`` + ``MTD_MSIL2A.xml``), a multi-band GeoTIFF
whose band descriptions name the bands, and a BigEarthNet patch folder. Each yields an
:class:`L2AProduct`: where every band lives and how its digital numbers become surface
reflectance, ``(DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE``. Opening reads nothing
beyond headers and metadata; pixels are read window by window (:mod:`.windows`), and
:func:`product_hash` reads each band file once per machine to hash its content.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rasterio
import rasterio.transform
from affine import Affine
from rasterio.crs import CRS

from lcc_utils.constants import (
    PAPER_B_BANDS,
    S2_BAND_RESOLUTION,
    S2_BASELINE_0400_DATE,
    S2_BOA_OFFSET_SINCE_BASELINE_0400,
    S2_ESA_BAND_ORDER,
    S2_QUANTIFICATION_VALUE,
)
from lcc_utils.fingerprints import content_digests
from lcc_utils.spectral import check_bands, normalize_band_name

#: First day products were generated with processing baseline 04.00 (BOA offset -1000).
BASELINE_0400_DATE = _dt.date.fromisoformat(S2_BASELINE_0400_DATE)
#: ESA band order of ``band_id`` in ``MTD_MSIL2A.xml`` (B8A 9th; not the EuroSAT file order).
_ESA_BAND_ORDER = S2_ESA_BAND_ORDER
#: Product layouts :func:`open_l2a` recognises.
LAYOUTS: tuple[str, ...] = ("cogs", "safe", "geotiff", "bigearthnet")
#: Bands that stand in for a band a product lacks, asked for by name. Only one, and a choice:
#: a product without B08 (10 m broad NIR, 785-900 nm) reads B8A (narrow NIR, 855-875 nm) in
#: its place instead of being refused. B8A is the NIR band of the 20 m and 60 m products (ESA's
#: Sen2Cor computes its own scene-classification NDVI from B8A) and lies on the same vegetation
#: NIR plateau, so NDVI and the models' NIR input keep their meaning. A 60 m-only L2A SAFE
#: (R60m holds B8A, never B08) or a product cut to its 20 m bands is such a product.
BAND_SUBSTITUTES: dict[str, str] = {"B08": "B8A"}


class MissingBandError(FileNotFoundError, ValueError):
    """A band asked for is not in the product (a FileNotFoundError and a ValueError alike).

    The message names the product, the missing band(s), the bands the product has and what to
    pass instead.
    """


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
    #: Bands read in place of a requested one the product lacks (``{"B08": "B8A"}``; see
    #: :data:`BAND_SUBSTITUTES`): ``bands`` holds the band actually read.
    band_substitutions: dict[str, str] = field(default_factory=dict)

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
            "band_substitutions": dict(self.band_substitutions),
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


_SAFE_BAND_FILE = re.compile(r"_(B\d{2}|B8A)_\d+m\.(jp2|tif)$", re.IGNORECASE)


def _available_bands(path: Path, layout: str) -> list[str]:
    """The spectral bands a product holds, in ESA order (empty: the layout cannot tell)."""
    if layout == "safe":
        names = [m.group(1) for f in sorted(path.glob("GRANULE/*/IMG_DATA/R*m/*"))
                 if (m := _SAFE_BAND_FILE.search(f.name))]
    elif layout == "geotiff":
        with rasterio.open(path) as src:
            names = [d for d in src.descriptions if d]
    elif layout == "cogs":
        names = [f.stem for f in path.glob("*.tif*")]
    else:  # bigearthnet: <name>_B02.tif
        names = [f.stem.rsplit("_", 1)[-1] for f in path.glob("*_*.tif")]
    found = set()
    for n in names:
        try:
            b = normalize_band_name(n)
        except ValueError:
            continue
        if b != "SCL":
            found.add(b)
    return [b for b in _ESA_BAND_ORDER if b in found]


def resolve_bands(bands: Sequence[str], available: Sequence[str], where: str = "the product",
                  ) -> tuple[tuple[str, ...], dict[str, str]]:
    """The bands to read for ``bands`` from a product holding ``available``, and the substitutions made.

    A requested band the product lacks is read from its stand-in (:data:`BAND_SUBSTITUTES`: B8A
    for B08) when the product has that and it is not requested already; the band keeps its place
    in the band order. Any other missing band is an error.

    Raises:
        MissingBandError: a band is missing and has no stand-in in the product; the message names
            ``where``, the band, the product's bands and the band list to pass instead.

    """
    bands = check_bands(bands)
    if not available:
        return bands, {}
    have = set(available)
    subs = {b: alt for b in bands if b not in have
            for alt in [BAND_SUBSTITUTES.get(b)] if alt in have and alt not in bands}
    resolved = tuple(subs.get(b, b) for b in bands)
    missing = [b for b in resolved if b not in have]
    if missing:
        instead = [b for b in resolved if b in have]
        stand_in = "".join(f" ({b}'s stand-in {BAND_SUBSTITUTES[b]} is "
                           f"{'requested already' if BAND_SUBSTITUTES[b] in have else 'missing too'})"
                           for b in missing if b in BAND_SUBSTITUTES)
        raise MissingBandError(
            f"{where}: {'band' if len(missing) == 1 else 'bands'} {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not in this product{stand_in}; it has "
            f"{', '.join(available)}. Pass bands it has instead, e.g. bands={instead} "
            f"(papermill: -y '{json.dumps({'bands': instead})}')")
    return resolved, subs


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
    """Open a Sentinel-2 L2A product on its grid (lazily: no pixel is read here).

    The grid is the finest selected band's: 10 m on a full-resolution product, 60 m on a 60 m-only
    SAFE; ``resolution`` gives it.

    Layouts: a sentinel-cogs folder (``B02.tif`` ... ``SCL.tif`` + STAC item ``*.json``),
    a ``.SAFE`` folder (``GRANULE/*/IMG_DATA/R10m|R20m|R60m/*_B02_10m.jp2`` +
    ``MTD_MSIL2A.xml``), a multi-band GeoTIFF whose band descriptions name the bands
    (``B02``..., optional ``SCL``), or a BigEarthNet patch folder (``<name>_B02.tif``).

    Bands are asked for by name. A product without B08 reads B8A in its place (a 60 m-only
    SAFE, whose R60m folder holds B8A and no B08): :func:`resolve_bands`; ``bands`` of the
    result holds the band read and ``band_substitutions`` records the swap.

    The reflectance offset comes from the metadata when present (``BOA_ADD_OFFSET``;
    else the processing baseline); otherwise it is inferred from the acquisition date
    and ``offset_source`` says so. ``boa_offset``/``quantification_value`` override both.

    Raises:
        ValueError: unknown band, bands whose CRS or extent cannot be aligned, no way to
            know the offset.
        FileNotFoundError: the product or a band file is missing.
        MissingBandError: a band is not in the product and has no stand-in there (both a
            ValueError and a FileNotFoundError).

    """
    path = Path(path)
    bands = check_bands(bands)
    layout = _detect_layout(path)
    bands, substitutions = resolve_bands(bands, _available_bands(path, layout), str(path))
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
    # The CRS most bands share is the product's: a band in another CRS (e.g. one reprojected
    # by hand) is the odd one out and is named, even when it is the finest band.
    votes = Counter(str(info[b][0]) for b in bands)
    major = max(votes, key=lambda c: (votes[c], -min(bands.index(b) for b in bands if str(info[b][0]) == c)))
    odd = [b for b in bands if str(info[b][0]) != major]
    if odd:
        raise ValueError("band(s) " + ", ".join(f"{b} ({sources[b][0]}: CRS {info[b][0]})" for b in odd)
                         + f" differ from the CRS {major} of the other {votes[major]} band(s); "
                         "bands in different CRS cannot be aligned")
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
        processing_baseline=baseline, nodata=nodata, band_substitutions=substitutions,
    )


# --------------------------------------------------------------------------- provenance
def product_hash(product: L2AProduct) -> str:
    """Short content hash of a product: its band/SCL files' bytes, metadata bytes and band list.

    The band and SCL files enter by (path relative to the product, sha256 of their bytes)
    through the fingerprint index of :mod:`lcc_utils.fingerprints`: the first call reads
    every file (~2 s per GB), later calls only stat them and re-hash what changed, so a
    same-size in-place edit of a band changes the hash while a copy of the product on
    another machine keeps it. The STAC item / ``MTD_MSIL2A.xml`` are hashed in full.
    """
    root = product.path if product.path.is_dir() else product.path.parent
    files = sorted({p for p, _ in product.sources.values()}
                   | ({product.scl[0]} if product.scl else set()))
    rels = [os.path.relpath(f, root) for f in files]
    digests = content_digests(root, rels)
    h = hashlib.sha256()
    for rel in rels:
        h.update(f"{Path(rel).as_posix()}:{digests[rel]}|".encode())
    for meta in sorted(root.glob("*.json")) + sorted(root.glob("MTD_MSIL2A.xml")):
        h.update(meta.read_bytes())
    h.update("|".join(product.bands).encode())
    return h.hexdigest()[:16]


def preprocessing_data_hash(product: L2AProduct, eurosat_task: str = "none",
                            data_dir: str | os.PathLike | None = None) -> str:
    """The data identity of a notebook-02 run: its scene and, when it cuts them, the EuroSAT MS files.

    02 builds paper B's EuroSAT MS patch sets too (``eurosat_task`` binary, multiclass or both):
    other EuroSAT MS files must give another run, not the committed one. Without EuroSAT patch
    sets it is :func:`product_hash` alone; with them a hash of the product hash and EuroSAT MS's
    content hash (:func:`lcc_utils.data.current_hash`; a missing dataset is fetched first, or its
    error says how).
    """
    from lcc_utils import data

    ph = product_hash(product)
    if eurosat_task == "none":
        return ph
    ms = data.current_hash("eurosat_ms", data_dir)
    if ms is None:
        data.fetch_dataset("eurosat_ms", data_dir)
        ms = data.current_hash("eurosat_ms", data_dir)
    return hashlib.sha256(f"{ph}|eurosat_ms:{ms}".encode()).hexdigest()[:16]
