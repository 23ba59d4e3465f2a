"""Windowed reads of an L2A product: aligned 10 m reflectance, cloud mask and transform.

Every product is read through windows (:func:`iter_windows`), so a full 10980 x 10980
tile is never held whole in memory. :class:`ProductReader` keeps the band files open
(20 m bands and SCL reprojected onto the 10 m grid through a ``WarpedVRT``) for many
window reads, e.g. a scene classification (:func:`lcc_utils.mapping.classify_scene`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from lcc_utils.constants import SCL_MASK_CLASSES
from lcc_utils.sentinel2.product import L2AProduct

from ..progress import tqdm


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


class ProductReader:
    """Reads windows of a product, keeping its files open between reads.

    Band files already on the 10 m grid are read directly; the others (20 m bands, SCL)
    through a ``WarpedVRT`` onto the grid: bilinear for reflectance, nearest for SCL
    codes. Use it as a context manager (``with ProductReader(p) as r: r.read(win)``) so
    the files are closed.
    """

    def __init__(self, product: L2AProduct):
        self.product = product
        self._files: dict[Path, Any] = {}
        self._vrts: dict[tuple[Path, str], Any] = {}

    def _get(self, path: Path, resampling: Resampling, nodata: float | None):
        key = (path, resampling.name)
        if key not in self._vrts:
            if path not in self._files:
                self._files[path] = rasterio.open(path)
            src = self._files[path]
            p = self.product
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
        """Reflectance, mask and SCL of one window of the 10 m grid (masked pixels hold 0)."""
        p = self.product
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
        """Close every file and VRT this reader opened."""
        for v in self._vrts.values():
            v.close()
        for f in self._files.values():
            f.close()

    def __enter__(self) -> ProductReader:
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
    with ProductReader(product) as reader:
        for win in tqdm(wins, desc="windows", disable=not progress, leave=False):
            yield reader.read(win)


def read_window(product: L2AProduct, window: Window | None = None) -> WindowData:
    """Read one window (default: the whole grid; only for small scenes and plots)."""
    window = window or Window(0, 0, product.width, product.height)
    with ProductReader(product) as reader:
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

