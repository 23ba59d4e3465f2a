"""Figures: ``plot_*`` functions return a Figure; :func:`save_figure` is the one place that writes.

Per-run figures land in the run folder; the study's published figures in
``figures/<stage>_<name>.png`` and ``.pdf`` (see :meth:`lcc_utils.runs.Run.save_figure`).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .paths import atomic_path


def show(fig: Figure, dpi: int = 100) -> object:
    """The figure as an inline PNG for a notebook cell (a bare ``Figure`` shows only its repr).

    Returns an ``IPython.display.Image`` holding the PNG bytes: no file path is stored in
    the executed notebook. Pyplot figures are closed so they are not shown twice.
    """
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)
    return Image(data=buf.getvalue(), format="png")


def save_figure(
    fig: Figure, stem: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Write ``fig`` as ``<stem>.<fmt>`` for each format (atomically); return the paths.

    The one function that writes figure files. Run folders get per-run figures through
    :meth:`lcc_utils.runs.Run.save_figure`, which also publishes the study's figures to
    ``figures/<stage>_<name>`` during ``make study``. Files carry no creation date or
    software tag, so reruns produce identical files.
    """
    paths = []
    for fmt in formats:
        p = Path(f"{stem}.{fmt}")
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else None
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata=meta, format=fmt)
        paths.append(p)
    return paths


def plot_class_counts(counts: pd.DataFrame, title: str = "") -> Figure:
    """Bar plot of images per class (a DataFrame with ``class`` and ``images``)."""
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(counts) + 1.2))
    sns.barplot(data=counts, y="class", x="images", ax=ax, color="#4c72b0")
    for i, v in enumerate(counts["images"]):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8)
    ax.set(title=title, xlabel="images", ylabel="")
    fig.tight_layout()
    return fig


def plot_sample_grid(images: list[list[np.ndarray]], row_labels: list[str], title: str = "") -> Figure:
    """Grid of images: one row per class, each cell an (H, W, 3) float or uint8 image."""
    rows, cols = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(rows, cols, figsize=(0.8 * cols + 1.6, 0.8 * rows), squeeze=False)
    for r, row in enumerate(images):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def band_unit(bands: list[str]) -> str:
    """The y label of band values: reflectance for Sentinel-2 bands (B01..B12, B8A), else 8-bit values / 255."""
    import re

    if bands and all(re.fullmatch(r"B(\d\d|8A)", str(b)) for b in bands):
        return "reflectance (DN / 10000)"
    return "pixel value / 255 (8-bit RGB)"


def plot_band_statistics(stats: pd.DataFrame, title: str = "") -> Figure:
    """Mean +- std per band (a DataFrame from :func:`lcc_utils.data.band_statistics`), in the bands' unit."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.errorbar(stats["band"], stats["mean"], yerr=stats["std"], fmt="o-", capsize=3)
    ax.set(title=title, xlabel="band", ylabel=band_unit(list(stats["band"])))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
