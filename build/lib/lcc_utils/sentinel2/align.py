"""The aligned product on disk: one float32 GeoTIFF of cloud-masked reflectance on the product's grid.

The grid is the finest selected band's: 10 m on a full-resolution product, 60 m on a 60 m-only
SAFE (100 m on the 10x shrunk test tile). :func:`write_aligned` writes it window by window;
:func:`scl_mask_share` (native SCL) and :func:`raster_masked_fraction` (the written file) count
the masked share two independent ways, and :func:`check_aligned_mask` stops a run when they
differ, so a run shows that the mask survived resampling and writing.
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


class MaskCheckError(ValueError):
    """The aligned GeoTIFF's masked share differs from the share of SCL's masked classes."""


def check_aligned_mask(product: L2AProduct, aligned_path: str | os.PathLike,
                       report: dict[str, Any]) -> dict[str, Any]:
    """The self-check of an aligned product: its masked share equals SCL's, counted natively.

    The written file's nodata share (:func:`raster_masked_fraction`) must equal the share of
    SCL's masked classes on the native SCL raster (:func:`scl_mask_share`) within 1e-9. They
    agree when SCL reaches the grid by an integer refinement (20 m SCL on a 10 m grid, 60 m SCL
    on a 60 m grid) and no band holds nodata where SCL says the pixel is usable.

    Args:
        product: The product written.
        aligned_path: The GeoTIFF :func:`write_aligned` wrote.
        report: :func:`write_aligned`'s report for it.

    Returns:
        ``masked_fraction`` (file), ``scl_masked_share`` (native SCL), ``match`` (True),
        ``grid_m`` (the grid's pixel size) and ``scl_m`` (the native SCL's pixel size).

    Raises:
        MaskCheckError: the shares differ; the message names the product, the grid and what
            mismatched (SCL resampled onto a grid that is no integer refinement of it, band
            nodata outside the SCL mask, or the file read back differing from what was written).

    """
    file_share = raster_masked_fraction(aligned_path)
    scl_share = scl_mask_share(product)
    with rasterio.open(product.scl[0]) as src:
        scl_m = abs(src.transform.a)
    grid_m = product.resolution
    out = {"masked_fraction": file_share, "scl_masked_share": scl_share, "match": abs(file_share - scl_share) < 1e-9,
           "grid_m": grid_m, "scl_m": scl_m}
    if out["match"]:
        return out
    n = report["pixels"]
    on_grid = report["scl_masked_fraction"]
    why, todo = [], []
    if abs(on_grid - scl_share) >= 1e-9:
        why.append(f"resampled by nearest neighbour onto the {grid_m:g} m grid, the {scl_m:g} m SCL's masked classes "
                   f"cover {on_grid:.4%}" + ("" if scl_m % grid_m == 0 else
                                             f": the grid does not refine the {scl_m:g} m SCL by a whole factor"))
        todo.append(f"open the product on a grid that refines its SCL (bands of {scl_m:g} m or a whole fraction of it)")
    extra = round((report["masked_fraction"] - on_grid) * n)
    if extra:
        why.append(f"{extra} pixel(s) hold band nodata where SCL says the pixel is usable")
        todo.append("repair or replace the band files, or leave the band out")
    if abs(report["masked_fraction"] - file_share) >= 1e-9:
        why.append(f"the file reads back {file_share:.4%} masked, {report['masked_fraction']:.4%} were written")
        todo.append(f"delete {Path(aligned_path).name} and run again")
    raise MaskCheckError(
        f"{product.path.name}: the mask check of the aligned GeoTIFF {Path(aligned_path).name} failed on "
        f"the {grid_m:g} m grid: {file_share:.4%} of its pixels are masked, but SCL's masked classes "
        f"cover {scl_share:.4%} of the native {scl_m:g} m SCL ({'; '.join(why) or 'cause unknown'}). The "
        f"patches would rest on a mask the run cannot vouch for, so it stops: {'; '.join(todo) or 'check the product'}")


def raster_masked_fraction(path: str | os.PathLike) -> float:
    """Share of nodata pixels in band 1 of a GeoTIFF, read back block by block."""
    n = m = 0
    with rasterio.open(path) as src:
        for _, win in src.block_windows(1):
            a = src.read(1, window=win, masked=True)
            n += a.size
            m += int(np.ma.getmaskarray(a).sum())
    return m / n

