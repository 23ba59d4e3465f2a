"""Unit tests for lcc_utils.baselines on tiny synthetic 6-band patches (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from lcc_utils import baselines
from lcc_utils.constants import PAPER_B_BANDS


def _patches(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half vegetation (high NIR, low red), half not (NIR ~ red), 8x8 px, reflectance."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.15, size=(n, 8, 8, 6)).astype(np.float32)
    y = np.arange(n) % 2  # 1 = vegetation
    nir, red = PAPER_B_BANDS.index("B08"), PAPER_B_BANDS.index("B04")
    x[y == 1, :, :, nir] += 0.3
    x[y == 1, :, :, red] *= 0.5
    return x, y


def test_patch_ndvi_and_features():
    x = np.zeros((2, 4, 4, 6), np.float32)
    nir, red = PAPER_B_BANDS.index("B08"), PAPER_B_BANDS.index("B04")
    x[0, ..., nir], x[0, ..., red] = 0.3, 0.1  # NDVI 0.5
    x[1, ..., nir], x[1, ..., red] = 0.1, 0.3  # NDVI -0.5
    assert baselines.patch_ndvi(x, PAPER_B_BANDS) == pytest.approx([0.5, -0.5])
    f = baselines.spectral_features(x, PAPER_B_BANDS)
    assert f.shape == (2, 6 * 2 + 3)
    assert f.loc[0, "ndvi"] == pytest.approx(0.5)
    assert f.loc[0, "B08_mean"] == pytest.approx(0.3)
    # all-zero bands: index defined as 0, not NaN
    assert f["ndbi"].tolist() == [pytest.approx(-1.0), pytest.approx(-1.0)]
    assert f.notna().all().all()


def test_features_bad_input():
    x, _ = _patches(4)
    with pytest.raises(ValueError, match="channels"):
        baselines.spectral_features(x, PAPER_B_BANDS[:5])
    with pytest.raises(ValueError, match=r"no near-infrared band \(B08 or B8A\)"):
        baselines.patch_ndvi(x, ("B02", "B03", "B04", "B05", "B11", "B12"))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        baselines.spectral_features(x, PAPER_B_BANDS)


def test_ndvi_threshold_val_only_and_binary_only():
    v = np.array([-0.2, 0.0, 0.1, 0.5, 0.6, 0.7])
    y = np.array([0, 0, 0, 1, 1, 1])
    m = baselines.NDVIThreshold(vegetation_label=1).fit(v, y)
    assert 0.1 < m.threshold_ < 0.5
    assert m.val_oa_ == 1.0
    assert m.predict([0.05, 0.9]).tolist() == [0, 1]
    # label order is taken from vegetation_label
    m0 = baselines.NDVIThreshold(vegetation_label=0).fit(v, 1 - y)
    assert m0.predict([0.05, 0.9]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="binary vegetation task only"):
        baselines.NDVIThreshold().fit(v, np.array([0, 1, 2, 0, 1, 2]))
    with pytest.raises(RuntimeError, match="not fitted"):
        baselines.NDVIThreshold().predict(v)


def test_rf_and_svm_seeded_and_accurate():
    x, y = _patches(40, seed=0)
    xv, yv = _patches(20, seed=1)
    f, fv = baselines.spectral_features(x, PAPER_B_BANDS), baselines.spectral_features(
        xv, PAPER_B_BANDS)
    rf = baselines.train_random_forest(f, y, seed=0, n_estimators=20)
    rf2 = baselines.train_random_forest(f, y, seed=0, n_estimators=20)
    assert (rf.predict(fv) == yv).mean() > 0.9
    assert np.array_equal(rf.predict_proba(fv), rf2.predict_proba(fv))
    svm, grid = baselines.train_svm(f, y, fv, yv, c_grid=(1.0, 10.0), gamma_grid=("scale",))
    assert len(grid) == 2 and grid["selected"].sum() == 1
    assert (svm.predict(fv) == yv).mean() > 0.9
    with pytest.raises(ValueError, match="labels have shape"):
        baselines.train_random_forest(f, y[:-1])
