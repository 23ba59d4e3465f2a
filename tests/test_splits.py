"""Tests for lcc_utils.splits: the one group splitter and the spatial block splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcc_utils import data, splits
from lcc_utils import sentinel2 as s2


def _groups_labels(n_groups: int, per_group: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    labels = rng.integers(0, n_classes, len(groups))
    return groups, labels


@pytest.mark.parametrize("per_group,n_classes", [(10, 3), (2, 40)])  # stratified; too few to stratify
def test_group_split_keeps_groups_whole(per_group, n_classes):
    groups, labels = _groups_labels(60, per_group, n_classes)
    idx = np.arange(len(labels)) + 1000  # any item ids, returned as given
    rest, part = splits.group_split(idx, labels, groups, 5, seed=3)
    assert sorted(np.concatenate([rest, part]).tolist()) == idx.tolist()
    g_rest, g_part = set(groups[rest - 1000]), set(groups[part - 1000])
    assert g_rest and g_part and not g_rest & g_part  # no group on both sides
    assert 0.1 < len(part) / len(idx) < 0.3  # about one fold of five
    again = splits.group_split(idx, labels, groups, 5, seed=3)
    assert np.array_equal(again[1], part)
    assert not np.array_equal(splits.group_split(idx, labels, groups, 5, seed=4)[1], part)


def test_group_split_needs_two_groups():
    with pytest.raises(ValueError, match="only 1 spatial block"):
        splits.group_split(np.arange(6), np.arange(6) % 2, np.zeros(6, int), 5, seed=0)
    # two groups, five folds asked: the part is one whole group, the rest the other
    rest, part = splits.group_split(np.arange(6), np.arange(6) % 2, np.arange(6) // 3, 5, seed=0)
    assert sorted(map(len, (rest, part))) == [3, 3]


def test_spatial_split_is_70_15_15_by_whole_blocks():
    groups, labels = _groups_labels(200, 8, 2, seed=1)
    split = splits.spatial_split(groups, labels, seed=0)
    df = pd.DataFrame({"g": groups, "s": split})
    assert (df.groupby("g")["s"].nunique() == 1).all()
    share = df["s"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.05)
    assert share["val"] == pytest.approx(0.15, abs=0.05)
    assert share["test"] == pytest.approx(0.15, abs=0.05)
    assert s2.spatial_split is splits.spatial_split and s2.SPLITS == splits.SPLITS
    with pytest.raises(ValueError, match="only 3 spatial blocks"):
        splits.spatial_split(np.arange(30) // 10, np.arange(30) % 2)


def test_block_names_and_ids_agree():
    geo = pd.DataFrame({"crs": ["EPSG:32631", "EPSG:32631", "EPSG:32632", "EPSG:32631"],
                        "x": [100.0, 4900.0, 100.0, 5100.0], "y": [0.0, 10.0, 0.0, 0.0]})
    names = splits.spatial_block_names(geo, 5000)
    assert names.tolist() == ["EPSG:32631:0:0", "EPSG:32631:0:0", "EPSG:32632:0:0", "EPSG:32631:1:0"]
    assert splits.spatial_blocks(geo, 5000).tolist() == [0, 0, 2, 1]
    assert data.spatial_blocks is splits.spatial_blocks and data.get_split is splits.get_split


def test_get_split_spatial_falls_back_to_whole_random_blocks(synthetic_root, tmp_cache):
    """4 images per class are too few to stratify 5 folds: whole blocks drawn at random."""
    ds = data.load_dataset("eurosat_ms", synthetic_root)
    groups = data.spatial_blocks(ds.geo, 2000)
    s = data.get_split(ds, seed=0, kind="spatial", block_size_m=2000)
    parts = [set(groups[p]) for p in (s.train, s.val, s.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(len(ds)))
    assert data.get_split(ds, seed=0, kind="spatial", block_size_m=2000).hash == s.hash
