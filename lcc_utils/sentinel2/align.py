"""The aligned product on disk: one float32 GeoTIFF of 10 m cloud-masked reflectance.

:func:`write_aligned` writes it window by window; :func:`scl_mask_share` (native SCL)
and :func:`raster_masked_fraction` (the written file) count the masked share two
independent ways, so a run can show that the mask survived resampling and writing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from lcc_utils.constants import SCL_CLASSES, SCL_MASK_CLASSES
from lcc_utils.paths import atomic_path, data_relative
from lcc_utils.sentinel2.product import L2AProduct
from lcc_utils.sentinel2.windows import iter_windows

#: Nodata value of the float32 reflectance GeoTIFFs written by :func:`write_aligned`.
ALIGNED_NODATA = -9999.0


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
    profile = {
        "driver": "GTiff", "dtype": "float32", "count": len(product.bands),
        "width": product.width, "height": product.height, "crs": product.crs,
        "transform": product.transform, "nodata": ALIGNED_NODATA, "compress": "deflate",
        # floating-point predictor: DEFLATE on reflectance compresses far better with it
        "predictor": 3,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }
    counts: dict[str, Any] = {}
    with atomic_path(out_path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            _write_aligned_bands(product, dst, window_size, progress, counts)
        n, n_mask, n_nod, n_scl, scl_counts = (counts[k] for k in ("n", "mask", "nod", "scl", "scl_counts"))
        # internal overviews (x2, x4, ... down to ~256 px, averaged; nodata stays out of the means)
        # so a GIS opens the whole scene fast; written before the rename, so never half-built
        factors = [2 ** k for k in range(1, 12) if min(product.width, product.height) / 2 ** k >= 256]
        if factors:
            with rasterio.open(tmp, "r+") as dst:
                dst.build_overviews(factors, Resampling.average)
                dst.update_tags(ns="rio_overview", resampling="average")
    return {
        "path": str(out_path), "width": product.width, "height": product.height,
        "bands": list(product.bands), "pixels": n, "masked_pixels": n_mask,
        "masked_fraction": n_mask / n, "scl_masked_fraction": n_scl / n if product.scl else None,
        "nodata_fraction": n_nod / n, "overviews": factors,
        "scl_pixels": {SCL_CLASSES.get(k, str(k)): int(v) for k, v in enumerate(scl_counts) if v},
    }


def _write_aligned_bands(product: L2AProduct, dst: Any, window_size: int, progress: bool,
                         counts: dict[str, Any]) -> None:
    n = n_mask = n_scl = n_nod = 0
    scl_counts = np.zeros(256, np.int64)
    dst.descriptions = product.bands
    dst.update_tags(BOA_ADD_OFFSET=0, QUANTIFICATION_VALUE=1,
                    SOURCE=data_relative(product.path), SOURCE_OFFSET=product.offset_source,
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
    counts.update(n=n, mask=n_mask, nod=n_nod, scl=n_scl, scl_counts=scl_counts)


def raster_masked_fraction(path: str | os.PathLike) -> float:
    """Share of nodata pixels in band 1 of a GeoTIFF, read back block by block."""
    n = m = 0
    with rasterio.open(path) as src:
        for _, win in src.block_windows(1):
            a = src.read(1, window=win, masked=True)
            n += a.size
            m += int(np.ma.getmaskarray(a).sum())
    return m / n

