"""Paper B's baselines: an NDVI threshold and RF / SVM on per-patch spectral features.

Paper B compares its CNN with a vegetation-index threshold (78 % OA) and with
classical machine learning on spectral features. Every baseline here is fitted
on the TRAIN split, tuned on the VALIDATION split only, and scored on the same
test patches as the CNNs so that McNemar's test can pair them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lcc_utils.spectral import nir_band, normalized_difference

if TYPE_CHECKING:  # scikit-learn is imported by the two trainers: about 1.5 s that 02 and 08 never need
    from sklearn.pipeline import Pipeline

#: Precision of the baselines' indices: float64, as the committed baselines were fitted. On the
#: EuroSAT MS patch sets float32 would move patch NDVI by at most 7e-8; float64 keeps them exact.
_INDEX_DTYPE = np.float64

#: Normalised-difference indices used as features: name -> (band a, band b), (a - b) / (a + b).
#: NDVI (Rouse 1974): NIR vs red. NDWI (McFeeters 1996): green vs NIR. NDBI (Zha 2003): SWIR1
#: vs NIR. Paper B names "spectral features" without a list; this set is our choice. "B08"
#: stands for the NIR band: B8A where a product has no B08 (:func:`lcc_utils.spectral.nir_band`).
SPECTRAL_INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("B08", "B04"),
    "ndwi": ("B03", "B08"),
    "ndbi": ("B11", "B08"),
}

#: Random forest size: 300 trees is our choice (paper B gives no hyper-parameters).
RF_TREES = 300
#: RBF-SVM grid searched on the validation split (our choice; paper B gives none).
SVM_C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
SVM_GAMMA_GRID: tuple[float | str, ...] = ("scale", 0.01, 0.1, 1.0)


def _check_patches(x: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 4:
        raise ValueError(f"x must be patches (N, H, W, C) channels-last, got shape {arr.shape}")
    if arr.shape[-1] != len(bands):
        raise ValueError(f"x has {arr.shape[-1]} channels but bands names {len(bands)}: {bands}")
    if arr.shape[0] == 0:
        raise ValueError("x holds no patches")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"x has {int(np.sum(~np.isfinite(arr)))} non-finite values")
    return arr


def patch_ndvi(x: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Mean NDVI of each patch, clipped to [-1, 1] (the value the threshold and bins use).

    The mean of per-pixel NDVI (not the NDVI of the mean reflectance), computed in float64;
    pixels with NIR + red <= 0 count as NDVI 0 (the one rule of
    :func:`lcc_utils.spectral.normalized_difference`). With negative reflectance in one band
    (possible after offset removal) an index can leave [-1, 1], so we clip.
    """
    arr = _check_patches(x, bands)
    _, red = SPECTRAL_INDICES["ndvi"]
    v = normalized_difference(arr, bands, nir_band(bands), red, dtype=_INDEX_DTYPE, name="ndvi").mean(axis=(1, 2))
    return np.clip(v, -1.0, 1.0)


def spectral_features(x: np.ndarray, bands: Sequence[str]) -> pd.DataFrame:
    """Per-patch spectral features for the RF / SVM baselines.

    Features: the mean and standard deviation of each band over the patch's pixels,
    then the patch means of NDVI, NDWI and NDBI (:data:`SPECTRAL_INDICES`; each index
    is skipped only if one of its bands is absent, and the skipped ones are named in
    ``attrs["skipped_indices"]``).

    Args:
        x: reflectance patches ``(N, H, W, C)``, channels-last.
        bands: band name of each channel.

    Returns:
        A DataFrame of N rows with columns ``<band>_mean``, ``<band>_std``, ``ndvi``, ...

    """
    arr = _check_patches(x, bands).astype(np.float64)
    cols: dict[str, np.ndarray] = {}
    for i, b in enumerate(bands):
        cols[f"{b}_mean"] = arr[..., i].mean(axis=(1, 2))
        cols[f"{b}_std"] = arr[..., i].std(axis=(1, 2))
    skipped = []
    names = list(bands)
    try:
        nir = nir_band(names)
    except ValueError:
        nir = "B08"  # absent: the indices needing it are skipped (and named) below
    for name, (a, b) in SPECTRAL_INDICES.items():
        a, b = (nir if v == "B08" else v for v in (a, b))
        if a in names and b in names:
            cols[name] = normalized_difference(arr, bands, a, b, dtype=_INDEX_DTYPE,
                                               name=name).mean(axis=(1, 2))
        else:
            skipped.append(name)
    df = pd.DataFrame(cols)
    df.attrs["skipped_indices"] = skipped
    return df


def _check_xy(features: np.ndarray | pd.DataFrame, y: np.ndarray, what: str) -> np.ndarray:
    yy = np.asarray(y)
    if yy.ndim != 1 or len(yy) != len(features):
        raise ValueError(
            f"{what}: labels have shape {yy.shape} but there are {len(features)} feature rows"
        )
    if len(yy) == 0:
        raise ValueError(f"{what}: no samples")
    return yy.astype(np.int64)


