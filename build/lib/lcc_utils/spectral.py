"""Spectral bands and indices: Sentinel-2 band names and the one normalised difference.

Both papers' index computations go through :func:`normalized_difference`: the NDVI
screening of scene patches (:func:`lcc_utils.sentinel2.extract_patches`), the NDVI
threshold baseline and the RF / SVM index features (:mod:`lcc_utils.baselines`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from lcc_utils.constants import S2_BAND_RESOLUTION


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


def check_bands(bands: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of a list of spectral bands (no SCL, no duplicates, not empty).

    Raises:
        ValueError: a string instead of a list, an unknown band, SCL, duplicates or none.

    """
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


# --------------------------------------------------------------------------- indices
def normalized_difference(x: np.ndarray, bands: Sequence[str], a: str, b: str, axis: int = -1,
                          dtype: DTypeLike = np.float32, name: str | None = None) -> np.ndarray:
    """Per-pixel normalised difference ``(a - b) / (a + b)`` of two bands of ``x``.

    The one rule for an undefined index: where ``a + b <= 0`` the index is 0. A
    normalised difference compares two non-negative signals; with reflectance a
    non-positive sum only happens for nodata/masked pixels (0 in both bands) or for
    dark pixels pushed below 0 by the BOA offset, where the ratio is meaningless (it
    is unbounded as the sum nears 0 and flips sign below it), so 0, "no contrast",
    is the neutral value. On the data of the papers no usable pixel has
    ``NIR + red <= 0`` (EuroSAT MS holds unsigned DNs; on the L2A tile only masked
    pixels do), so the rule only decides what masked pixels hold.

    Args:
        x: Reflectance with the bands along ``axis`` (-1 for channels-last patches,
            0 for ``(C, H, W)`` windows).
        bands: Name of each band of ``x`` along ``axis`` (any spelling
            :func:`normalize_band_name` accepts).
        a: First band (e.g. ``"B08"``, NIR, for NDVI).
        b: Second band (e.g. ``"B04"``, red).
        axis: The band axis of ``x``.
        dtype: Floating type the index is computed and returned in. float32 (default)
            is exact to ~1e-7, far below the sensors' noise; the baselines ask for
            float64 so their features keep the precision they were fitted with.
        name: Name of the index in error messages (default ``"(a-b)/(a+b)"``).

    Returns:
        ``x`` without its band axis, in ``dtype``.

    Raises:
        ValueError: a band is missing from ``bands``, or ``bands`` does not match ``x``.

    """
    what = name or f"index ({a}-{b})/({a}+{b})"
    names = [normalize_band_name(n) for n in bands]
    ia, ib = (normalize_band_name(n) for n in (a, b))
    for band in (ia, ib):
        if band not in names:
            raise ValueError(f"{what} needs band {band}; bands are {names}")
    arr = np.asarray(x)
    if arr.shape[axis] != len(names):
        raise ValueError(f"x has {arr.shape[axis]} bands on axis {axis}, bands lists {len(names)}")
    # cast the two bands only (a float64 copy of a whole patch set would be ~200 MB)
    xa = np.take(arr, names.index(ia), axis=axis).astype(dtype, copy=False)
    xb = np.take(arr, names.index(ib), axis=axis).astype(dtype, copy=False)
    den = xa + xb
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (xa - xb) / np.where(den > 0, den, 1.0), 0.0).astype(dtype)


#: Near-infrared bands in order of preference: B08 (10 m, broad NIR, paper B's band), else
#: B8A (20 m, narrow NIR), which products carrying only 20/60 m bands (e.g. a 60 m-only L2A
#: SAFE) have. Both sit on the vegetation red-edge plateau, so NDVI from either is comparable.
NIR_BANDS: tuple[str, ...] = ("B08", "B8A")


def nir_band(bands: Sequence[str], where: str = "the input") -> str:
    """The NIR band to use among ``bands``: B08, else B8A; a ValueError naming ``where`` if neither."""
    names = [normalize_band_name(b) for b in bands]
    for b in NIR_BANDS:
        if b in names:
            return b
    raise ValueError(f"{where} has no near-infrared band ({' or '.join(NIR_BANDS)}); bands are {names}: "
                     "NDVI and the spectral features need one")


def ndvi(x: np.ndarray, bands: Sequence[str], axis: int = -1,
         dtype: DTypeLike = np.float32) -> np.ndarray:
    """NDVI = (NIR - red) / (NIR + red) from B08 (else B8A, :func:`nir_band`) and B04 of ``x``.

    ``axis`` is the band axis (-1 for channels-last patch sets, 0 for (C, H, W) windows).
    Pixels with NIR + red <= 0 get NDVI 0 (see :func:`normalized_difference`).
    """
    return normalized_difference(x, bands, nir_band(bands), "B04", axis=axis, dtype=dtype, name="ndvi")
