"""Tests for the lcc_utils.sentinel2 subpackage on tiny synthetic L2A products (tests/fixtures/make_s2_fixtures.py).

Sections follow its modules: product, windows, align, patches, adapters. NDVI is tested in
test_spectral.py, the block split in test_splits.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import rasterio

from lcc_utils import sentinel2 as s2
from lcc_utils.constants import EUROSAT_CLASSES, EUROSAT_MS_BANDS, SCL_MASK_CLASSES

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_s2_fixtures as fx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TILE = SHARED / "sentinel2-l2a" / "S2A_29RKH_20200219_0_L2A"
SIZE = 64


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2")
    return {
        "cogs": fx.make_cog_product(root / "cogs", SIZE),
        "safe": fx.make_safe_product(root / "S2A_MSIL2A_TEST.SAFE", SIZE),
        "geotiff": fx.make_multiband_geotiff(root / "multiband.tif", SIZE),
        "bigearthnet": fx.make_bigearthnet_patch(root / "ben", 120),
        "root": root,
    }


# --------------------------------------------------------------------------- reading
def test_open_cogs_grid_offsets_and_reflectance(products):
    p = s2.open_l2a(products["cogs"])
    assert p.layout == "cogs" and p.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert p.shape == (SIZE, SIZE) and p.resolution == 10.0
    assert p.boa_offsets["B02"] == 0.0 and "02.14" in p.offset_source
    wd = s2.read_window(p)
    assert wd.x.shape == (6, SIZE, SIZE) and wd.x.dtype == np.float32
    with rasterio.open(products["cogs"] / "B08.tif") as src:
        dn = src.read(1)
    clear = ~wd.mask
    np.testing.assert_allclose(wd.x[3][clear], dn[clear] / 10000.0, rtol=1e-6)
    # B11 (20 m) resampled to 10 m: vegetation half ~0.18, bare half ~0.38
    assert abs(float(np.median(wd.x[4][10:40, 2:28])) - 0.18) < 0.02
    assert abs(float(np.median(wd.x[4][20:40, 40:60])) - 0.38) < 0.02


@pytest.mark.parametrize("layout", ["cogs", "safe"])
def test_product_hash_follows_band_content_not_stat(products, tmp_path, tmp_cache, monkeypatch, layout):
    """A same-size in-place write to one band changes the hash; a copy elsewhere keeps it."""
    import shutil

    from lcc_utils import fingerprints

    monkeypatch.setattr(fingerprints, "RACY_WINDOW_NS", 0)  # index the fresh files at once
    src = shutil.copytree(products[layout], tmp_path / "a" / products[layout].name)
    h = s2.product_hash(s2.open_l2a(src))
    assert fingerprints.index_path(src).exists()
    assert s2.product_hash(s2.open_l2a(src)) == h  # from the index
    monkeypatch.setenv("LCC_CACHE_DIR", str(tmp_path / "other-cache"))
    copy = shutil.copytree(src, tmp_path / "b" / src.name, copy_function=shutil.copyfile)
    assert s2.product_hash(s2.open_l2a(copy)) == h
    band = s2.open_l2a(copy).sources["B04"][0]
    size = band.stat().st_size
    with open(band, "r+b") as fh:  # same size: 8 bytes of (compressed) pixel data flipped
        fh.seek(size - 8)
        tail = fh.read(8)
        fh.seek(size - 8)
        fh.write(bytes(b ^ 0xFF for b in tail))
    assert band.stat().st_size == size
    edited = s2.product_hash(s2.open_l2a(copy))
    assert edited != h and s2.product_hash(s2.open_l2a(copy)) == edited
    assert s2.product_hash(s2.open_l2a(copy, bands=["B02", "B03"])) not in (h, edited)


def test_safe_reads_boa_offset_from_mtd(products):
    p = s2.open_l2a(products["safe"])
    assert p.layout == "safe" and p.boa_offsets["B04"] == -1000.0
    assert "MTD_MSIL2A.xml" in p.offset_source
    ref = s2.read_window(s2.open_l2a(products["cogs"]))
    wd = s2.read_window(p)
    # same scene, DNs shifted by +1000 and written with offset -1000 -> same reflectance
    np.testing.assert_allclose(wd.x, ref.x, atol=1e-4)
    np.testing.assert_array_equal(wd.mask, ref.mask)


def test_safe_band_ids_follow_esa_order(tmp_path):
    # MTD band_id is ESA's order (B8A 9th, id 8): B11 is id 11 and B12 id 12, unlike the
    # EuroSAT MS file order. Give each id its own offset and check the bands get theirs.
    d = fx.make_safe_product(tmp_path / "X.SAFE", 32)
    mtd = d / "MTD_MSIL2A.xml"
    txt = mtd.read_text()
    for i in range(13):
        txt = txt.replace(f'<BOA_ADD_OFFSET band_id="{i}">-1000<', f'<BOA_ADD_OFFSET band_id="{i}">{-i}<')
    mtd.write_text(txt)
    p = s2.open_l2a(d, bands=["B02", "B08", "B8A", "B11", "B12"])
    assert p.boa_offsets == {"B02": -1.0, "B08": -7.0, "B8A": -8.0, "B11": -11.0, "B12": -12.0}


def test_bigearthnet_offset_inferred_from_date(products):
    p = s2.open_l2a(products["bigearthnet"])
    assert p.layout == "bigearthnet" and p.shape == (120, 120) and p.scl is None
    assert p.boa_offsets["B02"] == 0.0 and "inferred" in p.offset_source
    assert "2017-06-13" in p.offset_source


def test_date_inference_after_baseline_0400(products, tmp_path):
    d = fx.make_cog_product(tmp_path / "new", 32, baseline=None, stac=False)
    with pytest.raises(ValueError, match="boa_offset"):
        s2.open_l2a(d)
    p = s2.open_l2a(d, date="2023-03-01")
    assert p.boa_offsets["B08"] == -1000.0 and "inferred" in p.offset_source


def test_geotiff_roundtrip_through_write_aligned(products, tmp_path):
    p = s2.open_l2a(products["geotiff"])
    assert p.layout == "geotiff" and p.scl is not None
    out = tmp_path / "aligned.tif"
    rep = s2.write_aligned(p, out, window_size=24, progress=False)
    with rasterio.open(out) as src:  # the scene under the data root or by its name, no machine path
        assert src.tags()["SOURCE"] == p.path.name, src.tags()["SOURCE"]
    q = s2.open_l2a(out)
    assert q.boa_offsets["B02"] == 0.0 and q.quantification_value == 1.0
    a, b = s2.read_window(p), s2.read_window(q)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.x, b.x, atol=1e-6)
    assert rep["masked_fraction"] == pytest.approx(a.mask.mean())


@pytest.mark.parametrize("band", ["B99", "red", "B1O"])
def test_unknown_band_is_named(products, band):
    with pytest.raises(ValueError, match=f"unknown band '{band}'"):
        s2.open_l2a(products["cogs"], bands=["B02", band])


def test_missing_band_file_is_named(products, tmp_path):
    d = fx.make_cog_product(tmp_path / "p", 32)
    (d / "B11.tif").unlink()
    with pytest.raises(FileNotFoundError, match="band B11"):
        s2.open_l2a(d)


def test_misaligned_bands_raise(tmp_path):
    d = fx.make_cog_product(tmp_path / "crs", 32)
    fx._write(d / "B12.tif", np.ones((16, 16), np.uint16), 20.0, crs="EPSG:32633")
    with pytest.raises(ValueError, match=r"band\(s\) B12 .*CRS"):
        s2.open_l2a(d)
    d2 = fx.make_cog_product(tmp_path / "ext", 32)
    fx._write(d2 / "B11.tif", np.ones((16, 16), np.uint16), 20.0, origin=(300500.0, 5000000.0))
    with pytest.raises(ValueError, match="band B11.*extents differ"):
        s2.open_l2a(d2)


# --------------------------------------------------------------------------- mask, windows
def test_write_aligned_mask_equals_scl_share(products, tmp_path):
    p = s2.open_l2a(products["cogs"])
    out = tmp_path / "a.tif"
    rep = s2.write_aligned(p, out, window_size=20, progress=False)
    # cloud 16x16 + cirrus 8x8 (10 m px) of 64x64
    expected = (16 * 16 + 8 * 8) / SIZE**2
    assert rep["masked_fraction"] == pytest.approx(expected)
    assert rep["scl_masked_fraction"] == pytest.approx(expected)
    assert s2.scl_mask_share(p) == pytest.approx(expected)
    assert s2.raster_masked_fraction(out) == pytest.approx(expected)
    with rasterio.open(out) as src:
        assert src.crs == p.crs and src.transform == p.transform
        assert src.descriptions == p.bands and src.nodata == s2.ALIGNED_NODATA
        a = src.read(1)
    r0, r1, c0, c1 = fx.cloud_box_10m(SIZE)
    assert (a[r0:r1, c0:c1] == s2.ALIGNED_NODATA).all()


def _iter_windows_peaks(tmp_path: Path) -> list[int]:
    """tracemalloc peaks of reading a 64 and a 256 px product window by window (own process)."""
    peaks = []
    for size in (64, 256):
        p = s2.open_l2a(fx.make_cog_product(tmp_path / f"s{size}", size))
        tracemalloc.start()
        n = sum(wd.x.shape[1] * wd.x.shape[2] for wd in s2.iter_windows(p, 32))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n == size * size
    return peaks


def test_iter_windows_memory_is_bounded(tmp_path):
    """Measured in a fresh interpreter: tracemalloc counts every thread's allocations, and a thread an
    earlier test left running would be charged to the reader."""

    here = Path(__file__).parent
    code = (f"import sys, json; sys.path[:0] = [{str(here)!r}, {str(here / 'fixtures')!r}]\n"
            "from pathlib import Path; import test_sentinel2 as t\n"
            f"print(json.dumps(t._iter_windows_peaks(Path({str(tmp_path)!r}))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    peaks = json.loads(r.stdout.strip().splitlines()[-1])
    # 16x more pixels, but the peak is one window (6 x 32 x 32 float32 + mask) either way
    assert peaks[1] < 1.5 * peaks[0] + 50_000, peaks
    assert peaks[1] < 6 * 256 * 256 * 4 / 4  # far below the whole scene's array


def test_product_reader_reads_many_windows_like_read_window(products):
    p = s2.open_l2a(products["safe"])
    whole = s2.read_window(p)
    with s2.ProductReader(p) as reader:
        parts = [reader.read(w) for w in s2.grid_windows(p.height, p.width, 24)]
    assert len(parts) == 9  # 64 px in windows of 24: 3 x 3
    for wd in parts:
        r, c = int(wd.window.row_off), int(wd.window.col_off)
        h, w = wd.mask.shape
        np.testing.assert_array_equal(wd.x, whole.x[:, r:r + h, c:c + w])
        np.testing.assert_array_equal(wd.mask, whole.mask[r:r + h, c:c + w])


# --------------------------------------------------------------------------- patches
def test_extract_patches_scl_counts_mask_and_blocks(products):
    p = s2.open_l2a(products["cogs"], )
    ps = s2.extract_patches(p, "scl", patch_size=8, n_per_class=20, seed=1, block_size=16,
                            progress=False)
    assert ps.classes == ["vegetation", "not_vegetated"]
    assert ps.meta["source"] == p.path.name  # under the data root as data:<rel>, else by name: no machine path
    assert ps.x.shape[1:] == (8, 8, 6) and ps.x.dtype == np.float32
    assert np.bincount(ps.y).tolist() == [20, 20]
    per = {d["class"]: d for d in ps.meta["per_class"]}
    # 8x8 cells: 64; the cloud covers 4 bare cells, cirrus 1 vegetation cell: SCL labels
    # nothing there, so those cells are unlabelled (not "dropped")
    assert per["not_vegetated"]["labelled_cells"] == 28
    assert per["vegetation"]["labelled_cells"] == 31
    assert per["vegetation"]["dropped_masked"] == 0
    # nodata never leaks: no patch overlaps the cloud, every value is a real reflectance
    assert (ps.x > 0.01).all()
    r0, r1, c0, c1 = fx.cloud_box_10m(SIZE)
    left0, top0 = fx.ORIGIN
    cloud = (left0 + c0 * 10, top0 - r1 * 10, left0 + c1 * 10, top0 - r0 * 10)
    overl = ((ps.bounds[:, 0] < cloud[2]) & (ps.bounds[:, 2] > cloud[0])
             & (ps.bounds[:, 1] < cloud[3]) & (ps.bounds[:, 3] > cloud[1]))
    assert not overl.any()
    # labels agree with the scene: vegetation patches have high NDVI
    nd = s2.ndvi(ps.x, ps.bands).mean(axis=(1, 2))
    assert (nd[ps.y == 0] > 0.7).all() and (nd[ps.y == 1] < 0.2).all()
    # spatially disjoint: one split per block, all three splits used
    df = pd.DataFrame({"b": ps.block, "s": ps.split})
    assert (df.groupby("b")["s"].nunique() == 1).all()
    assert set(ps.split) == {"train", "val", "test"}
    # same seed -> same patch set
    again = s2.extract_patches(p, "scl", patch_size=8, n_per_class=20, seed=1, block_size=16,
                               progress=False)
    assert again.hash == ps.hash


def test_ndvi_screening_drops_and_reports(products):
    p = s2.open_l2a(products["cogs"])
    ps = s2.extract_patches(p, {4: "veg", 5: "bare"}, patch_size=8, n_per_class=50,
                            ndvi_ambiguous=(0.0, 0.5), block_size=16, progress=False)
    per = {d["class"]: d for d in ps.meta["per_class"]}
    assert per["bare"]["dropped_ndvi_ambiguous"] == 28  # bare NDVI ~0.07: all screened
    assert per["veg"]["dropped_ndvi_ambiguous"] == 0
    assert per["bare"]["sampled"] == 0 and per["veg"]["sampled"] == 31


def test_extract_patches_geojson_and_raster_labels(products, tmp_path):
    p = s2.open_l2a(products["cogs"])
    left0, top0 = fx.ORIGIN
    pts = [(left0 + 10 * c + 5, top0 - 10 * r - 5, "crop" if c < 32 else "soil")
           for r in range(4, 64, 8) for c in range(4, 64, 8)]
    gj = {"type": "FeatureCollection",
          "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32634"}},
          "features": [{"type": "Feature", "properties": {"class": k},
                        "geometry": {"type": "Point", "coordinates": [x, y]}} for x, y, k in pts]}
    f = tmp_path / "pts.geojson"
    f.write_text(json.dumps(gj))
    ps = s2.extract_patches(p, f, patch_size=8, n_per_class=10, block_size=16, progress=False)
    assert ps.classes == ["crop", "soil"] and np.bincount(ps.y).tolist() == [10, 10]
    nd = s2.ndvi(ps.x, ps.bands).mean(axis=(1, 2))
    assert (nd[ps.y == 0] > 0.7).all()
    # polygons in WGS84 lon/lat (RFC 7946 default): reprojected to the scene's UTM zone
    from rasterio.warp import transform as warp_transform

    def ring(c0, c1):
        xs = [left0 + 10 * c0, left0 + 10 * c1, left0 + 10 * c1, left0 + 10 * c0, left0 + 10 * c0]
        ys = [top0, top0, top0 - 640, top0 - 640, top0]
        lon, lat = warp_transform(fx.CRS, "EPSG:4326", xs, ys)
        return [list(zip(lon, lat, strict=True))]

    poly = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"lc": "veg"},
         "geometry": {"type": "Polygon", "coordinates": ring(0, 32)}},
        {"type": "Feature", "properties": {"lc": "bare"},
         "geometry": {"type": "Polygon", "coordinates": ring(32, 64)}}]}
    fp = tmp_path / "poly.geojson"
    fp.write_text(json.dumps(poly))
    ps3 = s2.extract_patches(p, fp, label_field="lc", patch_size=8, n_per_class=8, block_size=16,
                             progress=False)
    assert ps3.classes == ["bare", "veg"] and np.bincount(ps3.y).tolist() == [8, 8]
    nd3 = s2.ndvi(ps3.x, ps3.bands).mean(axis=(1, 2))
    assert (nd3[ps3.y == 1] > 0.7).all() and (nd3[ps3.y == 0] < 0.2).all()
    per3 = {d["class"]: d for d in ps3.meta["per_class"]}
    assert per3["bare"]["dropped_masked"] == 4 and per3["veg"]["dropped_masked"] == 1
    # label raster in another resolution, reprojected nearest
    lab = np.zeros((32, 32), np.uint8)
    lab[:, :16], lab[:, 16:] = 1, 2
    rf = tmp_path / "lab.tif"
    with rasterio.open(rf, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8",
                       crs=fx.CRS, nodata=0,
                       transform=rasterio.transform.from_origin(*fx.ORIGIN, 20, 20)) as d:
        d.write(lab, 1)
    ps2 = s2.extract_patches(p, rf, classes={1: "veg", 2: "bare"}, patch_size=8, n_per_class=5,
                             block_size=16, progress=False)
    assert np.bincount(ps2.y).tolist() == [5, 5]
    per = {d["class"]: d for d in ps2.meta["per_class"]}
    # the label raster also covers the clouds: 4 bare and 1 vegetation cell are dropped
    assert per["bare"]["dropped_masked"] == 4 and per["veg"]["dropped_masked"] == 1
    assert per["bare"]["labelled_cells"] == 32
    # a class of the label file that never falls on the scene is named (SCL's may be absent)
    with pytest.raises(ValueError, match=r"class\(es\) \['water'\] of label raster .*lab.tif.* no labelled"):
        s2.extract_patches(p, rf, classes={1: "veg", 2: "bare", 3: "water"}, patch_size=8, n_per_class=5,
                           block_size=16, progress=False)
    # labels outside the scene
    gj["features"] = gj["features"][:2]
    for ft in gj["features"]:
        ft["geometry"]["coordinates"] = [0.0, 0.0]
    f.write_text(json.dumps(gj))
    with pytest.raises(ValueError, match="outside the scene"):
        s2.extract_patches(p, f, patch_size=8, progress=False)


def test_extract_patches_errors(products, tmp_path):
    p = s2.open_l2a(products["cogs"])
    with pytest.raises(ValueError, match="patch_size=128 is larger than the scene"):
        s2.extract_patches(p, "scl", patch_size=128, progress=False)
    with pytest.raises(ValueError, match="block_size"):
        s2.extract_patches(p, "scl", patch_size=8, block_size=12, progress=False)
    with pytest.raises(ValueError, match="SCL codes \\[9\\]"):
        s2.extract_patches(p, {9: "cloud"}, patch_size=8, progress=False)
    d = fx.make_cog_product(tmp_path / "cloudy", 32)
    with rasterio.open(d / "SCL.tif", "r+") as dst:
        dst.write(np.full((1, 16, 16), 9, np.uint8))
    with pytest.raises(ValueError, match="every pixel is masked"):
        s2.extract_patches(s2.open_l2a(d), {5: "x"}, patch_size=8, progress=False)


def test_patchset_save_load_roundtrip(products, tmp_path):
    p = s2.open_l2a(products["cogs"])
    ps = s2.extract_patches(p, "scl", patch_size=8, n_per_class=10, block_size=16, progress=False)
    path = s2.save_patchset(ps, tmp_path / "sub" / "set")
    assert path.name == "set.npz" and (tmp_path / "sub" / "set.json").exists()
    back = s2.load_patchset(tmp_path / "sub" / "set")
    assert back.hash == ps.hash and back.classes == ps.classes and back.bands == ps.bands
    np.testing.assert_array_equal(back.x, ps.x)
    assert back.meta["per_class"] == ps.meta["per_class"]
    mean, std = s2.band_stats(back)
    assert len(mean) == 6 and all(s > 0 for s in std)


# --------------------------------------------------------------------------- EuroSAT MS
def _fake_eurosat(n_per_class: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_per_class * len(EUROSAT_CLASSES)
    labels = np.repeat(np.arange(len(EUROSAT_CLASSES)), n_per_class)
    images = rng.integers(1, 5000, (n, 64, 64, 13), dtype=np.uint16)
    x = rng.uniform(300000, 700000, n)
    y = rng.uniform(4.5e6, 5.5e6, n)
    geo = pd.DataFrame({"crs": np.where(np.arange(n) % 2, "EPSG:32631", "EPSG:32632"),
                        "x": x, "y": y, "left": x - 320, "bottom": y - 320, "right": x + 320,
                        "top": y + 320})
    return SimpleNamespace(name="eurosat_ms", classes=list(EUROSAT_CLASSES), labels=labels,
                           images=images, bands=EUROSAT_MS_BANDS, hash="fake", geo=geo,
                           files=[f"f{i}.tif" for i in range(n)])


def test_eurosat_ms_patchset_quadrants_and_split():
    ds = _fake_eurosat()
    ps = s2.eurosat_ms_patchset(ds, "binary", patch_size=32, seed=0)
    n = len(ds.labels)
    assert ps.x.shape == (4 * n, 32, 32, 6) and ps.classes == ["non_vegetation", "vegetation"]
    b08 = EUROSAT_MS_BANDS.index("B08")
    # quadrant 1 of image 0 = rows 0..31, cols 32..63, band B08, /10000
    np.testing.assert_allclose(ps.x[1, :, :, 3], ds.images[0, :32, 32:, b08] / 10000.0)
    veg = np.isin(np.asarray(ds.classes)[ds.labels], s2.EUROSAT_VEGETATION_CLASSES)
    np.testing.assert_array_equal(ps.y, np.repeat(veg.astype(int), 4))
    # the four quadrants of an image share block and split
    assert (ps.split.reshape(n, 4) == ps.split.reshape(n, 4)[:, :1]).all()
    df = pd.DataFrame({"b": ps.block, "s": ps.split})
    assert (df.groupby("b")["s"].nunique() == 1).all()
    assert {c.rsplit(":", 2)[0] for c in ps.block} == {"EPSG:32631", "EPSG:32632"}
    np.testing.assert_allclose(ps.bounds[0], [ds.geo.left[0], ds.geo.y[0], ds.geo.x[0],
                                              ds.geo.top[0]])
    multi = s2.eurosat_ms_patchset(ds, "multiclass", patch_size=64)
    assert multi.x.shape == (n, 64, 64, 6) and multi.classes == list(EUROSAT_CLASSES)
    with pytest.raises(ValueError, match="unknown task 'binar'"):
        s2.eurosat_ms_patchset(ds, "binar")
    with pytest.raises(ValueError, match="patch_size=48"):
        s2.eurosat_ms_patchset(ds, patch_size=48)


# --------------------------------------------------------------------------- BigEarthNet example
def _fake_wheel(tmp_path: Path) -> Path:
    """A stand-in for the bigearthnet-common wheel: one synthetic patch in the example tarball."""
    src = fx.make_bigearthnet_patch(tmp_path / "src", 120)
    tar = tmp_path / "BigEarthNet-S2-Example.tar.bz2"
    with tarfile.open(tar, "w:bz2") as tf:
        tf.add(src, arcname=f"BigEarthNet-S2-Example/{src.name}")
    wheel = tmp_path / "wheels" / "bigearthnet_common-2.8.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(tar, "bigearthnet_common/BigEarthNet-S2-Example.tar.bz2")
    return wheel


def test_bigearthnet_example_dir_unpacks_a_local_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(s2.adapters, "_installed_archive", lambda: None)
    with pytest.raises(FileNotFoundError,
                       match=r"pip download --no-deps bigearthnet-common==2\.8\.0 -d .*empty"):
        s2.bigearthnet_example_dir(cache=tmp_path / "empty")
    wheel = _fake_wheel(tmp_path)
    # the wheel itself, or the folder pip download put it in
    for source, cache in ((wheel, tmp_path / "c1"), (wheel.parent, tmp_path / "c2")):
        folder = s2.bigearthnet_example_dir(source, cache=cache)
        assert folder == cache / "patches"
        patches = s2.bigearthnet_patches(folder)
        assert [q.name for q in patches] == ["S2A_MSIL2A_20170613T101031_0_45"]
        assert s2.open_l2a(patches[0]).shape == (120, 120)
        assert sorted(q.name for q in cache.iterdir()) == ["patches"]  # no temporary left
    # once unpacked, the cache answers without a source; an extracted folder is used as is
    assert s2.bigearthnet_example_dir(cache=tmp_path / "c1") == tmp_path / "c1" / "patches"
    assert s2.bigearthnet_example_dir(tmp_path / "c1" / "patches") == tmp_path / "c1" / "patches"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="neither BigEarthNet patches nor"):
        s2.bigearthnet_example_dir(tmp_path / "nothing")


# --------------------------------------------------------------------------- real data
needs_data = pytest.mark.skipif(not TILE.exists(), reason=f"real data not found at {SHARED}")


@pytest.mark.integration
@needs_data
def test_real_tile_mask_matches_scl_cloud_share(tmp_path):
    p = s2.open_l2a(TILE)
    assert p.shape == (1098, 1098) and p.crs.to_epsg() == 32629
    rep = s2.write_aligned(p, tmp_path / "t.tif", window_size=512, progress=False)
    with rasterio.open(TILE / "SCL.tif") as src:
        scl = src.read(1)
    share = np.isin(scl, SCL_MASK_CLASSES).mean()
    assert rep["masked_fraction"] == pytest.approx(share, abs=1e-12)
    assert rep["masked_fraction"] == pytest.approx(0.0406, abs=1e-3)
    assert s2.raster_masked_fraction(tmp_path / "t.tif") == pytest.approx(share, abs=1e-12)


@pytest.mark.integration
def test_bigearthnet_example_patches_read():
    """The six real example patches; the test (never the package) fetches the wheel once."""
    from lcc_utils.paths import cache_dir

    try:
        folder = s2.bigearthnet_example_dir()
    except FileNotFoundError:
        wheels = cache_dir() / "bigearthnet-example"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            s2.adapters.BIGEARTHNET_EXAMPLE_WHEEL, "-d", str(wheels)],
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            pytest.skip(f"offline: pip download {s2.adapters.BIGEARTHNET_EXAMPLE_WHEEL} failed: "
                        f"{r.stderr.strip()[-300:]}")
        folder = s2.bigearthnet_example_dir()
    patches = s2.bigearthnet_patches(folder)
    assert len(patches) == 6
    p = s2.open_l2a(patches[0])
    assert p.shape == (120, 120) and p.resolution == 10.0
    wd = s2.read_window(p)
    assert 0 < float(np.median(wd.x[3])) < 1.0


def test_eurosat_blocks_buffer_and_distances():
    ds = _fake_eurosat(n_per_class=10)
    ps = s2.eurosat_ms_patchset(ds, "binary", block_size_m=50000)
    d = ps.meta["split_distances"]
    assert set(d) == {"val", "test"} and d["test"]["min_distance_m"] > 0
    buf = s2.eurosat_ms_patchset(ds, "binary", block_size_m=50000, buffer_m=60000)
    assert buf.meta["dropped_buffer_images"] > 0
    assert len(buf) == len(ps) - 4 * buf.meta["dropped_buffer_images"]
    for s in ("val", "test"):  # no training image within the buffer any more
        assert buf.meta["split_distances"][s]["min_distance_m"] >= 60000
    with pytest.raises(ValueError, match="block_size_m=1e\\+07 leaves 2 spatial block"):
        s2.eurosat_ms_patchset(ds, "binary", block_size_m=1e7)
    with pytest.raises(ValueError, match="buffer_m=-1"):
        s2.eurosat_ms_patchset(ds, "binary", buffer_m=-1)


def test_aligned_geotiff_has_overviews_and_float_predictor(tmp_path):
    p = s2.open_l2a(fx.make_cog_product(tmp_path / "big", 600))
    out = tmp_path / "aligned.tif"
    rep = s2.write_aligned(p, out, window_size=512, progress=False)
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2] == rep["overviews"]  # down to >= 256 px
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"


def test_block_size_larger_than_scene_is_named(products):
    p = s2.open_l2a(products["cogs"])
    with pytest.raises(ValueError, match="block_size=4096 px is larger than the scene"):
        s2.extract_patches(p, "scl", patch_size=16, n_per_class=5, block_size=4096)


def test_nir_falls_back_to_b8a_and_no_nir_is_named():
    from lcc_utils import baselines, spectral

    assert spectral.nir_band(["B02", "B04", "B08", "B8A"]) == "B08"
    assert spectral.nir_band(["B02", "B04", "B8A"]) == "B8A"
    with pytest.raises(ValueError, match=r"S2_60m.SAFE has no near-infrared band \(B08 or B8A\)"):
        spectral.nir_band(["B02", "B04", "B11"], where="S2_60m.SAFE")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.4, (3, 4, 4, 3)).astype(np.float32)
    with_b8a = baselines.patch_ndvi(x, ["B03", "B04", "B8A"])
    np.testing.assert_allclose(with_b8a, baselines.patch_ndvi(x, ["B03", "B04", "B08"]))
    f = baselines.spectral_features(x, ["B03", "B04", "B8A"])
    assert "ndvi" in f and "ndwi" in f and f.attrs["skipped_indices"] == ["ndbi"]  # no B11


def test_eurosat_image_without_georeference_is_named():
    ds = _fake_eurosat()
    ds.geo.loc[3, "crs"] = ""  # what data.load_dataset records for a GeoTIFF without a CRS
    with pytest.raises(ValueError, match="no georeference .* f3.tif"):
        s2.eurosat_ms_patchset(ds, "binary")


def test_the_band_in_another_crs_is_blamed_even_when_finest(tmp_path):
    # B11 reprojected by hand to another zone at 10 m: it is the finest band, but the odd one out
    d = fx.make_cog_product(tmp_path / "reproj", 32)
    fx._write(d / "B11.tif", np.ones((32, 32), np.uint16), 10.0, crs="EPSG:32633")
    with pytest.raises(ValueError, match=r"band\(s\) B11 \(.*B11.tif: CRS EPSG:32633\) differ from the CRS"):
        s2.open_l2a(d)


# --------------------------------------------------------------------------- a product without B08 (issue 23)
def test_a_product_without_b08_is_read_with_b8a_in_its_place(tmp_path):
    """A 60 m-only SAFE (R60m: B8A, no B08) under the default bands: B8A at B08's place, said so."""
    safe = fx.make_safe_product_60m(tmp_path / "S2A_MSIL2A_60M.SAFE", 96)
    p = s2.open_l2a(safe)
    assert p.bands == ("B02", "B03", "B04", "B8A", "B11", "B12") and p.band_substitutions == {"B08": "B8A"}
    assert p.sources["B8A"][0].name.endswith("_B8A_60m.jp2") and p.resolution == 60.0 and p.shape == (16, 16)
    assert p.describe()["band_substitutions"] == {"B08": "B8A"} and p.describe()["resolution"] == 60.0
    rep = s2.write_aligned(p, tmp_path / "aligned.tif", progress=False)
    with rasterio.open(tmp_path / "aligned.tif") as src:
        assert src.descriptions[3] == "B8A" and abs(src.transform.a) == 60.0
    assert rep["bands"][3] == "B8A"
    ps = s2.extract_patches(p, "scl", patch_size=2, n_per_class=20, block_size=4)
    assert ps.bands[3] == "B8A" and ps.meta["nir_band"] == "B8A"
    # the vegetation half is vegetation by B8A's NDVI as it would be by B08's
    wd = s2.read_window(p)
    assert float(np.median(s2.ndvi(wd.x, p.bands, axis=0)[4:12, 1:6])) > 0.8
    # a product with B08 is read as before; asking for B8A itself never swaps anything
    assert s2.open_l2a(fx.make_safe_product(tmp_path / "full.SAFE", 32)).band_substitutions == {}
    assert s2.open_l2a(safe, ["B04", "B8A"]).band_substitutions == {}
    cogs = fx.make_cog_product(tmp_path / "cogs", 32)  # a cogs folder cut to 20 m NIR the same way
    h = s2.product_hash(s2.open_l2a(cogs))
    (cogs / "B08.tif").unlink()
    q = s2.open_l2a(cogs)
    assert q.bands[3] == "B8A" and q.resolution == 10.0 and s2.product_hash(q) != h


