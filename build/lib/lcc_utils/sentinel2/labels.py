"""Paper B's binary labels on EuroSAT MS: which land-use classes stand for vegetation.

Paper B separates **vegetation from non-vegetation** (bare soil, built-up, water) on L2A
surface reflectance, with its own hand labels. EuroSAT labels whole 64x64 scenes by **land
use**, so our binary task is always a grouping of its ten classes: a proxy for paper B's
labels, never the same thing. Each grouping is a named label definition
(:data:`BINARY_LABELS`, chosen by the ``binary_labels`` parameter of notebooks 02, 06 and 07):

* ``landuse`` (the default; the study's first grouping, kept so committed runs keep their
  meaning and folders): AnnualCrop, Forest, HerbaceousVegetation, Pasture, PermanentCrop are
  vegetation, Highway, Industrial, Residential, River, SeaLake are not. Decided from the class
  **names**; the split is stratified on the binary label. Its weak points: AnnualCrop holds
  bare fields (so bare soil is taught as "vegetation") and there is no soil class at all.
* ``ndvi_sides`` (closer to paper B's vegetation / non-vegetation): each class's side is
  decided from the **NDVI distribution of its training patches** (:func:`ndvi_sides`), not
  from its name; a class whose patches straddle the cut is **left out** (its images are
  dropped), as a mix of vegetated and bare patches would be label noise on either side. The
  split is stratified on the ten source classes (the 10-class task's split), so the side
  decision, made on its training split, does not depend on the sides it decides.

NDVI here is :func:`lcc_utils.baselines.patch_ndvi` (the mean of per-pixel NDVI) of the patch
set's own reflectance: for EuroSAT MS that is **L1C top-of-atmosphere** reflectance (DN /
10000), the same definition as the NDVI threshold baseline and the NDVI error bins of
notebook 06 (:data:`NDVI_REFLECTANCE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lcc_utils.constants import EUROSAT_VEGETATION_CLASSES

#: Reflectance the patch NDVI of EuroSAT MS patch sets is computed on (the side rule, the NDVI
#: threshold baseline and the NDVI error bins all use it). Paper B's NDVI values (its
#: transitional range 0.15-0.25) are on L2A surface reflectance; see README ("NDVI").
NDVI_REFLECTANCE = "L1C top-of-atmosphere reflectance (DN / 10000)"
#: Side of a class. ``LEFT_OUT``: its images are dropped from the binary task.
VEGETATION, NON_VEGETATION, LEFT_OUT = "vegetation", "non_vegetation", "left out"
#: HARD CHOICE: the NDVI cut of the side rule = the top of paper B's transitional range
#: 0.15-0.25 ("errors concentrate at NDVI 0.15-0.25"): above it a patch is vegetated in paper
#: B's sense. Paper B's range is surface-reflectance NDVI; we apply it to L1C TOA NDVI, which
#: reads lower than surface NDVI over vegetation, so this cut is if anything strict on vegetation.
NDVI_SIDE_CUT = 0.25
#: HARD CHOICE: a class is vegetation when at least this share of its training patches has
#: NDVI >= :data:`NDVI_SIDE_CUT`. Three quarters, not a majority: a class with more than a quarter
#: of bare patches (AnnualCrop's bare fields) would teach the model that bare ground is
#: vegetation, the very error the desert tile shows.
VEGETATION_SHARE = 0.75
#: HARD CHOICE: a class is non-vegetation when at least this share of its training patches has
#: NDVI < the cut (a majority: paper B's non-vegetation is itself a mix of bare soil, built-up
#: and water, so a built-up class with some green patches still belongs to it). The two shares
#: are not symmetric on purpose (see :data:`VEGETATION_SHARE`). Between the two: left out.
NON_VEGETATION_SHARE = 0.5


@dataclass(frozen=True)
class BinaryLabels:
    """One definition of the binary vegetation task on EuroSAT's ten classes.

    Attributes:
        name: Registry key (the ``binary_labels`` parameter).
        rule: ``"names"`` (a fixed list of vegetation classes) or ``"ndvi"`` (:func:`ndvi_sides`
            on the training split).
        description: One line for tables and notebooks.
        vegetation: The vegetation classes of a ``"names"`` rule (all others non-vegetation).
        stratify: What the spatial split is stratified on: ``"binary"`` (the binary label) or
            ``"source"`` (the ten EuroSAT classes).

    """

    name: str
    rule: str
    description: str
    vegetation: tuple[str, ...] = ()
    stratify: str = "binary"


#: Label definitions of the binary task; the default first (it is ``runs.ADDED_PARAMS``'s value).
BINARY_LABELS: dict[str, BinaryLabels] = {
    "landuse": BinaryLabels(
        "landuse", "names",
        "EuroSAT land-use classes grouped by name: AnnualCrop, Forest, HerbaceousVegetation, Pasture, "
        "PermanentCrop = vegetation; Highway, Industrial, Residential, River, SeaLake = non-vegetation",
        vegetation=EUROSAT_VEGETATION_CLASSES, stratify="binary"),
    "ndvi_sides": BinaryLabels(
        "ndvi_sides", "ndvi",
        f"each class's side from its training patches' NDVI: vegetation if >= {VEGETATION_SHARE:.0%} have "
        f"NDVI >= {NDVI_SIDE_CUT}, non-vegetation if >= {NON_VEGETATION_SHARE:.0%} are below, else left out",
        stratify="source"),
}
#: The label definition committed runs were made with (``runs.ADDED_PARAMS['binary_labels']``).
DEFAULT_BINARY_LABELS = "landuse"


def get_binary_labels(name: str) -> BinaryLabels:
    """The label definition ``name``; a ValueError lists the choices."""
    if name not in BINARY_LABELS:
        raise ValueError(f"unknown binary labels {name!r}; choose one of: {', '.join(BINARY_LABELS)}")
    return BINARY_LABELS[name]


def class_ndvi_table(ndvi: np.ndarray, source_class: Sequence[str], split: Sequence[str],
                     classes: Sequence[str], cut: float = NDVI_SIDE_CUT) -> pd.DataFrame:
    """NDVI distribution of each class's **training** patches (val / test patches are never read).

    Returns one row per class of ``classes``: ``n_train``, quantiles ``q10``, ``q25``,
    ``median``, ``q75``, ``q90`` and ``share_at_or_above_cut`` (of NDVI >= ``cut``).
    """
    v, c, s = np.asarray(ndvi, float), np.asarray(source_class).astype(str), np.asarray(split).astype(str)
    if not len(v) == len(c) == len(s):
        raise ValueError(f"ndvi ({len(v)}), source_class ({len(c)}) and split ({len(s)}) differ in length")
    rows = []
    for name in classes:
        x = v[(c == name) & (s == "train")]
        if len(x) == 0:
            raise ValueError(f"class {name!r} has no training patch: its side cannot be decided")
        q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
        rows.append({"class": name, "n_train": len(x), "q10": q[0], "q25": q[1], "median": q[2], "q75": q[3],
                     "q90": q[4], "share_at_or_above_cut": float(np.mean(x >= cut))})
    out = pd.DataFrame(rows)
    out.attrs["cut"] = cut
    return out


def ndvi_side(share_at_or_above_cut: float, vegetation_share: float = VEGETATION_SHARE,
              non_vegetation_share: float = NON_VEGETATION_SHARE) -> str:
    """The side rule for one class, from the share of its training patches with NDVI >= the cut.

    ``vegetation`` if that share is >= ``vegetation_share``; ``non_vegetation`` if the share
    below the cut is >= ``non_vegetation_share``; else :data:`LEFT_OUT`.
    """
    if not 0.0 <= share_at_or_above_cut <= 1.0:
        raise ValueError(f"share_at_or_above_cut={share_at_or_above_cut} is not a share in [0, 1]")
    if share_at_or_above_cut >= vegetation_share:
        return VEGETATION
    if 1.0 - share_at_or_above_cut >= non_vegetation_share:
        return NON_VEGETATION
    return LEFT_OUT


def ndvi_sides(table: pd.DataFrame, vegetation_share: float = VEGETATION_SHARE,
               non_vegetation_share: float = NON_VEGETATION_SHARE) -> dict[str, str]:
    """Side of every class of a :func:`class_ndvi_table` (:func:`ndvi_side` per row)."""
    if vegetation_share < 1.0 - non_vegetation_share:
        raise ValueError(f"vegetation_share={vegetation_share} and non_vegetation_share={non_vegetation_share} "
                         "overlap: a class could be on both sides")
    return {r["class"]: ndvi_side(r["share_at_or_above_cut"], vegetation_share, non_vegetation_share)
            for r in table.to_dict("records")}


def class_sides(labels: BinaryLabels | str, classes: Sequence[str],
                table: pd.DataFrame | None = None) -> dict[str, str]:
    """Side of each of ``classes`` under ``labels`` (the NDVI rule reads ``table``)."""
    lab = get_binary_labels(labels) if isinstance(labels, str) else labels
    if lab.rule == "names":
        unknown = [c for c in lab.vegetation if c not in classes]
        if unknown:
            raise ValueError(f"vegetation classes {unknown} of labels {lab.name!r} are not in the dataset's "
                             f"classes {list(classes)}")
        return {c: VEGETATION if c in lab.vegetation else NON_VEGETATION for c in classes}
    if table is None:
        raise ValueError(f"labels {lab.name!r} decide sides from NDVI: give the class_ndvi_table")
    sides = ndvi_sides(table)
    missing = [c for c in classes if c not in sides]
    if missing:
        raise ValueError(f"class_ndvi_table has no row for {missing}")
    sides = {c: sides[c] for c in classes}
    for side in (VEGETATION, NON_VEGETATION):
        if side not in sides.values():
            raise ValueError(f"labels {lab.name!r}: no class is {side} ({sides}); the binary task needs both")
    return sides


def plot_class_ndvi(table: pd.DataFrame, sides: dict[str, str] | None = None, title: str | None = None) -> Any:
    """Each class's training NDVI (10-90 % whisker, 25-75 % box, median tick), coloured by side."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {VEGETATION: "#2ca25f", NON_VEGETATION: "#d95f0e", LEFT_OUT: "#999999", None: "#3182bd"}
    t = table.sort_values("median").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(t) + 1.6))
    for i, r in t.iterrows():
        col = colors[(sides or {}).get(r["class"])]
        ax.plot([r["q10"], r["q90"]], [i, i], color=col, lw=1.2)
        ax.barh(i, r["q75"] - r["q25"], left=r["q25"], height=0.5, color=col, alpha=0.6)
        ax.plot([r["median"]] * 2, [i - 0.25, i + 0.25], color="k", lw=1.5)
        ax.text(1.0, i, f"{100 * r['share_at_or_above_cut']:.0f} %", va="center", ha="right", fontsize=8)
    cut = table.attrs.get("cut", NDVI_SIDE_CUT)
    ax.axvspan(0.15, 0.25, color="#cccccc", alpha=0.4, zorder=0)
    ax.axvline(cut, color="k", ls="--", lw=1)
    ax.set_yticks(range(len(t)), [f"{c} (n={n})" for c, n in zip(t["class"], t["n_train"], strict=True)])
    ax.set_xlim(-0.6, 1.0)
    ax.set_xlabel("patch-mean NDVI of the training patches (L1C TOA)")
    handles = [Patch(color=colors[s], label=s) for s in (VEGETATION, NON_VEGETATION, LEFT_OUT)] if sides else []
    handles.append(Patch(color="#cccccc", label="paper B's transitional NDVI 0.15-0.25 (surface refl.)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")  # greenest classes on top: their low-NDVI side is empty
    ax.set_title(title or f"NDVI per class, training split; right: share >= {cut:g}")
    fig.tight_layout()
    return fig
