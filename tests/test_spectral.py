"""Tests for lcc_utils.spectral: band names and the one normalised difference (NDVI)."""

from __future__ import annotations

import numpy as np
import pytest

from lcc_utils import baselines, spectral
from lcc_utils import sentinel2 as s2
from lcc_utils.constants import PAPER_B_BANDS


def test_band_names():
    assert [spectral.normalize_band_name(b) for b in ("b2", "B02", "b8a", "B8A", "scl")] == [
        "B02", "B02", "B8A", "B8A", "SCL"]
    with pytest.raises(ValueError, match="unknown band 'B1O'"):
        spectral.normalize_band_name("B1O")
    assert spectral.check_bands(["b2", "B8"]) == ("B02", "B08")
    with pytest.raises(ValueError, match="duplicates"):
        spectral.check_bands(["B2", "B02"])
    with pytest.raises(ValueError, match="SCL is read as the cloud mask"):
        spectral.check_bands(["B02", "SCL"])


def test_ndvi_values_and_errors():
    x = np.array([[[0.1, 0.5], [0.2, 0.2], [0.0, 0.0]]], np.float32)  # (1, 3 px, 2 bands)
    np.testing.assert_allclose(s2.ndvi(x, ["B04", "B08"])[0], [2 / 3, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match=r"no near-infrared band \(B08 or B8A\)"):
        s2.ndvi(x, ["B04", "B03"])
    with pytest.raises(ValueError, match="x has 1 bands on axis 0"):
        s2.ndvi(x, ["B04", "B08"], axis=0)
    assert s2.ndvi is spectral.ndvi and baselines.normalized_difference is spectral.normalized_difference


def test_non_positive_denominator_gives_zero_everywhere():
    """One rule: NIR + red <= 0 (nodata, or dark pixels below 0 after the BOA offset) -> 0."""
    # (NIR, red): defined, both 0, sum negative, sum exactly 0 with opposite signs
    pairs = np.array([[0.3, 0.1], [0.0, 0.0], [-0.02, -0.01], [0.01, -0.01], [0.01, -0.005]])
    x = np.zeros((1, 1, len(pairs), 6), np.float32)
    nir, red = PAPER_B_BANDS.index("B08"), PAPER_B_BANDS.index("B04")
    x[0, 0, :, nir], x[0, 0, :, red] = pairs[:, 0], pairs[:, 1]
    expected = [0.5, 0.0, 0.0, 0.0, 3.0]  # the last has sum 0.005 > 0: defined, outside [-1, 1]
    for dtype in (np.float32, np.float64):
        v = spectral.ndvi(x, PAPER_B_BANDS, dtype=dtype)
        assert v.dtype == dtype and np.isfinite(v).all()
        np.testing.assert_allclose(v[0, 0], expected, rtol=1e-5)
    # the scene screening (float32, bands first) and the baselines (float64) follow the same rule
    chw = np.moveaxis(x[0], -1, 0)
    np.testing.assert_allclose(s2.ndvi(chw, PAPER_B_BANDS, axis=0)[0], expected, rtol=1e-5)
    per_pixel = baselines.normalized_difference(x, PAPER_B_BANDS, "B08", "B04", dtype=np.float64)
    np.testing.assert_allclose(per_pixel[0, 0], expected, rtol=1e-6)  # float32 inputs


def test_normalized_difference_dtypes():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 0.5, (3, 4, 4, 6)).astype(np.float32)
    a = spectral.normalized_difference(x, PAPER_B_BANDS, "B03", "B08")
    b = spectral.normalized_difference(x, PAPER_B_BANDS, "B03", "B08", dtype=np.float64)
    assert a.dtype == np.float32 and b.dtype == np.float64 and a.shape == (3, 4, 4)
    np.testing.assert_allclose(a, b, atol=1e-6)
    g, n = x[..., 1].astype(np.float64), x[..., 3].astype(np.float64)
    np.testing.assert_array_equal(b, (g - n) / (g + n))
    # integer digital numbers are cast, not truncated
    dn = np.array([[3000, 1000]], np.uint16)
    assert spectral.ndvi(dn, ["B08", "B04"])[0] == pytest.approx(0.5)
