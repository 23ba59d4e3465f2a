"""Tests for lcc_utils.sentinel2.labels: the binary label definitions of EuroSAT MS (issue 22)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lcc_utils import paper_b, runs
from lcc_utils import sentinel2 as s2
from lcc_utils.constants import EUROSAT_CLASSES, EUROSAT_MS_BANDS
from lcc_utils.sentinel2 import labels as lb


# --------------------------------------------------------------------------- registry
def test_registry_lists_the_choices_and_keeps_the_committed_default():
    assert list(lb.BINARY_LABELS) == ["landuse", "ndvi_sides"]
    assert lb.get_binary_labels("landuse").vegetation == s2.EUROSAT_VEGETATION_CLASSES
    assert lb.get_binary_labels("ndvi_sides").rule == "ndvi"
    with pytest.raises(ValueError, match=r"unknown binary labels 'ndvi'; choose one of: landuse, ndvi_sides"):
        lb.get_binary_labels("ndvi")
    # the default is ADDED_PARAMS's value: committed runs of 02/06/07 keep their folders
    assert runs.ADDED_PARAMS["binary_labels"] == lb.DEFAULT_BINARY_LABELS == "landuse"
    assert runs.params_hash({"task": "binary", "binary_labels": "landuse"}) == runs.params_hash({"task": "binary"})
    assert runs.params_hash({"task": "binary", "binary_labels": "ndvi_sides"}) != runs.params_hash({"task": "binary"})


def test_landuse_sides_come_from_the_names():
    sides = lb.class_sides("landuse", list(EUROSAT_CLASSES))
    assert sides["AnnualCrop"] == "vegetation" and sides["Highway"] == "non_vegetation"
    assert sum(v == "vegetation" for v in sides.values()) == 5 and "left out" not in sides.values()


def test_run_tag_and_sentinel2_run_for():
    assert paper_b.run_tag("binary") == "binary"
    assert paper_b.run_tag("binary", "ndvi_sides") == "binary_ndvi_sides"
    assert paper_b.sentinel2_run_for({}, "binary", "landuse") == {}
    assert paper_b.sentinel2_run_for({"n_per_class": 40}, "binary", "ndvi_sides") == {
        "n_per_class": 40, "binary_labels": "ndvi_sides"}
    with pytest.raises(ValueError, match="the multiclass task has no label grouping"):
        paper_b.sentinel2_run_for({}, "multiclass", "ndvi_sides")
    with pytest.raises(ValueError, match="unknown binary labels"):
        paper_b.sentinel2_run_for({}, "binary", "ndvi")


# --------------------------------------------------------------------------- the NDVI side rule
def _table(values: dict[str, list[float]], extra_test: dict[str, list[float]] | None = None) -> pd.DataFrame:
    v, c, s = [], [], []
    for split, d in (("train", values), ("test", extra_test or {})):
        for k, xs in d.items():
            v += xs
            c += [k] * len(xs)
            s += [split] * len(xs)
    return lb.class_ndvi_table(np.array(v), c, s, list(values))


def test_side_rule_on_hand_made_classes():
    t = _table({
        "green": [0.3, 0.4, 0.5, 0.6],          # all >= 0.25: vegetation
        "three_quarters": [0.1, 0.25, 0.4, 0.5],  # 3 of 4 at or above the cut (0.25 counts): vegetation
        "half": [0.1, 0.2, 0.3, 0.4],            # 2 of 4 below: non-vegetation
        "mixed": [0.1, 0.3, 0.4, 0.5, 0.2],      # 3 of 5 above (60 %): left out
        "water": [-0.3, -0.2, -0.1, 0.0],
    }, extra_test={"water": [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]})  # test patches are never read
    assert t.set_index("class")["share_at_or_above_cut"].round(2).to_dict() == {
        "green": 1.0, "three_quarters": 0.75, "half": 0.5, "mixed": 0.6, "water": 0.0}
    assert t.set_index("class").loc["water", "n_train"] == 4
    assert lb.ndvi_sides(t) == {"green": "vegetation", "three_quarters": "vegetation", "half": "non_vegetation",
                                "mixed": "left out", "water": "non_vegetation"}
    assert t.set_index("class").loc["green", "median"] == pytest.approx(0.45)


def test_side_rule_errors_are_named():
    with pytest.raises(ValueError, match="class 'b' has no training patch"):
        lb.class_ndvi_table(np.array([0.5, 0.1]), ["a", "b"], ["train", "test"], ["a", "b"])
    all_green = _table({"a": [0.5, 0.6], "b": [0.7, 0.8]})
    with pytest.raises(ValueError, match="no class is non_vegetation"):
        lb.class_sides("ndvi_sides", ["a", "b"], all_green)
    with pytest.raises(ValueError, match="give the class_ndvi_table"):
        lb.class_sides("ndvi_sides", ["a", "b"])
    with pytest.raises(ValueError, match="overlap"):
        lb.ndvi_sides(all_green, vegetation_share=0.4, non_vegetation_share=0.5)
    with pytest.raises(ValueError, match="not a share"):
        lb.ndvi_side(1.5)


# --------------------------------------------------------------------------- on a EuroSAT-like dataset
#: Patch-mean NDVI per class of the fake dataset; AnnualCrop mixes bare and green tiles.
_NDVI = {"Forest": 0.6, "Pasture": 0.6, "HerbaceousVegetation": 0.6, "PermanentCrop": 0.6, "Highway": 0.6,
         "Residential": 0.6, "Industrial": 0.1, "River": 0.1, "SeaLake": -0.3}


def _fake_eurosat(n_per_class: int = 6, seed: int = 0, overrides: dict[int, float] | None = None):
    """Ten classes of 64 px images whose 16 px tiles have a set NDVI (red 1000 DN, NIR from NDVI)."""
    rng = np.random.default_rng(seed)
    n = n_per_class * len(EUROSAT_CLASSES)
    labels = np.repeat(np.arange(len(EUROSAT_CLASSES)), n_per_class)
    images = np.full((n, 64, 64, 13), 1000, np.uint16)
    b08 = EUROSAT_MS_BANDS.index("B08")

    def nir(v: float) -> int:
        return round(1000 * (1 + v) / (1 - v))

    for i, k in enumerate(labels):
        name = EUROSAT_CLASSES[k]
        if name == "AnnualCrop":  # 10 of 16 tiles green, 6 bare: 62.5 % above the cut in every image
            tiles = np.array([0.6] * 10 + [0.05] * 6).reshape(4, 4)
            images[i, :, :, b08] = np.kron(np.vectorize(nir)(tiles), np.ones((16, 16), int))
        else:
            images[i, :, :, b08] = nir((overrides or {}).get(i, _NDVI[name]))
    x, y = rng.uniform(300000, 700000, n), rng.uniform(4.5e6, 5.5e6, n)
    geo = pd.DataFrame({"crs": "EPSG:32631", "x": x, "y": y, "left": x - 320, "bottom": y - 320,
                        "right": x + 320, "top": y + 320})
    return SimpleNamespace(name="eurosat_ms", classes=list(EUROSAT_CLASSES), labels=labels, images=images,
                           bands=EUROSAT_MS_BANDS, hash="fake", geo=geo, files=[f"f{i}.tif" for i in range(n)])


def test_ndvi_sides_patchset_decides_sides_on_the_training_split_only():
    ds = _fake_eurosat()
    ps = s2.eurosat_ms_patchset(ds, "binary", patch_size=16, binary_labels="ndvi_sides")
    sides = ps.meta["class_sides"]
    # by NDVI, not by name: Highway and Residential are green here, AnnualCrop mixes (62.5 %): left out
    assert sides["Highway"] == sides["Residential"] == "vegetation"
    assert sides["AnnualCrop"] == "left out" and sides["Industrial"] == sides["SeaLake"] == "non_vegetation"
    assert ps.meta["dropped_left_out_images"] == 6 and len(ps) == 54 * 16
    assert ps.meta["binary_labels"] == "ndvi_sides" and "L1C" in ps.meta["ndvi_reflectance"]
    # the split is the 10-class task's (stratified on the source classes), whatever the sides
    multi = s2.eurosat_ms_patchset(ds, "multiclass", patch_size=16)
    kept = np.asarray(ds.classes)[multi.y] != "AnnualCrop"
    np.testing.assert_array_equal(ps.split, multi.split[kept])
    # greening Industrial's val/test images changes nothing: only training patches decide
    not_train = [i for i in range(len(ds.labels)) if ds.classes[ds.labels[i]] == "Industrial"
                 and multi.split[16 * i] != "train"]
    assert not_train
    greened = s2.eurosat_ms_patchset(_fake_eurosat(overrides={i: 0.9 for i in not_train}), "binary",
                                     patch_size=16, binary_labels="ndvi_sides")
    assert greened.meta["class_sides"] == sides
    # the default keeps today's grouping by name
    landuse = s2.eurosat_ms_patchset(ds, "binary", patch_size=16)
    assert landuse.meta["class_sides"]["AnnualCrop"] == "vegetation"
    assert landuse.meta["class_sides"]["Highway"] == "non_vegetation" and len(landuse) == 60 * 16
