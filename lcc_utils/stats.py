"""Statistics of the evaluations: paired tests, equivalence, multiple testing, bootstrap intervals.

The accuracy measures themselves live in :mod:`lcc_utils.metrics`; this module says how sure we
are of them. Library code where a library has it: Holm's step-down adjustment
(``statsmodels.stats.multitest.multipletests``), McNemar's test
(``statsmodels.stats.contingency_tables.mcnemar``), the two one-sided tests of equivalence
(TOST, ``statsmodels.stats.weightstats.ttost_paired``), the paired permutation test
(``scipy.stats.permutation_test``) and the exact binomial sign test (``scipy.stats.binomtest``).
Hand-written only what no library does, each checked against a hand-computed case in
``tests/test_stats.py``: the cluster bootstrap (whole source images resampled) and the
**two-stage bootstrap** (training seeds resampled, then images within each resampled seed).

Units. Test patches that share a source image (EuroSAT: the four quadrants of one image) are not
independent, so the paired tests and intervals take the image (a "cluster") as the unit. A
network's accuracy also moves with its training seed (paper B's CNN: 84.2 / 91.7 / 89.8 % over
three seeds here), so the intervals resample seeds as well: they describe a model trained again
and scored on other images of the same kind, not only other images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from lcc_utils.constants import PAPER_B_NDVI_BINS

#: Below this many discordant pairs (b + c) McNemar uses the exact binomial test.
#: 25 is the usual textbook rule (the chi-square approximation is poor for small b + c).
MCNEMAR_EXACT_BELOW = 25
#: Equivalence margin of a "comparable / no difference" claim, in percentage points of OA:
#: two models (or our OA and a published one) count as equivalent when the difference is shown
#: to lie within +-2 points. Our choice (paper B states none): about the seed-to-seed spread of
#: the baselines and half the CNN's, so a smaller margin could never be met with three seeds.
EQUIVALENCE_MARGIN_PP = 2.0
#: Resamples of the paired permutation test (exact enumeration when 2**n_images is smaller).
PERMUTATION_RESAMPLES = 9999


# --------------------------------------------------------------------------- input checks
def _as_labels(
    y: Sequence[int] | np.ndarray, name: str, n_classes: int | None = None
) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: nothing to evaluate")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(
            arr == np.round(arr)
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n_classes is not None and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"{name} holds class index {int(arr.min()) if arr.min() < 0 else int(arr.max())} "
            f"outside 0..{n_classes - 1} (classes has {n_classes} entries)"
        )
    return arr


def _check_pair(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str] | None = None,
    pred_name: str = "y_pred",
) -> tuple[np.ndarray, np.ndarray]:
    n = None if classes is None else len(classes)
    if classes is not None and n == 0:
        raise ValueError("classes is empty")
    t = _as_labels(y_true, "y_true", n)
    p = _as_labels(y_pred, pred_name, n)
    if t.shape != p.shape:
        raise ValueError(
            f"y_true has {t.size} labels but {pred_name} has {p.size}: "
            "predictions must be for the same test patches"
        )
    return t, p


def _cluster_codes(clusters: Sequence | np.ndarray, n: int) -> tuple[np.ndarray, int]:
    g = np.asarray(clusters)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"clusters must give one cluster id per test patch ({n}), got shape {g.shape}")
    codes, uniq = pd.factorize(pd.Series(g), sort=True)
    return codes.astype(np.int64), len(uniq)


def _as_seed_preds(preds: Sequence | np.ndarray, n: int, name: str) -> np.ndarray:
    p = np.asarray(preds)
    p = p[None, :] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] != n:
        raise ValueError(f"{name} must be (n_seeds, {n}) or ({n},) predictions, got shape {p.shape}")
    return p.astype(np.int64)


def _statsmodels(module: str, name: str):
    """``statsmodels.<module>.<name>``, imported when a test runs.

    Importing lcc_utils (the training notebooks, the mapping) does not need statsmodels; only the
    statistics do, and a missing install then says how to get it.
    """
    import importlib

    try:
        return getattr(importlib.import_module(f"statsmodels.{module}"), name)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the statistics need statsmodels (requirements.lock: statsmodels==0.14.6); "
                                  "run `make setup` or `pip install -r requirements.lock`") from e


def _check_n_boot(n_boot: int) -> int:
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: use at least 100 bootstrap resamples")
    return int(n_boot)


# --------------------------------------------------------------------------- multiple testing, t-intervals
def holm(pvalues: Sequence[float], family_size: int | None = None) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests``); NaN stays NaN, not a test.

    ``family_size``: how many tests the family holds when every planned one has run, when only some
    have (a study that is still training). The missing ones enter as p = 1, which makes the
    correction the one the complete family will get for the p-values present: a comparison that
    lands first is not corrected less than it will be. None: the family is the non-NaN p-values.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    n = int(ok.sum())
    if family_size is not None and family_size < n:
        raise ValueError(f"family_size={family_size} is smaller than the {n} p-values given")
    if n:
        padded = np.concatenate([p[ok], np.ones((family_size or n) - n)])
        out[ok] = _statsmodels("stats.multitest", "multipletests")(padded, method="holm")[1][:n]
    return out


def paired_difference(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean of paired differences, its t-interval (``level``, 95 % by default) and the paired t-test p-value.

    The unit is the pair (e.g. one seed shared by two methods). Fewer than 2 pairs give NaN
    interval and p; identical differences give a zero-width interval.
    """
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return (float(d.mean()) if len(d) else float("nan")), float("nan"), float("nan"), float("nan")
    mean, se = d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    if se == 0:
        return float(mean), float(mean), float(mean), (1.0 if mean == 0 else 0.0)
    half = sps.t.ppf(0.5 + level / 2, len(d) - 1) * se
    p = 2 * sps.t.sf(abs(mean / se), len(d) - 1)
    return float(mean), float(mean - half), float(mean + half), float(p)


