"""Figures of paper B's preprocessing: composites, the SCL layer, sample patches.

Each ``plot_*`` returns a matplotlib Figure; saving is ``Run.save_figure`` (through ``lcc_utils.plots.save_figure``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lcc_utils.constants import SCL_CLASSES, SCL_MASK_CLASSES
from lcc_utils.sentinel2.patches import PatchSet
from lcc_utils.sentinel2.windows import WindowData
from lcc_utils.spectral import normalize_band_name


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
