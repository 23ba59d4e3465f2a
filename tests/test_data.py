import hashlib
import os
import shutil
import time
import zipfile

import numpy as np
import pytest
import torch

from lcc_utils import constants as C
from lcc_utils import data


# ----------------------------------------------------------------------------- loading
def test_load_synthetic_eurosat(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat", synthetic_root, download=False)
    assert len(ds) == 160 and ds.images.shape == (160, 64, 64, 3) and ds.images.dtype == np.uint8
    assert ds.class_counts()["images"].tolist() == [16] * 10
    assert isinstance(ds.images, np.memmap)
    # the second load reads the cache: same hash, same pixels
    again = data.load_dataset("eurosat", synthetic_root, download=False)
    assert again.hash == ds.hash and np.array_equal(np.asarray(again.images), np.asarray(ds.images))
    assert len(list((tmp_cache / "decoded").glob("eurosat-*.raw"))) == 1


def test_two_loads_at_once_decode_a_dataset_once(synthetic_root, tmp_cache, monkeypatch):
    """A second process (here: thread) asking for a dataset being decoded waits and reads the cache."""
    import threading
    import time

    calls, real = [], data._decode_all

    def slow_decode(*a, **k):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # both loads are inside load_dataset while the first decodes
        return real(*a, **k)

    monkeypatch.setattr(data, "_decode_all", slow_decode)
    out = []
    threads = [threading.Thread(target=lambda: out.append(data.load_dataset("eurosat", synthetic_root, download=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and len(calls) == 1
    assert np.array_equal(out[0].images, out[1].images) and out[0].hash == out[1].hash


def test_ucmerced_odd_sizes_are_resized_and_reported(synthetic_root, tmp_cache):
    ds = data.load_dataset("ucmerced", synthetic_root, download=False)
    assert ds.images.shape == (42, 256, 256, 3)
    assert ds.resized == ["agricultural/agricultural00.tif"]


def test_eurosat_ms_is_uint16_with_geo(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat_ms", synthetic_root, download=False)
    assert ds.images.shape == (40, 64, 64, 13) and ds.images.dtype == np.uint16
    assert set(ds.geo["crs"]) == {"EPSG:32631", "EPSG:32632"}
    assert ds.bands == C.EUROSAT_MS_BANDS and ds.bands[-1] == "B8A"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupt_jpeg_names_the_file(synthetic_root, tmp_path, tmp_cache):
    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    bad = root / C.DATASET_SUBDIRS["eurosat"] / "Forest" / "Forest_2.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    with pytest.raises(data.BadImageError, match="Forest_2.jpg"):
        data.load_dataset("eurosat", root, download=False)
    with pytest.warns(UserWarning, match=r"skipped 1 bad file.*Forest/Forest_2.jpg"):
        ds = data.load_dataset("eurosat", root, on_bad="skip", download=False)
    assert len(ds) == 159 and ds.skipped[0][0] == "Forest/Forest_2.jpg"


@pytest.mark.parametrize("case, match", [
    ("wrong_size", "wrong size 32x32"),
    ("unknown_class", "unknown class folder.*Airport"),
    ("empty_class", "River is empty"),
    ("stray_file", "notes.txt: not an image file"),
])
def test_bad_trees_raise_clear_errors(synthetic_root, tmp_path, tmp_cache, case, match):
    from PIL import Image

    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    folder = root / C.DATASET_SUBDIRS["eurosat"]
    if case == "wrong_size":
        Image.new("RGB", (32, 32)).save(folder / "Pasture" / "Pasture_1.jpg")
    elif case == "unknown_class":
        (folder / "Airport").mkdir()
    elif case == "empty_class":
        for f in (folder / "River").iterdir():
            f.unlink()
    else:
        (folder / "SeaLake" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=match):
        data.load_dataset("eurosat", root, download=False)


def test_ms_wrong_band_count(synthetic_root, tmp_path, tmp_cache):
    import rasterio

    root = _copy(synthetic_root / "eurosat-ms", tmp_path / "d" / "eurosat-ms").parent
    f = root / C.DATASET_SUBDIRS["eurosat_ms"] / "Forest" / "Forest_1.tif"
    with rasterio.open(f, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16") as dst:
        dst.write(np.zeros((3, 64, 64), np.uint16))
    with pytest.raises(data.BadImageError, match="Forest_1.tif: 3 bands, eurosat_ms needs 13"):
        data.load_dataset("eurosat_ms", root, download=False)


def test_bad_parameters(synthetic_root, tmp_cache):
    with pytest.raises(ValueError, match="unknown dataset 'eurosatt'; choose one of: eurosat, eurosat_ms, ucmerced"):
        data.load_dataset("eurosatt", synthetic_root)
    with pytest.raises(ValueError, match="on_bad='ignore'"):
        data.load_dataset("eurosat", synthetic_root, on_bad="ignore")
    ds = data.load_dataset("eurosat", synthetic_root)
    with pytest.raises(ValueError, match="test_fraction=1.2"):
        data.get_split(ds, test_fraction=1.2)
    with pytest.raises(ValueError, match="unknown split kind 'random'"):
        data.get_split(ds, kind="random")
    with pytest.raises(ValueError, match="kind='spatial' needs georeferenced"):
        data.get_split(ds, kind="spatial")
    with pytest.raises(ValueError, match="test_fraction=0.02 leaves 3 image"):
        data.get_split(ds, test_fraction=0.02)


def test_missing_dataset_offline_says_what_to_download(tmp_path, tmp_cache):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_dataset("ucmerced", tmp_path / "nothing", download=False)
    msg = str(e.value)
    assert "UCMerced_LandUse.zip" in msg and "weegee.vision.ucmerced.edu" in msg
    assert str(tmp_path / "nothing" / "ucmerced") in msg


def test_a_misspelled_data_root_is_named_and_never_created(tmp_path, tmp_cache, monkeypatch):
    wrong = tmp_path / "shraed" / "data"
    monkeypatch.setattr(data, "_download", lambda *a, **k: pytest.fail("downloaded into a misspelled root"))
    with pytest.raises(data.DatasetNotFoundError, match=r"data root .*shraed/data \(from data_dir\) does not exist"):
        data.load_dataset("eurosat", str(wrong))
    monkeypatch.setenv("LCC_DATA_DIR", str(wrong))
    with pytest.raises(data.DatasetNotFoundError, match=r"\(from LCC_DATA_DIR\) does not exist"):
        data.fetch_dataset("eurosat")
    assert not (tmp_path / "shraed").exists(), "a misspelled data root was created"


def test_archive_is_verified_then_extracted(synthetic_root, tmp_path, tmp_cache, monkeypatch):
    root = tmp_path / "fresh"
    (root / "archives").mkdir(parents=True)
    zpath = root / "archives" / "EuroSAT.zip"
    src = synthetic_root / "eurosat"
    with zipfile.ZipFile(zpath, "w") as zf:  # the official zip holds 2750/<Class>/...
        for f in sorted(src.rglob("*.jpg")):
            zf.write(f, f.relative_to(src))
    good = {"md5": hashlib.md5(zpath.read_bytes()).hexdigest(),
            "sha256": hashlib.sha256(zpath.read_bytes()).hexdigest()}
    monkeypatch.setitem(C.DATASET_ARCHIVES, "eurosat", {**C.DATASET_ARCHIVES["eurosat"], **good, "sha256": "0" * 64})
    with pytest.raises(data.BadImageError, match="fails its sha256 check"):
        data.load_dataset("eurosat", root, download=False)
    monkeypatch.setitem(C.DATASET_ARCHIVES, "eurosat", {**C.DATASET_ARCHIVES["eurosat"], **good})
    ds = data.load_dataset("eurosat", root, download=False)
    assert len(ds) == 160 and (root / "eurosat" / "2750" / "Forest").is_dir()


# ----------------------------------------------------------------------------- content hash
def _content_hash_from_scratch(folder, files):
    """The documented formula, recomputed without the package: sha256 over (path, sha256 of bytes)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}\t{hashlib.sha256((folder / f).read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:16]


@pytest.fixture(params=["racy_window", "indexed"])
def index_mode(request, monkeypatch):
    """Both paths of the fingerprint index: files too fresh to be indexed, and indexed files."""
    from lcc_utils import fingerprints

    if request.param == "indexed":
        monkeypatch.setattr(fingerprints, "RACY_WINDOW_NS", 0)
    return request.param


def _tick():
    time.sleep(0.02)  # a later timestamp even where the filesystem's clock is coarse


def test_same_size_in_place_geotiff_edit_changes_hash_and_pixels(synthetic_root, tmp_path, tmp_cache, index_mode):
    import rasterio
    from rasterio.windows import Window

    from lcc_utils import fingerprints

    root = _copy(synthetic_root / "eurosat-ms", tmp_path / "d" / "eurosat-ms").parent
    folder = root / C.DATASET_SUBDIRS["eurosat_ms"]
    ds = data.load_dataset("eurosat_ms", root, download=False)
    assert ds.hash == _content_hash_from_scratch(folder, ds.files)
    indexed = fingerprints.index_path(folder).exists()
    assert indexed == (index_mode == "indexed")
    i = ds.files.index("Forest/Forest_2.tif")
    before = np.asarray(ds.images[i]).copy()
    f, size = folder / ds.files[i], (folder / ds.files[i]).stat().st_size
    _tick()
    with rasterio.open(f, "r+") as dst:  # rewrite a 4x4 block of band 1 in place
        dst.write(np.full((4, 4), 7, np.uint16), 1, window=Window(0, 0, 4, 4))
    assert f.stat().st_size == size
    again = data.load_dataset("eurosat_ms", root, download=False)
    assert again.hash != ds.hash and again.hash == _content_hash_from_scratch(folder, again.files)
    after = np.asarray(again.images[i])
    assert (after[:4, :4, 0] == 7).all() and (before[:4, :4, 0] != 7).all()
    assert np.array_equal(after[4:], before[4:]) and np.array_equal(after[..., 1:], before[..., 1:])
    assert len(list((tmp_cache / "decoded").glob("eurosat_ms-*.raw"))) == 2


def test_same_size_jpeg_corruption_changes_hash_and_pixels(synthetic_root, tmp_path, tmp_cache, index_mode):
    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    f = root / C.DATASET_SUBDIRS["eurosat"] / "Forest" / "Forest_3.jpg"
    ds = data.load_dataset("eurosat", root, download=False)
    i = ds.files.index("Forest/Forest_3.jpg")
    before = np.asarray(ds.images[i]).copy()
    size = f.stat().st_size
    _tick()
    with open(f, "r+b") as fh:  # 32 zero bytes in the middle of the entropy-coded data
        fh.seek(size // 2)
        fh.write(bytes(32))
    assert f.stat().st_size == size
    again = data.load_dataset("eurosat", root, download=False)
    assert again.hash != ds.hash
    assert not np.array_equal(np.asarray(again.images[i]), before)
    others = [j for j in range(len(ds)) if j != i]
    assert np.array_equal(np.asarray(again.images[others]), np.asarray(ds.images[others]))


def test_a_fresh_copy_has_the_same_hash(synthetic_root, tmp_path, monkeypatch):
    """Other inodes, other mtimes, another cache (another machine): the same content hash."""
    monkeypatch.setenv("LCC_CACHE_DIR", str(tmp_path / "cache1"))
    ds = data.load_dataset("ucmerced", synthetic_root, download=False)
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_root / "ucmerced", copy / "ucmerced", copy_function=shutil.copyfile)
    for k, f in enumerate(sorted((copy / "ucmerced").rglob("*.tif"))):
        os.utime(f, ns=(10**18 + k, 10**18 + k))
    monkeypatch.setenv("LCC_CACHE_DIR", str(tmp_path / "cache2"))
    again = data.load_dataset("ucmerced", copy, download=False)
    assert again.hash == ds.hash == _content_hash_from_scratch(copy / C.DATASET_SUBDIRS["ucmerced"], ds.files)
    assert again.files == ds.files and np.array_equal(np.asarray(again.images), np.asarray(ds.images))


def test_verify_data_finds_edits_the_stat_key_cannot_see(synthetic_root, tmp_path, tmp_cache, monkeypatch):
    import json

    from lcc_utils import fingerprints

    monkeypatch.setattr(fingerprints, "RACY_WINDOW_NS", 0)
    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    folder = root / C.DATASET_SUBDIRS["eurosat"]
    ds = data.load_dataset("eurosat", root, download=False)
    assert data.main(["--verify", "eurosat", "--data-dir", str(root)]) == 0
    # a same-size edit with its mtime restored: ctime still moves, so verify and a load see it
    f = folder / "River" / "River_4.jpg"
    st = f.stat()
    _tick()
    with open(f, "r+b") as fh:
        fh.seek(st.st_size // 2)
        fh.write(bytes(16))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    t = data.verify_data(["eurosat"], root).set_index("data")
    assert t.loc["eurosat", ["files", "unchanged", "changed", "stale", "new"]].tolist() == [160, 159, 1, 0, 0]
    assert t.loc["eurosat", "changed_files"] == ["River/River_4.jpg"]
    edited = data.load_dataset("eurosat", root, download=False).hash
    assert edited != ds.hash and t.loc["eurosat", "hash"] == edited
    # a change the stat key cannot see (a filesystem that keeps timestamps): the index is made
    # to match the file's stat after another edit, as if nothing had moved
    with open(f, "r+b") as fh:
        fh.seek(st.st_size // 3)
        fh.write(bytes(16))
    idx = fingerprints.index_path(folder)
    doc = json.loads(idx.read_text())
    s2 = f.stat()
    doc["files"]["River/River_4.jpg"][:4] = [s2.st_size, s2.st_mtime_ns, s2.st_ctime_ns, s2.st_ino]
    idx.write_text(json.dumps(doc))
    assert data.load_dataset("eurosat", root, download=False).hash == edited  # the index lies
    assert data.main(["--verify", "eurosat", "--data-dir", str(root)]) == 1
    t = data.verify_data(["eurosat"], root).set_index("data")  # the index was rebuilt
    assert t.loc["eurosat", ["unchanged", "changed", "stale"]].tolist() == [160, 0, 0]
    assert data.load_dataset("eurosat", root, download=False).hash == _content_hash_from_scratch(folder, ds.files)


def test_verify_data_names_the_stale_file(synthetic_root, tmp_path, tmp_cache, monkeypatch, capsys):
    import json

    from lcc_utils import fingerprints

    monkeypatch.setattr(fingerprints, "RACY_WINDOW_NS", 0)
    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    folder = root / C.DATASET_SUBDIRS["eurosat"]
    data.load_dataset("eurosat", root, download=False)
    idx = fingerprints.index_path(folder)
    doc = json.loads(idx.read_text())
    doc["files"]["Highway/Highway_1.jpg"][4] = "0" * 64  # as if the content had moved under it
    idx.write_text(json.dumps(doc))
    capsys.readouterr()
    assert data.main(["--verify", "--data-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "stale: eurosat: Highway/Highway_1.jpg" in out and "1 file(s) changed behind" in out


def test_an_unwritable_index_costs_time_not_correctness(synthetic_root, tmp_cache, monkeypatch):
    from lcc_utils import fingerprints

    def fail(*a, **k):
        raise FileNotFoundError("the other process renamed it first")

    monkeypatch.setattr(fingerprints, "RACY_WINDOW_NS", 0)
    monkeypatch.setattr(fingerprints, "atomic_write", fail)
    folder = synthetic_root / C.DATASET_SUBDIRS["ucmerced"]
    files, _, _ = data.scan_folder(data.get_dataset_spec("ucmerced"), folder)
    with pytest.warns(UserWarning, match="fingerprint index of .* not written"):
        h = data.dataset_hash(folder, files)
    assert h == _content_hash_from_scratch(folder, files)
    assert not fingerprints.index_path(folder).exists()


# ----------------------------------------------------------------------------- decode reports
def test_converted_images_are_reported(synthetic_root, tmp_path, tmp_cache):
    from PIL import Image

    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    folder = root / C.DATASET_SUBDIRS["eurosat"]
    gray = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    Image.fromarray(gray).save(folder / "Forest" / "Forest_1.jpg", quality=100)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba).save(folder / "Forest" / "Forest_2.jpg", format="PNG")
    Image.fromarray(gray).convert("P").save(folder / "River" / "River_1.jpg", format="PNG")
    ds = data.load_dataset("eurosat", root, download=False)
    assert ds.converted == [
        ("Forest/Forest_1.jpg", "grayscale (L) converted to RGB"),
        ("Forest/Forest_2.jpg", "PNG content under a .jpg name; RGBA converted to RGB (alpha dropped)"),
        ("River/River_1.jpg", "PNG content under a .jpg name; palette (P) converted to RGB"),
    ]
    assert ds.resized == [] and ds.skipped == [] and len(ds) == 160
    px = np.asarray(ds.images[ds.files.index("Forest/Forest_2.jpg")])
    assert (px[..., 0] == 200).all() and (px[..., 1:] == 0).all()  # alpha dropped, not blended
    g = np.asarray(ds.images[ds.files.index("Forest/Forest_1.jpg")]).astype(int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    cached = data.load_dataset("eurosat", root, download=False)  # the cache meta keeps the report
    assert cached.converted == ds.converted


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_broken_symlink_is_a_bad_image(synthetic_root, tmp_path, tmp_cache, kind):
    root = _copy(synthetic_root / "eurosat", tmp_path / "d" / "eurosat").parent
    link = root / C.DATASET_SUBDIRS["eurosat"] / "Pasture" / "Pasture_99.jpg"
    os.symlink(link.name if kind == "loop" else "nowhere.jpg", link)
    assert not link.is_file()  # what Path.is_file answers for both: why scan_folder checks itself
    why = "Too many levels of symbolic links" if kind == "loop" else "its target does not exist"
    with pytest.raises(data.BadImageError, match=rf"Pasture_99.jpg: broken symbolic link \({why}\)"):
        data.load_dataset("eurosat", root, download=False)
    with pytest.warns(UserWarning, match=r"skipped 1 bad file.*Pasture/Pasture_99.jpg"):
        ds = data.load_dataset("eurosat", root, on_bad="skip", download=False)
    assert len(ds) == 160 and [s[0] for s in ds.skipped] == ["Pasture/Pasture_99.jpg"]
    assert why in ds.skipped[0][1]


# ----------------------------------------------------------------------------- splits
def test_stratified_split_is_disjoint_and_reproducible(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat", synthetic_root)
    s = data.get_split(ds, seed=3)
    allidx = np.concatenate([s.train, s.val, s.test])
    assert len(np.unique(allidx)) == len(ds) == len(allidx)
    assert len(s.test) == 32 and len(s.train) + len(s.val) == 128  # 80/20 of 160
    files = sorted((tmp_cache / "splits").glob("*.json"))
    assert len(files) == 1
    before = files[0].read_bytes()
    files[0].unlink()
    again = data.get_split(ds, seed=3)
    assert files[0].read_bytes() == before and again.hash == s.hash
    assert data.get_split(ds, seed=4).hash != s.hash


def test_spatial_split_keeps_blocks_together(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat_ms", synthetic_root)
    s = data.get_split(ds, seed=0, kind="spatial", block_size_m=20_000)
    groups = data.spatial_blocks(ds.geo, 20_000)
    parts = [set(groups[s.train]), set(groups[s.val]), set(groups[s.test])]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(s.train) + len(s.val) + len(s.test) == len(ds)


def test_corrupted_split_file_is_detected(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat", synthetic_root)
    data.get_split(ds, seed=0)
    f = next((tmp_cache / "splits").glob("*.json"))
    f.write_text(f.read_text().replace('"test": [', '"test": [0, '))
    with pytest.raises(ValueError, match="corrupt"):
        data.get_split(ds, seed=0)


# ----------------------------------------------------------------------------- batches
def test_batch_loader_resizes_normalises_and_is_deterministic(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat", synthetic_root)
    s = data.get_split(ds, seed=0)
    loaders = data.make_loaders(ds, s, image_size=96, batch_size=8, seed=1)
    tr = loaders["train"]
    assert len(tr) == -(-len(s.train) // 8)
    x, y, idx = next(iter(tr))
    assert x.shape == (8, 3, 96, 96) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(ds.labels[idx.numpy()]))
    x2, _, idx2 = next(iter(tr))
    assert torch.equal(x, x2) and torch.equal(idx, idx2)  # same epoch -> same batch
    tr.set_epoch(1)
    _, _, idx3 = next(iter(tr))
    assert not torch.equal(idx, idx3)
    seen = torch.cat([b[2] for b in tr])
    assert sorted(seen.tolist()) == sorted(s.train.tolist())
    # test loader: no augmentation, normalised with ImageNet statistics
    xt, _, it = next(iter(loaders["test"]))
    raw = torch.from_numpy(np.asarray(ds.images[it.numpy()])).permute(0, 3, 1, 2).float() / 255
    raw = torch.nn.functional.interpolate(raw, size=96, mode="bilinear", antialias=True)
    mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(xt, (raw - mean) / std, atol=1e-5)


def test_augmentation_changes_training_images(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat", synthetic_root)
    idx = np.arange(16)
    plain = next(iter(data.BatchLoader(ds.images, ds.labels, idx, 16)))[0]
    aug = next(iter(data.BatchLoader(ds.images, ds.labels, idx, 16, augment=True, seed=0)))[0]
    aug2 = next(iter(data.BatchLoader(ds.images, ds.labels, idx, 16, augment=True, seed=0)))[0]
    assert torch.equal(aug, aug2)
    changed = [(not torch.equal(plain[i], aug[i])) for i in range(16)]
    assert sum(changed) >= 8  # TrivialAugmentWide includes the identity op


def test_multispectral_batches_scale_to_reflectance(synthetic_root, tmp_cache):
    ds = data.load_dataset("eurosat_ms", synthetic_root)
    x, _, idx = next(iter(data.BatchLoader(ds.images, ds.labels, np.arange(4), 4)))
    assert x.shape == (4, 13, 64, 64)
    assert torch.allclose(x[0, 0], torch.from_numpy(ds.images[0][..., 0].astype(np.float32)) / 10000)
    xa = next(iter(data.BatchLoader(ds.images, ds.labels, np.arange(4), 4, augment=True)))[0]
    # flips/rotations only: every augmented patch holds the same multiset of values
    assert torch.allclose(xa.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_batch_loader_rejects_bad_input():
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size=0"):
        data.BatchLoader(imgs, np.zeros(4, int), np.arange(4), batch_size=0)
    with pytest.raises(ValueError, match="out of range"):
        data.BatchLoader(imgs, np.zeros(4, int), np.arange(5))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        data.BatchLoader(np.zeros((4, 8, 8)), np.zeros(4, int), np.arange(4))


# ----------------------------------------------------------------------------- real data
@pytest.mark.integration
def test_real_eurosat_counts_and_split(shared_data):
    ds = data.load_dataset("eurosat", shared_data, download=False)
    counts = dict(zip(ds.classes, ds.class_counts()["images"], strict=True))
    assert len(ds) == 27_000
    assert counts == {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500,
                      "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000,
                      "River": 2500, "SeaLake": 3000}
    s = data.get_split(ds, seed=0)
    assert (len(s.train) + len(s.val), len(s.test)) == (21_600, 5_400)


@pytest.mark.integration
def test_real_ucmerced_counts(shared_data):
    ds = data.load_dataset("ucmerced", shared_data, download=False)
    assert len(ds) == 2100 and ds.class_counts()["images"].tolist() == [100] * 21
    assert ds.images.shape[1:] == (256, 256, 3)


@pytest.mark.integration
def test_eurosat_ms_band_order_real(shared_data):
    """B10 (cirrus) is ~0 over land and B8A tracks B08: the files store B8A last."""
    ds = data.load_dataset("eurosat_ms", shared_data, download=False)
    stats = data.band_statistics(ds).set_index("band")
    assert len(ds) == 910
    assert stats.loc["B10", "mean"] < 0.01
    assert abs(stats.loc["B8A", "mean"] - stats.loc["B08", "mean"]) < 0.06
    s = data.get_split(ds, seed=0, kind="spatial")
    groups = data.spatial_blocks(ds.geo, 5000.0)
    assert not set(groups[s.train]) & set(groups[s.test])


@pytest.mark.integration
def test_real_corrupt_jpeg_in_a_copy_of_eurosat(shared_data, tmp_path, tmp_cache):
    """A corrupt JPEG dropped into a copy of the real tree stops the load and names the file."""
    src = shared_data / C.DATASET_SUBDIRS["eurosat"]
    dst = tmp_path / "copy" / C.DATASET_SUBDIRS["eurosat"]
    for cls in C.EUROSAT_CLASSES:  # a copy made of links: 27,000 files without 134 MB of I/O
        (dst / cls).mkdir(parents=True)
        for f in os.scandir(src / cls):
            os.symlink(f.path, dst / cls / f.name)
    bad = dst / "Highway" / "Highway_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(data.BadImageError, match="Highway_corrupt.jpg"):
        data.load_dataset("eurosat", tmp_path / "copy", download=False)


def test_data_root_resolution(monkeypatch, tmp_path):
    from lcc_utils import paths

    monkeypatch.setenv("LCC_PROJECT_ROOT", str(tmp_path / "proj"))
    (tmp_path / "proj").mkdir()
    monkeypatch.delenv("LCC_DATA_DIR", raising=False)
    assert paths.resolve_data_dir("") == tmp_path / "proj" / "data"  # nothing exists: download target
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert paths.resolve_data_dir("") == tmp_path / "shared" / "data"  # the sibling checkout
    (tmp_path / "proj" / "data").mkdir()
    assert paths.resolve_data_dir(None) == tmp_path / "proj" / "data"  # a local data/ wins
    monkeypatch.setenv("LCC_DATA_DIR", str(tmp_path / "elsewhere"))
    assert paths.resolve_data_dir("") == tmp_path / "elsewhere"
    assert paths.resolve_data_dir(tmp_path / "param") == tmp_path / "param"


def test_augmentation_runs_at_the_smaller_of_native_and_model_size():
    """256-px images for a 32-px model are shrunk first, then flipped/rotated (64x fewer pixels)."""
    import torch

    from lcc_utils.data import BatchLoader

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    plain = BatchLoader(images, np.zeros(4, dtype=int), np.arange(4), batch_size=4, image_size=32)
    aug = BatchLoader(images, np.zeros(4, dtype=int), np.arange(4), batch_size=4, image_size=32,
                      augment="dihedral")
    x0, _, _ = next(iter(plain))
    x1, _, _ = next(iter(aug))
    assert x1.shape == (4, 3, 32, 32)
    # each augmented image is one of the 8 flips/rotations of the resized image
    for a, b in zip(x0, x1, strict=True):
        variants = [torch.rot90(v, k, dims=(1, 2)) for v in (a, torch.flip(a, dims=(2,))) for k in range(4)]
        assert min(float((v - b).abs().max()) for v in variants) < 1e-5
    small = BatchLoader(images[:, :64, :64], np.zeros(4, dtype=int), np.arange(4), batch_size=4,
                        image_size=32, augment="trivial")
    assert next(iter(small))[0].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="augment='flips'"):
        BatchLoader(images, np.zeros(4, dtype=int), np.arange(4), augment="flips")


def test_large_images_use_torchvision_trivial_augment_reproducibly():
    """Above TAW_BATCHED_MAX_SIZE the per-image torchvision transform is faster (benchmarked)."""
    import torch

    from lcc_utils.data import TAW_BATCHED_MAX_SIZE, BatchLoader

    size = TAW_BATCHED_MAX_SIZE + 32
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    make = lambda: BatchLoader(images, np.zeros(3, dtype=int), np.arange(3), batch_size=3,  # noqa: E731
                               augment="trivial", seed=5)
    a, b = next(iter(make()))[0], next(iter(make()))[0]
    assert a.shape == (3, 3, size, size) and torch.equal(a, b)  # same seed, same batch
    state = torch.get_rng_state()
    next(iter(make()))
    assert torch.equal(state, torch.get_rng_state())  # training's own RNG stream is untouched


@pytest.mark.parametrize("case", ["eurosat_to_224", "ucmerced_to_224", "ucmerced_to_32", "ms_uint16", "float_dihedral",
                                  "no_augment"])
def test_device_path_on_the_cpu_gives_the_cpu_paths_batches(case):
    """The device path (uint8 read ahead, transformed where the batch lands) is the CPU path moved.

    Run with ``device="cpu"`` it must give exactly the CPU path's batches: the same random draws in
    the same order, the same ops; what differs on a GPU is only where they run (and, above
    TAW_BATCHED_MAX_SIZE, the batched TrivialAugmentWide: see test_augment).
    """
    from lcc_utils.data import IMAGENET_MEAN, IMAGENET_STD, BatchLoader

    rng = np.random.default_rng(0)
    rgb = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    shape, kw = {
        "eurosat_to_224": ((20, 64, 64, 3), dict(image_size=224, augment="trivial", **rgb)),
        "ucmerced_to_224": ((20, 256, 256, 3), dict(image_size=224, augment="trivial", **rgb)),
        "ucmerced_to_32": ((20, 256, 256, 3), dict(image_size=32, augment="trivial", **rgb)),
        "ms_uint16": ((20, 16, 16, 13), dict(image_size=32, augment=True, mean=[0.1] * 13, std=[0.2] * 13)),
        "float_dihedral": ((20, 16, 16, 4), dict(image_size=8, augment="dihedral")),
        "no_augment": ((20, 64, 64, 3), dict(image_size=32, **rgb)),
    }[case]
    if case == "ms_uint16":
        images = rng.integers(0, 12000, shape).astype(np.uint16)
    elif case == "float_dihedral":
        images = rng.normal(size=shape).astype(np.float32)
    else:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.arange(20) % 3
    cpu = BatchLoader(images, labels, np.arange(20), 8, shuffle=True, seed=3, **kw)
    dev = BatchLoader(images, labels, np.arange(20), 8, shuffle=True, seed=3, device="cpu", **kw)
    assert cpu.device is None and dev.device == torch.device("cpu")
    for epoch in (1, 2):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        batches = list(zip(cpu, dev, strict=True))
        assert [len(a[0]) for a, _ in batches] == [8, 8, 4]
        for (xa, ya, ia), (xb, yb, ib) in batches:
            assert xb.dtype == torch.float32 and xb.shape == xa.shape == (len(ya), shape[-1], kw["image_size"],
                                                                           kw["image_size"])
            assert xb.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


@pytest.mark.parametrize("case", ["ucmerced_to_32", "float_dihedral"])
def test_shrink_once_gives_the_batches_of_shrinking_every_batch(case, monkeypatch):
    """The CPU path shrinks a loader's images once (its memo) and augments those copies each epoch.

    Its batches must be bit-identical, strides included (the model's conv takes channels-last
    input), to shrinking every batch anew, over several epochs and a short last batch, and the
    stored pixels must be read once: a committed run's numbers cannot move.
    """
    from lcc_utils.data import IMAGENET_MEAN, IMAGENET_STD, BatchLoader

    rng = np.random.default_rng(1)
    if case == "ucmerced_to_32":
        images = rng.integers(0, 256, (30, 256, 256, 3), dtype=np.uint8)
        kw = dict(image_size=32, augment="trivial", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    else:
        images = rng.normal(size=(30, 16, 16, 4)).astype(np.float32)
        kw = dict(image_size=8, augment="dihedral")
    idx = rng.permutation(30)[:23]  # unsorted, 23 = 2 x 8 + 7
    memo = BatchLoader(images, np.arange(30) % 3, idx, 8, shuffle=True, seed=5, **kw)
    anew = BatchLoader(images, np.arange(30) % 3, idx, 8, shuffle=True, seed=5, **kw)
    anew._memo_on = False
    assert memo._memo_on
    reads = []
    real_read = memo._read
    monkeypatch.setattr(memo, "_read", lambda i: reads.append(len(i)) or real_read(i))
    for epoch in (1, 2, 3):
        memo.set_epoch(epoch)
        anew.set_epoch(epoch)
        batches = list(zip(memo, anew, strict=True))
        assert [len(a[0]) for a, _ in batches] == [8, 8, 7]
        for (xa, ya, ia), (xb, yb, ib) in batches:
            assert xa.stride() == xb.stride()
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert reads == [23], "the memo reads each stored image once, on the first epoch"


def test_shrink_once_is_off_where_it_does_not_apply():
    """No memo without a shrink (upsampling, no augmentation), on the device path, or over the size cap."""
    from lcc_utils import data as D

    images = np.zeros((4, 64, 64, 3), np.uint8)
    make = lambda **kw: D.BatchLoader(images, np.zeros(4, int), np.arange(4), 2, **kw)  # noqa: E731
    assert make(image_size=32, augment=True)._memo_on
    assert not make(image_size=224, augment=True)._memo_on
    assert not make(image_size=32)._memo_on
    assert not make(image_size=32, augment=True, device="cpu")._memo_on
    big = np.lib.stride_tricks.as_strided(images, (200_000, 64, 64, 3), (0, 192, 3, 1))
    assert not D.BatchLoader(big, np.zeros(200_000, int), np.arange(200_000), 64, image_size=32,
                             augment=True)._memo_on, "200k images at 32 px as uint8 is 614 MB, over the cap"


def test_make_loaders_takes_the_device_path_only_for_cuda(monkeypatch, synthetic_root, tmp_cache):
    """The CPU keeps the CPU path (committed runs reproduce); a CUDA training device gets the device path."""
    assert data.loader_device(None) is None and data.loader_device("cpu") is None
    assert data.loader_device(torch.device("cpu")) is None
    assert data.loader_device("cuda") == torch.device("cuda")
    assert data.loader_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert data.loader_device("auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert data.loader_device("auto") == torch.device("cuda")
    ds = data.load_dataset("eurosat", synthetic_root)
    loaders = data.make_loaders(ds, data.get_split(ds, seed=0), image_size=32, batch_size=8, device="cpu")
    assert all(loader.device is None for loader in loaders.values())