def equivalence_test(x_a: Sequence[float] | np.ndarray, x_b: Sequence[float] | np.ndarray,
                     margin: float) -> float:
    """Two one-sided tests (TOST) that the paired mean difference ``a - b`` lies within ``+-margin``.

    statsmodels' ``ttost_paired``: equivalence is shown at level alpha when the returned p-value
    (the larger of the two one-sided p-values) is below alpha. Differences that are all equal
    (no spread, the t statistic undefined) are equivalent exactly when they lie inside the margin.
    """
    a, b = np.asarray(x_a, dtype=float), np.asarray(x_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"x_a and x_b must be paired 1-D samples of >= 2 values, got {a.shape} and {b.shape}")
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d = a - b
    if np.ptp(d) == 0:
        return 0.0 if -margin < d[0] < margin else 1.0
    return float(_statsmodels("stats.weightstats", "ttost_paired")(a, b, -margin, margin)[0])


def below_margin_test(diffs: Sequence[float] | np.ndarray, margin: float) -> float:
    """One-sided paired t-test that the mean difference lies below ``margin`` (H0: mean >= margin).

    statsmodels' ``DescrStatsW.ttest_mean(margin, alternative="smaller")``: "shown below the
    margin" at level alpha when the returned p-value is below alpha, i.e. when the one-sided
    upper ``1 - alpha`` bound lies below ``margin``. Differences without spread (the t statistic
    undefined) are below exactly when they are.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"diffs must be a 1-D sample of >= 2 paired differences, got shape {d.shape}")
    if np.ptp(d) == 0:
        return 0.0 if d[0] < margin else 1.0
    return float(_statsmodels("stats.weightstats", "DescrStatsW")(d).ttest_mean(margin, alternative="smaller")[1])


# --------------------------------------------------------------------------- McNemar (patch level)
def mcnemar(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    exact: bool | None = None,
) -> dict:
    """McNemar's test of whether two classifiers err equally often on the same test patches.

    Only the discordant patches count: ``b`` = A right and B wrong, ``c`` = A wrong and
    B right. Under H0 (equal error rates) ``b ~ Binomial(b + c, 0.5)``. Computed by statsmodels.

    Args:
        y_true: reference labels of the shared test patches.
        pred_a: predictions of model A on those patches.
        pred_b: predictions of model B on those patches.
        exact: ``True`` -> exact two-sided binomial test; ``False`` -> chi-square with Edwards'
            continuity correction, ``(|b - c| - 1)^2 / (b + c)`` with 1 degree of freedom;
            ``None`` (default) -> exact when ``b + c < 25``, else chi-square.

    Returns:
        ``b``, ``c``, ``statistic`` (``min(b, c)`` for the exact test; the chi-square value
        otherwise), ``p_value`` and ``method``. With no discordant pair (``b + c == 0``) the
        models agree everywhere: p = 1.

    """
    t, a = _check_pair(y_true, pred_a, pred_name="pred_a")
    _, bb = _check_pair(y_true, pred_b, pred_name="pred_b")
    if exact is not None and not isinstance(exact, bool):
        raise ValueError(f"exact must be True, False or None, got {exact!r}")
    ok_a, ok_b = a == t, bb == t
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    use_exact = (b + c < MCNEMAR_EXACT_BELOW) if exact is None else exact
    method = "exact binomial" if use_exact else "chi-square (continuity corrected)"
    if b + c == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": method}
    table = [[int(np.sum(ok_a & ok_b)), b], [c, int(np.sum(~ok_a & ~ok_b))]]
    res = _statsmodels("stats.contingency_tables", "mcnemar")(table, exact=use_exact, correction=True)
    return {"b": b, "c": c, "statistic": float(res.statistic), "p_value": min(float(res.pvalue), 1.0),
            "method": method}


def pairwise_mcnemar(
    y_true: Sequence[int] | np.ndarray,
    preds: Mapping[str, Sequence[int] | np.ndarray],
    alpha: float = 0.05,
    exact: bool | None = None,
) -> pd.DataFrame:
    """McNemar's test for every pair of models evaluated on the same test patches.

    Args:
        y_true: reference labels.
        preds: model name -> predictions (all on the same patches, same order).
        alpha: significance level for the ``significant`` column (no multiple-testing
            correction; the raw p-values are reported so a reader can apply one).
        exact: see :func:`mcnemar`.

    Returns:
        One row per unordered pair (in ``preds`` order): ``model_a``, ``model_b``,
        ``oa_a``, ``oa_b``, ``b``, ``c``, ``statistic``, ``p_value``, ``method``,
        ``significant``.

    """
    if len(preds) < 2:
        raise ValueError(f"preds needs at least two models for a pairwise test, got {list(preds)}")
    t = _as_labels(y_true, "y_true")
    rows = []
    for (na, pa), (nb, pb) in itertools.combinations(preds.items(), 2):
        res = mcnemar(t, pa, pb, exact=exact)
        rows.append({
            "model_a": na, "model_b": nb,
            "oa_a": float(np.mean(np.asarray(pa) == t)),
            "oa_b": float(np.mean(np.asarray(pb) == t)),
            **res, "significant": bool(res["p_value"] < alpha),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- bootstraps
def _confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """OA, kappa and macro P / R / F1 of confusion matrices ``(..., C, C)`` (rows = reference)."""
    cm = cm.astype(np.float64)
    n = cm.sum(axis=(-2, -1))
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    rows, cols = cm.sum(-1), cm.sum(-2)
    oa = diag.sum(-1) / n
    pe = (rows * cols).sum(-1) / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(pe < 1, (oa - pe) / (1 - pe), 0.0)
        prec = np.where(cols > 0, diag / cols, 0.0)  # sklearn's zero_division=0
        rec = np.where(rows > 0, diag / rows, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    present = rows > 0  # macro over the classes present in the reference, as sklearn's labels
    k = present.sum(-1)
    return {"oa": oa, "kappa": kappa, "macro_precision": (prec * present).sum(-1) / k,
            "macro_recall": (rec * present).sum(-1) / k, "macro_f1": (f1 * present).sum(-1) / k}


def _cluster_weights(k: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity of each of ``k`` clusters in ``n_boot`` resamples of ``k``: ``(n_boot, k)``."""
    draw = rng.integers(0, k, size=(n_boot, k)) + (np.arange(n_boot) * k)[:, None]
    return np.bincount(draw.ravel(), minlength=n_boot * k).reshape(n_boot, k)


