"""Train/validation/test splits: paper A's stratified split and the spatial (block) splits.

Paper A splits each dataset 80/20, stratified by class (:func:`get_split`, the
validation part carved from the training part). Paper B splits patches 70/15/15
into spatially disjoint sets: patches are grouped into square blocks
(:func:`spatial_blocks`) and whole blocks go to one part (:func:`spatial_split`),
so neighbouring, near-identical patches never sit on both sides. Every group split
goes through one splitter, :func:`group_split`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lcc_utils.constants import PAPER_B_SPLIT_FRACTIONS
from lcc_utils.files import broken, read_json
from lcc_utils.paths import atomic_write, cache_dir

if TYPE_CHECKING:
    from lcc_utils.data import ImageDataset

#: Split names, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Paper B's train/val/test fractions (of all patches).
SPLIT_FRACTIONS: tuple[float, float, float] = PAPER_B_SPLIT_FRACTIONS
#: Kinds of :func:`get_split`.
SPLIT_KINDS = ("stratified", "spatial")


@dataclass(frozen=True)
class Split:
    """Index arrays into a dataset. ``val`` is carved from the training part only."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    kind: str
    hash: str

    def sizes(self) -> pd.DataFrame:
        """Number of images per part."""
        return pd.DataFrame({"split": ["train", "val", "test"],
                             "images": [len(self.train), len(self.val), len(self.test)]})