def test_a_product_without_b08_or_b8a_names_the_product_the_band_and_what_to_pass(tmp_path):
    safe = fx.make_safe_product_60m(tmp_path / "S2A_MSIL2A_60M.SAFE", 96)
    next(safe.rglob("*_B8A_60m.jp2")).unlink()
    with pytest.raises(s2.MissingBandError) as err:
        s2.open_l2a(safe)
    assert str(err.value) == (
        f"{safe}: band B08 is not in this product (B08's stand-in B8A is missing too); it has B02, B03, B04, B05, "
        "B06, B07, B11, B12. Pass bands it has instead, e.g. bands=['B02', 'B03', 'B04', 'B11', 'B12'] "
        """(papermill: -y '{"bands": ["B02", "B03", "B04", "B11", "B12"]}')""")
    # B8A asked for beside B08 cannot stand in for it; still a FileNotFoundError, as a missing band was
    with pytest.raises(FileNotFoundError, match=r"band B08 is not in this product \(B08's stand-in B8A is "
                                                r"requested already\).* bands=\['B02', 'B8A'\]"):
        s2.open_l2a(fx.make_safe_product_60m(tmp_path / "b" / "S2A_MSIL2A_60M.SAFE", 96), ["B02", "B08", "B8A"])


def _mask_check_error(product, tmp_path):
    rep = s2.write_aligned(product, tmp_path / "aligned.tif", progress=False)
    with pytest.raises(s2.MaskCheckError) as err:
        s2.check_aligned_mask(product, tmp_path / "aligned.tif", rep)
    return str(err.value)