def _two_stage_draws(n_seeds: int, k: int, n_boot: int, rng: np.random.Generator,
                     n_models: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """Seed draws (one ``(B, S)`` array per model) and cluster weights ``(B, K)``.

    Stage 1 draws ``S`` seeds with replacement; stage 2 resamples the ``k`` clusters once per
    replicate, for all the drawn seeds together. Every seed was scored on the *same* test images
    (seeds and images are crossed, not nested), so a fresh image resample per drawn seed would
    treat the images as new for each seed and shrink their share of the variance by the number of
    seeds (on the committed binary run it made ResNet-18's OA interval narrower than the
    images-only one). Models compared in pairs get independent seed draws (a seed number means
    nothing across architectures) and the same cluster weights (they are scored on the same images).
    """
    seeds = [rng.integers(0, n_seeds, size=(n_boot, n_seeds)) for _ in range(n_models)]
    return seeds, _cluster_weights(k, n_boot, rng)


def _resample(x: np.ndarray, draws: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-cluster sums ``x`` ``(S, K, ...)`` of the drawn seeds, summed with the weights: ``(B, S, ...)``."""
    n_boot, slots = draws.shape
    out = np.empty((n_boot, slots, *x.shape[2:]), dtype=np.float64)
    for j in range(slots):
        for s in range(x.shape[0]):
            sel = draws[:, j] == s
            if sel.any():
                out[sel, j] = np.tensordot(weights[sel].astype(np.float64), x[s], axes=(1, 0))
    return out


def two_stage_replicates(
    values: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    values_b: Sequence | np.ndarray | None = None,
) -> np.ndarray:
    """Two-stage bootstrap replicates of a seed-mean rate (or of a paired difference of two).

    ``values`` is ``(n_seeds, n_patches)`` (or one row): a 0/1 outcome per patch and training
    seed (1 = correct for accuracy, 1 = wrong for an error rate). One replicate draws ``n_seeds``
    seeds with replacement, then resamples the clusters with replacement (once, shared by the
    drawn seeds, which were all scored on the same images: see :func:`_two_stage_draws`), takes
    each drawn seed's rate over the resampled patches and averages them. With ``values_b`` (the
    other model, same patches, same seed count) the replicate is the difference ``a - b``: seeds
    drawn independently per model, the same resampled clusters for both.

    Returns:
        ``(n_boot,)`` replicates; NaN where a replicate drew no patch at all.

    """
    a = np.asarray(values, dtype=np.float64)
    a = a[None, :] if a.ndim == 1 else a
    codes, k = _cluster_codes(clusters, a.shape[1])
    rng = np.random.default_rng(seed)
    n = np.bincount(codes, minlength=k).astype(np.float64)
    sums = [np.stack([np.bincount(codes, weights=row, minlength=k) for row in a])]
    if values_b is not None:
        b = np.asarray(values_b, dtype=np.float64)
        b = b[None, :] if b.ndim == 1 else b
        if b.shape != a.shape:
            raise ValueError(f"values_b has shape {b.shape} but values has {a.shape}: same seeds, same patches")
        sums.append(np.stack([np.bincount(codes, weights=row, minlength=k) for row in b]))
    draws, w = _two_stage_draws(a.shape[0], k, _check_n_boot(n_boot), rng, n_models=len(sums))
    den = (w @ n)[:, None]  # (B, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = [_resample(s[:, :, None], d, w)[..., 0] / den for s, d in zip(sums, draws, strict=True)]
    rep = rates[0] if len(rates) == 1 else rates[0] - rates[1]
    return rep.mean(axis=1)


def _interval_row(point: np.ndarray, boot: np.ndarray) -> dict:
    return {"estimate": float(point.mean()),
            "seed_std": float(point.std(ddof=1)) if len(point) > 1 else float("nan"),
            "ci95_lo": float(np.quantile(boot, 0.025)), "ci95_hi": float(np.quantile(boot, 0.975)),
            "ci90_lo": float(np.quantile(boot, 0.05)), "ci90_hi": float(np.quantile(boot, 0.95))}


def _seed_cluster_confusions(t: np.ndarray, p: np.ndarray, codes: np.ndarray, k: int, c: int) -> np.ndarray:
    flat = (codes[None, :] * c + t[None, :]) * c + p  # per seed and cluster, the confusion counts
    return np.stack([np.bincount(f, minlength=k * c * c) for f in flat]).reshape(len(p), k, c, c)


def cluster_bootstrap(
    y_true: Sequence[int] | np.ndarray,
    preds: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_classes: int,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy measures of one model with 95 % cluster-bootstrap intervals (seeds held fixed).

    Test patches that share a source image (EuroSAT: the four quadrants of one image) or a
    spatial block are not independent. The bootstrap resamples whole ``clusters`` with
    replacement (percentile interval), so the interval describes the independent unit.
    ``preds`` may hold one row per training seed: each statistic is the mean over seeds,
    resampled with the same clusters for every seed. The seeds themselves are not resampled:
    for an interval that also carries the seed-to-seed variation use :func:`two_stage_bootstrap`.

    Returns:
        One row per measure (``oa``, ``kappa``, ``macro_precision``, ``macro_recall``,
        ``macro_f1``): ``estimate`` (seed mean), ``seed_std`` (ddof=1, NaN for one seed),
        ``ci95_lo``, ``ci95_hi``, ``n_clusters``.

    """
    t = _as_labels(y_true, "y_true", n_classes)
    p = _as_seed_preds(preds, len(t), "preds")
    if p.min() < 0 or p.max() >= n_classes:
        raise ValueError(f"preds hold class indices outside 0..{n_classes - 1}")
    codes, k = _cluster_codes(clusters, len(t))
    n_boot = _check_n_boot(n_boot)
    cm = _seed_cluster_confusions(t, p, codes, k, int(n_classes))  # (S, K, C, C)
    point = _confusion_metrics(cm.sum(1))  # (S,)
    rng = np.random.default_rng(seed)
    w = np.stack([np.bincount(rng.integers(0, k, k), minlength=k) for _ in range(n_boot)])
    boot = _confusion_metrics(np.einsum("bk,skij->bsij", w, cm))  # (B, S)
    rows = []
    for m, v in point.items():
        b = boot[m].mean(axis=1)
        rows.append({"measure": m, "estimate": float(v.mean()),
                     "seed_std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                     "ci95_lo": float(np.quantile(b, 0.025)), "ci95_hi": float(np.quantile(b, 0.975)),
                     "n_clusters": k})
    return pd.DataFrame(rows).set_index("measure")


def two_stage_bootstrap(
    y_true: Sequence[int] | np.ndarray,
    preds: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_classes: int,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy measures of one model with two-stage bootstrap intervals: seeds, then images.

    ``preds`` holds one row per training seed. A replicate draws the seeds with replacement, then
    resamples the ``clusters`` (source images) with replacement (one resample for the drawn seeds
    together: they were scored on the same images); each measure is computed per drawn seed on
    the resampled patches and averaged over the drawn seeds. The percentile interval therefore
    carries both the seed-to-seed variation of training and the sampling of test images. With one
    seed it is the :func:`cluster_bootstrap`.

    Returns:
        One row per measure (``oa``, ``kappa``, ``macro_precision``, ``macro_recall``,
        ``macro_f1``): ``estimate`` (seed mean), ``seed_std`` (ddof=1, NaN for one seed),
        ``ci95_lo`` / ``ci95_hi``, ``ci90_lo`` / ``ci90_hi`` (for equivalence tests),
        ``n_clusters``, ``n_seeds``.

    """
    t = _as_labels(y_true, "y_true", n_classes)
    p = _as_seed_preds(preds, len(t), "preds")
    if p.min() < 0 or p.max() >= n_classes:
        raise ValueError(f"preds hold class indices outside 0..{n_classes - 1}")
    codes, k = _cluster_codes(clusters, len(t))
    cm = _seed_cluster_confusions(t, p, codes, k, int(n_classes))  # (S, K, C, C)
    point = _confusion_metrics(cm.sum(1))
    (draws,), w = _two_stage_draws(len(p), k, _check_n_boot(n_boot), np.random.default_rng(seed))
    boot = _confusion_metrics(_resample(cm, draws, w))  # (B, S) per measure
    rows = [{"measure": m, **_interval_row(v, boot[m].mean(axis=1)), "n_clusters": k, "n_seeds": len(p)}
            for m, v in point.items()]
    return pd.DataFrame(rows).set_index("measure")


# --------------------------------------------------------------------------- paired tests at the cluster level
def permutation_test_paired(per_cluster_diff: Sequence[float] | np.ndarray, n_resamples: int = PERMUTATION_RESAMPLES,
                            seed: int = 0) -> float:
    """Two-sided paired permutation test that the mean per-cluster difference is zero.

    Under H0 the two models are exchangeable within a cluster, so each cluster's difference
    is equally likely to carry either sign (scipy ``permutation_test`` with one sample flips
    signs; exact when ``2**n`` <= ``n_resamples``). Unlike the sign test it weighs each cluster
    by the size of its difference. Pass per-cluster *sums* of patch differences to weigh
    clusters by their patch count (the statistic is then proportional to the OA difference).
    """
    d = np.asarray(per_cluster_diff, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"per_cluster_diff must be a non-empty 1-D array, got shape {d.shape}")
    if not np.any(np.abs(d) > 1e-12):
        return 1.0
    res = sps.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                               n_resamples=int(n_resamples), alternative="two-sided",
                               rng=np.random.default_rng(seed))
    return float(min(res.pvalue, 1.0))


def cluster_paired_test(
    y_true: Sequence[int] | np.ndarray,
    preds_a: Sequence | np.ndarray,
    preds_b: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    margin_pp: float = EQUIVALENCE_MARGIN_PP,
    alpha: float = 0.05,
) -> dict:
    """Paired comparison of two models at the level of the independent unit (a cluster).

    Each cluster (source image or spatial block) gets the difference of the two models'
    accuracy on its patches, averaged over training seeds (rows of ``preds_*``). Then:

    * a **paired permutation test** over the clusters (signs flipped, sizes kept): does the OA
      differ? (:func:`permutation_test_paired`);
    * a **sign test** beside it (exact binomial on the clusters where one model is better, ties
      dropped: McNemar's idea with the cluster as the unit; it ignores the sizes);
    * a **two-stage bootstrap** 95 % and 90 % interval of the OA difference A - B (seeds drawn
      independently per model, then the same clusters for both: :func:`two_stage_replicates`);
    * an **equivalence test** (TOST) with margin ``+-margin_pp``: statsmodels ``ttost_paired`` on
      the per-cluster accuracies, and the 90 % two-stage interval inside the margin. ``equivalent``
      needs both: the t-test alone would ignore the seed-to-seed variation.

    Returns:
        ``oa_a``, ``oa_b`` (seed means), ``diff_pp`` (A - B, percentage points), ``ci95_lo_pp``,
        ``ci95_hi_pp``, ``ci90_lo_pp``, ``ci90_hi_pp``, ``n_clusters``, ``clusters_a_better``,
        ``clusters_b_better``, ``sign_p``, ``perm_p``, ``margin_pp``, ``tost_p``, ``equivalent``.

    """
    t = _as_labels(y_true, "y_true")
    a = _as_seed_preds(preds_a, len(t), "preds_a")
    b = _as_seed_preds(preds_b, len(t), "preds_b")
    codes, k = _cluster_codes(clusters, len(t))
    ca, cb = (a == t).astype(np.float64), (b == t).astype(np.float64)
    n = np.bincount(codes, minlength=k).astype(float)
    s = np.bincount(codes, weights=ca.mean(0) - cb.mean(0), minlength=k)  # per cluster, seed-averaged
    per_cluster = s / n
    better_a, better_b = int(np.sum(per_cluster > 1e-12)), int(np.sum(per_cluster < -1e-12))
    sign_p = (float(sps.binomtest(better_a, better_a + better_b, 0.5).pvalue)
              if better_a + better_b else 1.0)
    if len(ca) != len(cb):  # the two-stage draw pairs seed slots; repeat the shorter list's seeds
        m = max(len(ca), len(cb))
        ca, cb = np.resize(ca, (m, len(t))), np.resize(cb, (m, len(t)))
    boot = 100 * two_stage_replicates(ca, codes, n_boot=n_boot, seed=seed, values_b=cb)
    acc_a = np.bincount(codes, weights=(a == t).mean(0), minlength=k) / n
    acc_b = np.bincount(codes, weights=(b == t).mean(0), minlength=k) / n
    tost_p = equivalence_test(acc_a, acc_b, margin_pp / 100)
    lo90, hi90 = (float(q) for q in np.quantile(boot, [0.05, 0.95]))
    return {"oa_a": float((a == t).mean()), "oa_b": float((b == t).mean()),
            "diff_pp": 100 * float(((a == t).mean(0) - (b == t).mean(0)).mean()),
            "ci95_lo_pp": float(np.quantile(boot, 0.025)), "ci95_hi_pp": float(np.quantile(boot, 0.975)),
            "ci90_lo_pp": lo90, "ci90_hi_pp": hi90,
            "n_clusters": k, "clusters_a_better": better_a, "clusters_b_better": better_b,
            "sign_p": min(sign_p, 1.0), "perm_p": permutation_test_paired(s, seed=seed),
            "margin_pp": float(margin_pp), "tost_p": tost_p,
            "equivalent": bool(tost_p < alpha and -margin_pp < lo90 and hi90 < margin_pp)}


def pairwise_cluster_tests(
    y_true: Sequence[int] | np.ndarray,
    preds: Mapping[str, Sequence | np.ndarray],
    clusters: Sequence | np.ndarray,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] | None = None,
    margin_pp: float = EQUIVALENCE_MARGIN_PP,
) -> pd.DataFrame:
    """:func:`cluster_paired_test` for every pair (or the given ``pairs``), Holm-corrected.

    The permutation, sign and TOST p-values are each adjusted with Holm's step-down method over
    all the pairs in the table (``perm_p_holm``, ``sign_p_holm``, ``tost_p_holm``).
    ``significant_holm`` is ``perm_p_holm < alpha`` (a difference, judged by its size over the
    images); ``equivalent`` is ``tost_p_holm < alpha`` with the 90 % two-stage interval inside
    ``+-margin_pp``. Neither is the absence of the other: a pair can be neither (undecided).
    Beside them, labelled as such, the **patch-level** McNemar p-value (median over seeds): it
    treats correlated patches as independent and is kept only for comparison with paper B's unit.
    """
    if len(preds) < 2:
        raise ValueError(f"preds needs at least two models for a pairwise test, got {list(preds)}")
    names = list(preds)
    pairs = list(itertools.combinations(names, 2)) if pairs is None else list(pairs)
    unknown = sorted({m for pr in pairs for m in pr} - set(names))
    if unknown:
        raise ValueError(f"pairs name models {unknown} that are not in preds ({names})")
    t = _as_labels(y_true, "y_true")
    rows = []
    for na, nb in pairs:
        res = cluster_paired_test(t, preds[na], preds[nb], clusters, n_boot=n_boot, seed=seed,
                                  margin_pp=margin_pp, alpha=alpha)
        pa = _as_seed_preds(preds[na], len(t), na)
        pb = _as_seed_preds(preds[nb], len(t), nb)
        patch_p = [mcnemar(t, x, y)["p_value"] for x, y in zip(pa, pb, strict=False)]
        rows.append({"model_a": na, "model_b": nb, **res,
                     "patch_level_mcnemar_p": float(np.median(patch_p))})
    df = pd.DataFrame(rows)
    for col in ("sign_p", "perm_p", "tost_p"):
        df.insert(df.columns.get_loc(col) + 1, f"{col}_holm", holm(df[col].to_numpy()))
    df.insert(df.columns.get_loc("perm_p_holm") + 1, "significant_holm", df["perm_p_holm"] < alpha)
    df["equivalent"] = (df["tost_p_holm"] < alpha) & (df["ci90_lo_pp"] > -df["margin_pp"]) \
        & (df["ci90_hi_pp"] < df["margin_pp"])
    return df


# --------------------------------------------------------------------------- error rates by a covariate
def _edges(bins: Sequence[float]) -> np.ndarray:
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins must be at least two strictly increasing edges, got {bins}")
    return edges


def binned_error_rates(
    values: Sequence[float] | np.ndarray,
    y_true: Sequence[int] | np.ndarray,
    preds: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    bins: Sequence[float] = PAPER_B_NDVI_BINS,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Error rate per bin of ``values`` (e.g. patch NDVI), seed mean, with a two-stage bootstrap CI.

    Bins are left-closed ``[lo, hi)``, the last closed. Within each bin the training seeds and
    then the clusters (source images) holding its patches are resampled with replacement
    (:func:`two_stage_replicates`); the 95 % percentile interval of the seed-mean error rate is
    ``ci95_lo`` / ``ci95_hi`` (NaN for an empty bin; a bin with a single cluster and one seed
    gets a zero-width interval, which says nothing).

    Returns:
        One row per bin: ``bin``, ``lo``, ``hi``, ``n`` (patches), ``n_clusters``,
        ``n_wrong`` (seed mean), ``error_rate`` (seed mean), ``seed_std``, ``ci95_lo``,
        ``ci95_hi``, ``share_of_errors`` (this bin's share of all errors, seed mean).

    """
    t = _as_labels(y_true, "y_true")
    p = _as_seed_preds(preds, len(t), "preds")
    v = np.asarray(values, dtype=np.float64)
    if v.shape != t.shape or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be {len(t)} finite numbers, one per test patch")
    edges = _edges(bins)
    if v.min() < edges[0] or v.max() > edges[-1]:
        raise ValueError(f"values lie outside the bin edges [{edges[0]}, {edges[-1]}] "
                         f"(min {v.min():.3f}, max {v.max():.3f})")
    codes, _ = _cluster_codes(clusters, len(t))
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, edges.size - 2)
    wrong = (p != t).astype(np.float64)  # (S, n)
    total_wrong = wrong.sum(1)
    rows = []
    for k in range(edges.size - 1):
        m = idx == k
        n = int(m.sum())
        close = "]" if k == edges.size - 2 else ")"
        row = {"bin": f"[{edges[k]:.2f}, {edges[k + 1]:.2f}{close}", "lo": float(edges[k]),
               "hi": float(edges[k + 1]), "n": n, "n_clusters": 0, "n_wrong": 0.0,
               "error_rate": float("nan"), "seed_std": float("nan"), "ci95_lo": float("nan"),
               "ci95_hi": float("nan"), "share_of_errors": 0.0}
        if n:
            w = wrong[:, m]
            rates = w.mean(1)
            boot = two_stage_replicates(w, codes[m], n_boot=n_boot, seed=seed + k)
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where(total_wrong > 0, w.sum(1) / total_wrong, 0.0)
            row.update({"n_clusters": len(np.unique(codes[m])), "n_wrong": float(w.sum(1).mean()),
                        "error_rate": float(rates.mean()),
                        "seed_std": float(rates.std(ddof=1)) if len(rates) > 1 else float("nan"),
                        "ci95_lo": float(np.quantile(boot, 0.025)),
                        "ci95_hi": float(np.quantile(boot, 0.975)),
                        "share_of_errors": float(share.mean())})
        rows.append(row)
    return pd.DataFrame(rows)


def range_error_contrast(
    values: Sequence[float] | np.ndarray,
    y_true: Sequence[int] | np.ndarray,
    preds: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    lo: float,
    hi: float,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Do errors concentrate in ``[lo, hi)`` of ``values``? Error rate inside vs outside.

    The difference of the two error rates (inside - outside, percentage points, seed mean)
    gets a two-stage bootstrap 95 % CI (seeds, then whole clusters, resampled; replicates that
    drew no patch inside or none outside are dropped); ``share_of_errors_in`` vs
    ``share_of_patches_in`` says whether the range holds more than its share of the errors.
    """
    t = _as_labels(y_true, "y_true")
    p = _as_seed_preds(preds, len(t), "preds")
    v = np.asarray(values, dtype=np.float64)
    if v.shape != t.shape:
        raise ValueError(f"values must hold one number per test patch ({len(t)})")
    if not lo < hi:
        raise ValueError(f"range ({lo}, {hi}) must have lo < hi")
    inside = (v >= lo) & (v < hi)
    if not inside.any() or inside.all():
        return {"n_in": int(inside.sum()), "n_out": int((~inside).sum()), "rate_in": float("nan"),
                "rate_out": float("nan"), "diff_pp": float("nan"), "ci95_lo_pp": float("nan"),
                "ci95_hi_pp": float("nan"), "share_of_errors_in": float("nan"),
                "share_of_patches_in": float(inside.mean())}
    codes, k = _cluster_codes(clusters, len(t))
    wrong_s = (p != t).astype(np.float64)  # (S, n)
    sums = np.stack([np.stack([np.bincount(codes, weights=w * inside, minlength=k),
                               np.bincount(codes, weights=w * ~inside, minlength=k)], -1) for w in wrong_s])
    n_in = np.bincount(codes, weights=inside.astype(float), minlength=k)
    n_out = np.bincount(codes, weights=(~inside).astype(float), minlength=k)
    (draws,), w = _two_stage_draws(len(p), k, _check_n_boot(n_boot), np.random.default_rng(seed))
    r = _resample(sums, draws, w)  # (B, S, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (r[..., 0] / (w @ n_in)[:, None] - r[..., 1] / (w @ n_out)[:, None]).mean(axis=1)
    boot = boot[np.isfinite(boot)]
    wrong = wrong_s.mean(0)  # seed-mean error per patch
    rate_in, rate_out = float(wrong[inside].mean()), float(wrong[~inside].mean())
    return {"n_in": int(inside.sum()), "n_out": int((~inside).sum()), "rate_in": rate_in,
            "rate_out": rate_out, "diff_pp": 100 * (rate_in - rate_out),
            "ci95_lo_pp": 100 * float(np.quantile(boot, 0.025)),
            "ci95_hi_pp": 100 * float(np.quantile(boot, 0.975)),
            "share_of_errors_in": float(wrong[inside].sum() / wrong.sum()) if wrong.sum() else float("nan"),
            "share_of_patches_in": float(inside.mean())}