class NDVIThreshold:
    """Paper B's index baseline: a patch is vegetation when its mean NDVI exceeds a threshold.

    The threshold is chosen on the VALIDATION split only, maximising overall accuracy
    there (never on test). Candidates are the midpoints between consecutive sorted
    validation NDVI values plus the two extremes; when several candidates tie on OA,
    the median of the tied candidates is taken (our choice: the centre of the best
    range is less sensitive to the exact validation sample than its edge).
    It only applies to the binary vegetation / non-vegetation task.

    Args:
        vegetation_label: class index meaning "vegetation"; the other label is the
            only other class.

    """

    def __init__(self, vegetation_label: int = 1) -> None:
        self.vegetation_label = int(vegetation_label)
        self.threshold_: float | None = None
        self.val_oa_: float | None = None
        self.other_label_: int | None = None

    def fit(self, ndvi: np.ndarray, y: np.ndarray) -> NDVIThreshold:
        """Choose the threshold on validation patches ``ndvi`` with labels ``y``."""
        v = np.asarray(ndvi, dtype=np.float64)
        yy = _check_xy(v, y, "NDVIThreshold.fit")
        if not np.all(np.isfinite(v)):
            raise ValueError("NDVIThreshold.fit: ndvi has non-finite values")
        labels = np.unique(yy)
        if len(labels) > 2:
            raise ValueError(
                f"NDVIThreshold applies to the binary vegetation task only; y has {len(labels)} "
                "classes (for the multiclass task there is no NDVI-threshold baseline)"
            )
        if self.vegetation_label not in labels:
            raise ValueError(
                f"vegetation_label {self.vegetation_label} does not occur in the validation "
                f"labels {labels.tolist()}"
            )
        others = [int(lab) for lab in labels if lab != self.vegetation_label]
        # With a one-class validation set the other label is unknown: assume the binary 0/1 pair.
        self.other_label_ = others[0] if others else 1 - self.vegetation_label
        s = np.sort(np.unique(v))
        cand = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
        veg = yy == self.vegetation_label
        oa = np.array([np.mean((v > t) == veg) for t in cand])
        best = cand[oa == oa.max()]
        self.threshold_ = float(np.median(best))
        self.val_oa_ = float(oa.max())
        return self

    def predict(self, ndvi: np.ndarray) -> np.ndarray:
        """Class index per patch: vegetation where ``ndvi > threshold_``."""
        if self.threshold_ is None:
            raise RuntimeError("NDVIThreshold is not fitted: call fit(ndvi_val, y_val) first")
        v = np.asarray(ndvi, dtype=np.float64)
        return np.where(v > self.threshold_, self.vegetation_label, self.other_label_).astype(
            np.int64
        )


def train_random_forest(
    features: np.ndarray | pd.DataFrame,
    y: np.ndarray,
    seed: int = 0,
    n_estimators: int = RF_TREES,
) -> Pipeline:
    """Random forest on standardised spectral features, fitted on the training split.

    Single-threaded (``n_jobs=1``) and seeded, so the same seed gives the same forest.
    Standardising does not change a forest's splits; it is kept so RF and SVM share
    one preprocessing.
    """
    yy = _check_xy(features, y, "train_random_forest")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1),
    )
    return model.fit(features, yy)


def train_svm(
    features: np.ndarray | pd.DataFrame,
    y: np.ndarray,
    val_features: np.ndarray | pd.DataFrame,
    val_y: np.ndarray,
    seed: int = 0,
    c_grid: Sequence[float] = SVM_C_GRID,
    gamma_grid: Sequence[float | str] = SVM_GAMMA_GRID,
) -> tuple[Pipeline, pd.DataFrame]:
    """RBF SVM on standardised features; C and gamma chosen by validation OA.

    Each grid point is fitted on the training split and scored on the validation
    split; the best one (first in grid order on ties: smaller C = smoother model) is
    returned as fitted on the training split only (not refitted on train + val, so the
    SVM sees the same data as the CNNs, which use validation only for early stopping).

    Returns:
        The fitted pipeline and the grid table (``C``, ``gamma``, ``val_oa``, ``selected``).

    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    yy = _check_xy(features, y, "train_svm (train)")
    vy = _check_xy(val_features, val_y, "train_svm (validation)")
    if not c_grid or not gamma_grid:
        raise ValueError("c_grid and gamma_grid must each hold at least one value")
    rows, best, best_oa = [], None, -1.0
    for c in c_grid:
        for g in gamma_grid:
            model = make_pipeline(
                StandardScaler(), SVC(C=float(c), gamma=g, kernel="rbf", random_state=seed)
            )
            model.fit(features, yy)
            oa = float(np.mean(model.predict(val_features) == vy))
            rows.append({"C": float(c), "gamma": str(g), "val_oa": oa})
            if oa > best_oa:
                best, best_oa = model, oa
    grid = pd.DataFrame(rows)
    grid["selected"] = False
    grid.loc[int(np.argmax(grid["val_oa"].to_numpy())), "selected"] = True
    return best, grid