def test_the_mask_check_names_the_product_and_what_differs(tmp_path):
    safe = fx.make_safe_product_60m(tmp_path / "S2A_MSIL2A_60M.SAFE", 96)
    good = s2.open_l2a(safe)
    rep = s2.write_aligned(good, tmp_path / "good.tif", progress=False)
    check = s2.check_aligned_mask(good, tmp_path / "good.tif", rep)
    assert check["match"] and check["grid_m"] == 60.0 and check["scl_m"] == 60.0
    assert check["masked_fraction"] == check["scl_masked_share"] == rep["masked_fraction"] > 0

    # band nodata where SCL says clear: 4 pixels of B02 read 0
    b02 = next(safe.rglob("*_B02_60m.jp2"))
    with rasterio.open(b02) as src:
        a = src.read(1)
    a[6:8, 2:4] = 0
    fx._write(b02, a, 60.0, driver="JP2OpenJPEG")
    msg = _mask_check_error(s2.open_l2a(safe), tmp_path)
    assert msg.startswith("S2A_MSIL2A_60M.SAFE: the mask check of the aligned GeoTIFF aligned.tif failed on the 60 m "
                          "grid: 9.3750% of its pixels are masked, but SCL's masked classes cover 7.8125% of the "
                          "native 60 m SCL (4 pixel(s) hold band nodata where SCL says the pixel is usable). The "
                          "patches would rest on a mask the run cannot vouch for, so it stops: repair or replace the "
                          "band files, or leave the band out"), msg

    # SCL at 20 m on the 60 m grid (nearest keeps one SCL pixel in nine): a cloud column is lost
    safe = fx.make_safe_product_60m(tmp_path / "b" / "S2A_MSIL2A_60M.SAFE", 96)
    next(safe.rglob("*_SCL_60m.jp2")).unlink()
    scl = fx.scene_arrays(96)["SCL"]
    scl[:, 0] = 8  # cloud medium probability on the first 20 m column only
    r20 = next(safe.glob("GRANULE/*/IMG_DATA")) / "R20m"
    r20.mkdir()
    fx._write(r20 / "T34TFK_20230601T100000_SCL_20m.jp2", scl, 20.0, driver="JP2OpenJPEG")
    msg = _mask_check_error(s2.open_l2a(safe), tmp_path / "b")
    assert ("failed on the 60 m grid: 7.8125% of its pixels are masked, but SCL's masked classes cover 9.6354% of "
            "the native 20 m SCL (resampled by nearest neighbour onto the 60 m grid, the 20 m SCL's masked classes "
            "cover 7.8125%: the grid does not refine the 20 m SCL by a whole factor)") in msg, msg
    assert msg.endswith("so it stops: open the product on a grid that refines its SCL (bands of 20 m or a whole "
                        "fraction of it)")