def _indices_hash(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (train, val, test):
        h.update(np.asarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- spatial blocks
def spatial_block_names(geo: pd.DataFrame, block_size_m: float) -> np.ndarray:
    """Block of each georeferenced patch, named ``"<crs>:<i>:<j>"``.

    Blocks are ``block_size_m`` squares of the patch centres (``geo["x"]``, ``geo["y"]``,
    in metres of the patch's UTM zone), per CRS zone: patches of two zones never share
    a block.
    """
    bx = np.floor(geo["x"].to_numpy() / block_size_m).astype(np.int64)
    by = np.floor(geo["y"].to_numpy() / block_size_m).astype(np.int64)
    return np.array([f"{c}:{i}:{j}" for c, i, j in zip(geo["crs"], bx, by, strict=True)])


def spatial_blocks(geo: pd.DataFrame, block_size_m: float) -> np.ndarray:
    """Group georeferenced patches into square blocks of ``block_size_m`` metres, per CRS zone.

    Returns an integer block id per patch (ids in the sorted order of
    :func:`spatial_block_names`).
    """
    _, groups = np.unique(spatial_block_names(geo, block_size_m), return_inverse=True)
    return groups


# --------------------------------------------------------------------------- group splits
def group_split(idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_folds: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, part), part about ``1 / n_folds`` of it, whole groups only.

    Stratified by class (scikit-learn ``StratifiedGroupKFold``, first fold) when every
    class has at least ``n_folds`` items; otherwise whole groups are drawn in a seeded
    random order until the part holds ``1 / n_folds`` of the items (tiny sets, where
    stratification is impossible; the part then always keeps at least one group and
    leaves at least one). With whole groups the share is approximate.

    Args:
        idx: The items to split (indices into a dataset or patch set).
        labels: Class of each item of ``idx`` (aligned with ``idx``, not the dataset).
        groups: Group (spatial block) of each item of ``idx``.
        n_folds: The part is one of ``n_folds`` folds (capped at the number of groups).
        seed: Seed of the fold assignment.

    Returns:
        ``(rest, part)``: the items of ``idx`` in each side, in ``idx`` order.

    Raises:
        ValueError: fewer than two groups, so no whole-group split exists.

    """
    from sklearn.model_selection import StratifiedGroupKFold

    idx, labels, groups = np.asarray(idx), np.asarray(labels), np.asarray(groups)
    ug = np.unique(groups)
    n = min(n_folds, len(ug))
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

    Blocks, not patches, are split (:func:`group_split`, which also keeps class shares
    close), so neighbouring patches never sit on both sides. With whole blocks the
    fractions are approximate: test is one of ``round(1/0.15) = 7`` folds, val one of
    ``round(0.85/0.15) = 6`` folds of the rest (seeded random whole blocks when a class
    has too few patches to stratify).

    Returns:
        The split name (``"train"``, ``"val"``, ``"test"``) of each patch.

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
    rest, test = group_split(idx, labels, groups, n_test, seed)
    tr, va = group_split(np.arange(len(rest)), labels[rest], groups[rest], n_val, seed + 1)
    split = np.empty(len(labels), dtype="<U5")
    split[rest[tr]], split[rest[va]], split[test] = "train", "val", "test"
    for g in np.unique(groups):
        s = np.unique(split[groups == g])
        if len(s) != 1:
            raise AssertionError(f"spatial block {g} spans splits {s.tolist()}")
    return split


# --------------------------------------------------------------------------- dataset splits
def _two_way(labels: np.ndarray, idx: np.ndarray, fraction: float, seed: int,
             groups: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, part) with ``part`` about ``fraction`` of it, stratified by label."""
    if groups is None:
        from sklearn.model_selection import train_test_split

        n_part, n_classes = round(len(idx) * fraction), len(np.unique(labels[idx]))
        if n_part < n_classes:
            raise ValueError(f"{name}={fraction} leaves {n_part} image(s) for {n_classes} classes: "
                             "every class needs at least one; use a larger fraction or more data")
        rest, part = train_test_split(idx, test_size=fraction, stratify=labels[idx], random_state=seed)
    else:
        # Whole blocks go to one side (the one group splitter; part = one of round(1 / fraction) folds).
        if len(np.unique(groups[idx])) < 2:
            raise ValueError(f"{name}={fraction}: all {len(idx)} patches fall in one spatial block; "
                             "use a smaller block_size_m")
        rest, part = group_split(idx, labels[idx], groups[idx], max(2, round(1 / fraction)), seed)
    return np.sort(rest), np.sort(part)


def get_split(
    ds: ImageDataset,
    seed: int = 0,
    kind: str = "stratified",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    block_size_m: float = 5000.0,
) -> Split:
    """Return the train/val/test split of ``ds``, reading or writing its index file.

    Paper A: stratified 80/20 train/test. The validation part (``val_fraction`` of the
    train part) selects checkpoints and stops training, so the test set never selects a
    model. ``kind="spatial"`` (georeferenced data only) keeps every ``block_size_m``
    block in one part (:func:`group_split`), so neighbouring patches cannot leak between
    train and test; with whole blocks the fractions are approximate (the part is one of
    ``round(1 / fraction)`` folds).
    """
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}; choose one of: {', '.join(SPLIT_KINDS)}")
    for pname, v in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 < v < 1:
            raise ValueError(f"{pname}={v} must be in (0, 1)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    groups = None
    if kind == "spatial":
        if ds.geo is None:
            raise ValueError(f"kind='spatial' needs georeferenced patches; {ds.name} has none")
        groups = spatial_blocks(ds.geo, block_size_m)
    sdir = cache_dir() / "splits"
    sdir.mkdir(parents=True, exist_ok=True)
    path = sdir / (f"{ds.name}-{ds.hash}-{kind}-seed{seed}-test{test_fraction}-val{val_fraction}"
                   + (f"-block{block_size_m:g}" if groups is not None else "") + ".json")
    if path.exists():
        return _read_split(path, seed, kind)
    idx = np.arange(len(ds), dtype=np.int64)
    train_all, test = _two_way(ds.labels, idx, test_fraction, seed, groups, "test_fraction")
    train, val = _two_way(ds.labels, train_all, val_fraction, seed + 1, groups, "val_fraction")
    h = _indices_hash(train, val, test)
    atomic_write(path, json.dumps({"dataset": ds.name, "dataset_hash": ds.hash, "kind": kind,
                                   "seed": seed, "hash": h, "train": train.tolist(),
                                   "val": val.tolist(), "test": test.tolist()}))
    return Split(train, val, test, seed, kind, h)


def _read_split(path: Path, seed: int, kind: str) -> Split:
    """A split file of the cache, checked against its own content hash, or an error naming it."""
    remedy = ("Delete it (or run `make clean-cache`): the next run makes the same split again from its seed")
    d = read_json(path, remedy)
    missing = sorted({"train", "val", "test", "hash"} - d.keys())
    if missing:
        raise broken(path, f"a split file without {missing}", remedy)
    tr, va, te = (np.asarray(d[k], dtype=np.int64) for k in ("train", "val", "test"))
    if _indices_hash(tr, va, te) != d["hash"]:
        raise broken(path, "a corrupt split file (its indices do not match its content hash)", remedy)
    return Split(tr, va, te, seed, kind, d["hash"])


# --------------------------------------------------------------------------- distances between splits
def split_distances(x: np.ndarray, y: np.ndarray, zone: np.ndarray, split: np.ndarray,
                    reference: str = "train") -> pd.DataFrame:
    """Minimum distance (m) from each split's patches to the nearest ``reference`` patch.

    ``x``, ``y`` are patch centres in metres of their UTM ``zone``; distances are measured
    within a zone only (patches of two zones are hundreds of km apart at least, and their
    coordinates are not comparable), so a split with no zone shared with ``reference``
    gets NaN. Returns one row per split other than ``reference``: ``min_distance_m``,
    ``median_nearest_m`` (median over the split's patches of the nearest-reference distance)
    and ``n``.
    """
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    zone, split = np.asarray(zone).astype(str), np.asarray(split).astype(str)
    if not (len(x) == len(y) == len(zone) == len(split)):
        raise ValueError("x, y, zone and split must have one entry per patch")
    rows = []
    for s in [s for s in SPLITS if s != reference]:
        nearest = np.full(int((split == s).sum()), np.nan)
        pos = np.flatnonzero(split == s)
        for z in np.unique(zone[pos]):
            ref = (split == reference) & (zone == z)
            if not ref.any():
                continue
            tree = cKDTree(np.c_[x[ref], y[ref]])
            here = zone[pos] == z
            nearest[here] = tree.query(np.c_[x[pos[here]], y[pos[here]]])[0]
        ok = np.isfinite(nearest)
        rows.append({"split": s, "n": len(pos),
                     "min_distance_m": float(nearest[ok].min()) if ok.any() else float("nan"),
                     "median_nearest_m": float(np.median(nearest[ok])) if ok.any() else float("nan")})
    return pd.DataFrame(rows).set_index("split")


def buffer_drop(x: np.ndarray, y: np.ndarray, zone: np.ndarray, split: np.ndarray,
                buffer_m: float, reference: str = "train") -> np.ndarray:
    """Boolean mask of ``reference`` patches closer than ``buffer_m`` to a val/test patch (to drop).

    A buffer between the splits: training patches next to an evaluation patch are left out, so
    no training patch lies within ``buffer_m`` of one (same-zone distances, as
    :func:`split_distances`). ``buffer_m = 0`` drops nothing.
    """
    from scipy.spatial import cKDTree

    if buffer_m < 0:
        raise ValueError(f"buffer_m={buffer_m} must be >= 0 metres")
    x, y = np.asarray(x, float), np.asarray(y, float)
    zone, split = np.asarray(zone).astype(str), np.asarray(split).astype(str)
    drop = np.zeros(len(x), bool)
    if buffer_m == 0:
        return drop
    for z in np.unique(zone):
        ev = (split != reference) & (zone == z)
        tr = np.flatnonzero((split == reference) & (zone == z))
        if not ev.any() or not len(tr):
            continue
        d = cKDTree(np.c_[x[ev], y[ev]]).query(np.c_[x[tr], y[tr]])[0]
        drop[tr[d < buffer_m]] = True
    return drop
