"""Tests for lcc_utils.mapping on tiny synthetic L2A products and tiny CNNs."""

from __future__ import annotations

import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from lcc_utils import mapping as mp
from lcc_utils import sentinel2 as s2
from lcc_utils.models import LightweightCNN

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_s2_fixtures as fx  # noqa: E402

MEAN = [0.1, 0.12, 0.15, 0.35, 0.28, 0.2]
STD = [0.05, 0.05, 0.1, 0.05, 0.1, 0.1]


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return s2.open_l2a(fx.make_cog_product(tmp_path_factory.mktemp("map") / "cogs", 64))


def tiny_cnn(kernel_size: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LightweightCNN(6, 2, depth=2, filters=(4, 8), kernel_size=kernel_size).eval()


def test_map_is_georeferenced_and_masked(product, tmp_path):
    out = tmp_path / "map.tif"
    rep = mp.classify_scene(product, tiny_cnn(), out, patch_size=16, stride=8, mean=MEAN, std=STD,
                            classes=["non_vegetation", "vegetation"], window_size=24,
                            progress=False)
    with rasterio.open(out) as src:
        assert src.crs == product.crs and src.transform == product.transform
        assert (src.width, src.height) == (64, 64) and src.count == 2
        assert src.dtypes == ("uint8", "uint8") and src.nodata == mp.MAP_NODATA
        cls, prob = src.read(1), src.read(2)
    mask = s2.read_window(product).mask
    np.testing.assert_array_equal(cls == mp.MAP_NODATA, mask)
    np.testing.assert_array_equal(prob == mp.MAP_NODATA, mask)
    assert set(np.unique(cls[~mask])) <= {0, 1}
    assert (prob[~mask] >= 50).all() and (prob[~mask] <= 100).all()  # max of 2 softmax probs
    assert rep["masked_pixels"] == int(mask.sum()) == 16 * 16 + 8 * 8
    assert sum(rep["class_pixels"].values()) + rep["masked_pixels"] == 64 * 64
    table = mp.class_area_table(out)
    assert table["pixels"].sum() == 64 * 64
    assert table.loc[table["class"] == "masked (nodata)", "area_km2"].item() == pytest.approx(
        320 * 100 / 1e6)


def test_patch_mode_equals_naive_loop(product, tmp_path):
    m = tiny_cnn()
    mp.classify_scene(product, m, tmp_path / "p.tif", patch_size=16, stride=8, mean=MEAN,
                      std=STD, mode="patch", window_size=40, batch_size=7, progress=False)
    naive = mp.classify_scene_naive(product, m, patch_size=16, stride=8, mean=MEAN, std=STD)
    a, _, _ = mp.read_map(tmp_path / "p.tif")
    np.testing.assert_array_equal(a, naive)


def test_fcn_equals_patch_without_border_effects(product, tmp_path):
    # 1x1 convolutions have no padding at patch borders, so the fully-convolutional pass
    # must reproduce the per-patch classification exactly: checks the pooling geometry.
    m = tiny_cnn(kernel_size=1, seed=3)
    for mode in ("fcn", "patch"):
        mp.classify_scene(product, m, tmp_path / f"{mode}.tif", patch_size=16, stride=8,
                          mean=MEAN, std=STD, mode=mode, window_size=24, progress=False)
    a, _, _ = mp.read_map(tmp_path / "fcn.tif")
    b, _, _ = mp.read_map(tmp_path / "patch.tif")
    np.testing.assert_array_equal(a, b)
    with rasterio.open(tmp_path / "fcn.tif") as fa, rasterio.open(tmp_path / "patch.tif") as fb:
        pa, pb = fa.read(2).astype(int), fb.read(2).astype(int)
    assert np.abs(pa - pb).max() <= 1  # percent rounding


def test_trained_like_model_maps_the_vegetation_half(product, tmp_path):
    # A hand-set 1x1 "NDVI" network: class 1 where NIR > red; the map must show the
    # scene's vegetated left half as class 1 and the bare right half as class 0.
    m = LightweightCNN(6, 2, depth=1, filters=(2,), kernel_size=1).eval()
    with torch.no_grad():
        m.features[0].weight.zero_()
        m.features[0].bias.zero_()
        m.features[0].weight[0, 3] = 1.0  # NIR
        m.features[0].weight[0, 2] = -1.0  # red
        m.classifier.weight.copy_(torch.tensor([[0.0, 0.0], [20.0, 0.0]]))
        m.classifier.bias.copy_(torch.tensor([1.0, 0.0]))
    out = tmp_path / "ndvi.tif"
    mp.classify_scene(product, m, out, patch_size=16, stride=8, progress=False)
    a, classes, _ = mp.read_map(out)
    assert classes == ["0", "1"]
    assert (a[8:56, 0:24] == 1).all() and (a[20:56, 40:64] == 0).all()


def test_bf16_map_agrees_with_fp32(product, tmp_path):
    m = tiny_cnn(seed=5)
    for prec in ("fp32", "bf16"):
        rep = mp.classify_scene(product, m, tmp_path / f"{prec}.tif", patch_size=16, stride=8,
                                mean=MEAN, std=STD, precision=prec, progress=False)
        assert rep["precision"] == prec
    assert mp.map_agreement(tmp_path / "fp32.tif", tmp_path / "bf16.tif") > 0.9
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        mp.classify_scene(product, m, tmp_path / "x.tif", patch_size=16, stride=8,
                          precision="fp16")


def _peak_memory_per_scene_size(tmp_path: Path) -> list[int]:
    """tracemalloc peaks of one mapping at 64 and 256 px (run in a process of its own)."""
    m = tiny_cnn()
    # warm-up outside the measurement: first-call allocations (lazy imports, GDAL and torch
    # caches) depend on which tests ran before and are not per-pixel memory
    warm = s2.open_l2a(fx.make_cog_product(tmp_path / "warm", 64))
    mp.classify_scene(warm, m, tmp_path / "warm.tif", patch_size=16, stride=8, window_size=32, progress=False)
    peaks = []
    for size in (64, 256):
        p = s2.open_l2a(fx.make_cog_product(tmp_path / f"s{size}", size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracemalloc.start()
            mp.classify_scene(p, m, tmp_path / f"m{size}.tif", patch_size=16, stride=8,
                              window_size=32, progress=False)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    return peaks


def test_memory_is_flat_as_the_scene_grows(tmp_path):
    """Measured in a fresh interpreter: tracemalloc counts every thread's allocations, and threads
    an earlier test left running (a Dask cluster's, a lock's) would be charged to the mapper."""
    import json
    import subprocess

    code = (f"import sys, json; sys.path[:0] = [{str(Path(__file__).parent)!r}, "
            f"{str(Path(__file__).parent / 'fixtures')!r}]\n"
            "from pathlib import Path; import test_mapping as t\n"
            f"print(json.dumps(t._peak_memory_per_scene_size(Path({str(tmp_path)!r}))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    peaks = json.loads(r.stdout.strip().splitlines()[-1])
    # 16x more pixels; a whole-scene map would be >= 256*256 B more, a float input 6x that
    assert peaks[1] - peaks[0] < 64 * 1024, peaks


def test_errors_are_named(product, tmp_path):
    m = tiny_cnn()
    with pytest.raises(ValueError, match="stride=40 must be <= patch_size=32"):
        mp.classify_scene(product, m, tmp_path / "x.tif", patch_size=32, stride=40)
    with pytest.raises(ValueError, match="even"):
        mp.classify_scene(product, m, tmp_path / "x.tif", patch_size=16, stride=7)
    with pytest.raises(ValueError, match="mean must have one value per band"):
        mp.classify_scene(product, m, tmp_path / "x.tif", patch_size=16, stride=8, mean=[0.1])
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        mp.classify_scene(product, m, tmp_path / "x.tif", patch_size=16, stride=8, mode="fast")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(6 * 16 * 16, 2))
    with pytest.raises(ValueError, match="mode='fcn' needs"):
        mp.classify_scene(product, flat, tmp_path / "x.tif", patch_size=16, stride=8, mode="fcn")
    with pytest.raises(ValueError, match="classes has 3 names"):
        mp.classify_scene(product, m, tmp_path / "x.tif", patch_size=16, stride=8,
                          classes=["a", "b", "c"], progress=False)
    # neither the map nor a temporary file of paths.atomic_path (".x.partial-<pid>-<token>.tif") is left
    assert not list(tmp_path.glob("*.tif")), list(tmp_path.glob("*.tif"))


def test_plot_map_has_legend(product, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "m.tif"
    mp.classify_scene(product, tiny_cnn(), out, patch_size=16, stride=8,
                      classes=["non_vegetation", "vegetation"], progress=False)
    fig = mp.plot_map(out, title="t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["non_vegetation", "vegetation"] and "masked" in labels[2]


def _ndvi_net() -> nn.Module:
    """The hand-set 1x1 'NDVI' network of test_trained_like_model_maps_the_vegetation_half."""
    m = LightweightCNN(6, 2, depth=1, filters=(2,), kernel_size=1).eval()
    with torch.no_grad():
        m.features[0].weight.zero_()
        m.features[0].bias.zero_()
        m.features[0].weight[0, 3] = 1.0
        m.features[0].weight[0, 2] = -1.0
        m.classifier.weight.copy_(torch.tensor([[0.0, 0.0], [20.0, 0.0]]))
        m.classifier.bias.copy_(torch.tensor([1.0, 0.0]))
    return m


def test_scl_agreement_of_a_good_map(product, tmp_path):
    out = tmp_path / "ndvi.tif"
    mp.classify_scene(product, _ndvi_net(), out, patch_size=16, stride=8, progress=False,
                      classes=["non_vegetation", "vegetation"])
    cm, s = mp.scl_agreement(out, product, window_size=24)
    mask = s2.read_window(product).mask
    # the fixture's clear pixels are all SCL 4 (left half) or 5 (right half)
    assert s["reference_pixels"] == int((~mask).sum()) == int(cm.to_numpy().sum())
    assert s["other_scl_pixels"] == 0
    assert list(cm.index) == ["SCL 4 vegetation", "SCL 5 not vegetated"]
    assert s["oa"] > 0.85  # only the stride blocks straddling the border disagree
    assert cm.loc["SCL 4 vegetation", "vegetation"] > 10 * cm.loc["SCL 4 vegetation", "non_vegetation"]
    # a map whose classes are not the binary vegetation classes cannot be compared
    mp.classify_scene(product, _ndvi_net(), tmp_path / "ab.tif", patch_size=16, stride=8, progress=False,
                      classes=["a", "b"])
    with pytest.raises(ValueError, match="SCL agreement needs a binary map"):
        mp.scl_agreement(tmp_path / "ab.tif", product)


def test_class_and_probability_cogs_are_gis_ready(product, tmp_path):
    out = tmp_path / "map.tif"
    mp.classify_scene(product, _ndvi_net(), out, patch_size=16, stride=8, progress=False,
                      classes=["non_vegetation", "vegetation"])
    cogs = mp.write_map_cogs(out, tmp_path / "class.tif", tmp_path / "prob.tif", blocksize=16)
    c = mp.check_cog(cogs["class_cog"])
    assert c["layout"] == "COG" and c["dtype"] == "uint8" and c["nodata"] == mp.MAP_NODATA
    assert c["overviews"] == [2, 4]  # 64 px at 16 px blocks: overviews down to one block
    assert c["colormap"][1] == mp.BINARY_COLORS["vegetation"] and c["colormap"][mp.MAP_NODATA][3] == 0
    assert c["category_names"] == ["non_vegetation", "vegetation"] and c["gdal_sees_sidecar"]
    p = mp.check_cog(cogs["probability_cog"])
    assert p["layout"] == "COG" and p["overviews"] == [2, 4] and p["category_names"] == []
    with rasterio.open(out) as a, rasterio.open(cogs["class_cog"]) as b, rasterio.open(cogs["probability_cog"]) as q:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        np.testing.assert_array_equal(a.read(2), q.read(1))
        assert b.crs == a.crs and b.transform == a.transform
        # mode overviews keep class codes: no value that is neither a class nor nodata
        assert set(np.unique(b.read(1, out_shape=(32, 32)))) <= {0, 1, mp.MAP_NODATA}


def test_failed_cog_leaves_nothing(product, tmp_path):
    not_a_map = tmp_path / "aligned.tif"
    s2.write_aligned(product, not_a_map, window_size=32, progress=False)
    with pytest.raises(ValueError, match="not a classification map"):
        mp.write_map_cogs(not_a_map, tmp_path / "class.tif", tmp_path / "prob.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned.tif"]


def test_model_bands_must_match_the_scene():
    mp.check_model_bands(["B02", "B03"], ["B02", "B03"])
    with pytest.raises(ValueError, match=r"model.tif \['B02', 'B8A'\] differ .* lacks \['B8A'\]"):
        mp.check_model_bands(["B02", "B8A"], ["B02", "B08"], model_source="model.tif")
    with pytest.raises(ValueError, match="another order"):
        mp.check_model_bands(["B03", "B02"], ["B02", "B03"])


def test_qgis_style_names_and_colours_every_class(product, tmp_path):
    import xml.etree.ElementTree as ET

    out = tmp_path / "map.tif"
    mp.classify_scene(product, tiny_cnn(), out, patch_size=16, stride=8, mean=MEAN, std=STD,
                      classes=["non_vegetation", "vegetation"], window_size=24, progress=False)
    cogs = mp.write_map_cogs(out, tmp_path / "map_class.tif", tmp_path / "map_probability.tif")
    qml = tmp_path / "map_class.qml"  # QGIS loads <name>.qml beside <name>.tif by itself
    assert cogs["qgis_style"] == str(qml)
    entries = ET.parse(qml).getroot().findall("./pipe/rasterrenderer/colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        ("0", "non_vegetation", "#d9b26f"), ("1", "vegetation", "#2ca25f")]
    with rasterio.open(out) as src:  # the scene named under the data root or by its name, no machine path
        assert not src.tags()["SOURCE"].startswith("/")


@pytest.mark.integration
@pytest.mark.notebooks
def test_notebook_08_maps_with_a_committed_06_run_and_writes_no_machine_path(shared_data, monkeypatch):
    """08 by hand on a committed smoke 06 run (its checkpoint rebuilt in the cache): it runs, and no
    file of its run folder names this machine (GeoTIFF tags, JSON, CSV, the executed notebook, the style)."""
    from lcc_utils import paths, runs

    monkeypatch.setenv("LCC_DATA_DIR", str(shared_data))
    root = Path(__file__).resolve().parents[1]
    d, executed = runs.execute_notebook(runs.notebook_path("08_mapping"), {
        "run": "runs/smoke/evaluation/binary-8736b067", "compare_exact": False, "stride": 32})
    assert executed and (d / "metrics.json").is_file()
    names = {p.name for p in d.iterdir()}
    assert {"map_class.tif", "map_probability.tif", "map_class.qml", "map_report.json"} <= names
    assert "map.tif" not in names  # the two-band working map stays in the cache
    machine = {str(root), str(shared_data), str(paths.cache_dir().resolve()), str(Path.home()), "/tmp/"}
    found = {}
    for f in d.rglob("*"):
        if not f.is_file():
            continue
        if f.suffix == ".tif":
            with rasterio.open(f) as src:
                text = repr([src.tags(), *(src.tags(b) for b in range(1, src.count + 1))])
        elif f.suffix == ".png":
            continue
        else:
            text = f.read_text(errors="replace")
        hits = sorted(m for m in machine if m in text)
        if hits:
            found[f.name] = hits
    assert not found, f"machine paths in {runs.shown_path(d)}: {found}"


# --------------------------------------------------------------------------- the desert as a specificity control
def test_scl_specificity_on_a_tiny_map():
    veg_classes = ["non_vegetation", "vegetation"]
    m = np.array([[0, 1, 0], [0, 255, 1]], np.uint8)  # 0 non-vegetation, 1 vegetation, 255 nodata
    scl = np.array([[5, 5, 5], [4, 5, 6]], np.uint8)   # SCL 6 (water): clear, but no reference
    cm, other, clear = mp.scl_counts(m, scl, 2)
    assert cm.tolist() == [[1, 0], [2, 1]] and other == 1 and clear == 5
    spec = mp.scl_specificity(mp.scl_confusion_table(cm, veg_classes))
    assert spec["not_vegetated_as_non_vegetation"] == pytest.approx(2 / 3)
    assert spec["vegetation_as_vegetation"] == 0.0
    # a desert (no SCL vegetation) mapped almost all non-vegetation: 999 of 1000; no sensitivity to give
    desert = mp.scl_specificity(mp.scl_confusion_table(np.array([[0, 0], [999, 1]]), veg_classes))
    assert desert == {"not_vegetated_as_non_vegetation": 0.999, "vegetation_as_vegetation": None}
    with pytest.raises(ValueError, match="differ in shape"):
        mp.scl_counts(m, scl[:1], 2)


def test_ndvi_threshold_map_and_the_three_panels(product, tmp_path):
    # the fixture: left half green (NDVI ~0.86, SCL 4), right half bare (NDVI ~0.07, SCL 5)
    good = tmp_path / "ndvi.tif"
    rep = mp.ndvi_threshold_map(product, good, threshold=0.3, patch_size=16, stride=8, window_size=24)
    geo = mp.check_georeference(good, product)
    assert geo["same_crs"] and geo["same_transform"] and geo["same_shape"]
    with rasterio.open(good) as src:  # the scene under the data root or by its name, no machine path
        assert src.tags()["SOURCE"] == product.path.name, src.tags()["SOURCE"]
    assert rep["masked_pixels"] == int(s2.read_window(product).mask.sum())
    _, s = mp.scl_agreement(good, product, window_size=24)
    assert s["not_vegetated_as_non_vegetation"] > 0.85 and s["vegetation_as_vegetation"] > 0.85
    # a threshold below every patch's NDVI calls the bare half vegetation: specificity 0
    bad = tmp_path / "all_green.tif"
    mp.ndvi_threshold_map(product, bad, threshold=-1.0, patch_size=16, stride=8, window_size=24)
    _, s_bad = mp.scl_agreement(bad, product, window_size=24)
    assert s_bad["not_vegetated_as_non_vegetation"] == 0.0 and s_bad["vegetation_as_vegetation"] == 1.0
    agreement = {"NDVI > 0.3": s, "NDVI > -1": s_bad}
    areas = mp.areas_beside_agreement({"NDVI > 0.3": good, "NDVI > -1": bad}, agreement)
    green = areas[(areas["map"] == "NDVI > -1") & (areas["class"] == "vegetation")].iloc[0]
    assert green["scl_not_vegetated_as_non_vegetation"] == 0.0 and green["area_km2"] > 0
    fig = mp.plot_map_panels({"NDVI > 0.3": good, "NDVI > -1": bad}, product, agreement)
    assert len(fig.axes) == 3 and "SCL 5 mapped non-veg.: 0.0 %" in fig.axes[1].get_title()
