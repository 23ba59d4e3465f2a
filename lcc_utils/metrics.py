"""Paper B's evaluation: accuracy metrics, McNemar's test, NDVI-binned errors, model cost.

Paper B reports overall accuracy (OA), Cohen's kappa, per-class precision /
recall / F1, a confusion matrix, a McNemar test between models and an error
analysis binned by NDVI. Every number here is computed with scikit-learn or
scipy on the *same* test patches for every model, so the paired McNemar test
is valid. Paper B states "p > 0.05" without showing the test; we compute it.

Model cost helpers (parameter count, FLOPs, CPU time per patch) live here too
because they are model-agnostic and the evaluation tables report them.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import classification_report, cohen_kappa_score, confusion_matrix

from lcc_utils.constants import PAPER_B_NDVI_BINS, PAPER_B_RESULTS

#: Below this many discordant pairs (b + c) McNemar uses the exact binomial test.
#: 25 is the usual textbook rule (the chi-square approximation is poor for small b + c).
MCNEMAR_EXACT_BELOW = 25


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


# --------------------------------------------------------------------------- accuracy
def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
) -> dict:
    """Paper B's accuracy measures on one test set.

    Args:
        y_true: reference class index per test patch.
        y_pred: predicted class index per test patch (same patches, same order).
        classes: class names; index ``i`` of the labels is ``classes[i]``.

    Returns:
        ``oa`` (overall accuracy, fraction 0-1), ``kappa`` (Cohen's kappa),
        ``macro_precision`` / ``macro_recall`` / ``macro_f1`` (unweighted mean over
        classes), ``n`` (test patches) and ``per_class``: ``{class: {precision,
        recall, f1, support}}``. A class never predicted gets precision 0 (not NaN).

    """
    t, p = _check_pair(y_true, y_pred, classes)
    labels = list(range(len(classes)))
    report = classification_report(
        t, p, labels=labels, target_names=list(classes), output_dict=True, zero_division=0
    )
    per_class = {
        c: {
            "precision": float(report[c]["precision"]),
            "recall": float(report[c]["recall"]),
            "f1": float(report[c]["f1-score"]),
            "support": int(report[c]["support"]),
        }
        for c in classes
    }
    # kappa is undefined (0/0) when both raters use a single class; sklearn returns NaN there.
    kappa = float(cohen_kappa_score(t, p, labels=labels))
    return {
        "oa": float(np.mean(t == p)),
        "kappa": kappa,
        "macro_precision": float(report["macro avg"]["precision"]),
        "macro_recall": float(report["macro avg"]["recall"]),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "n": int(t.size),
        "per_class": per_class,
    }


def per_class_table(metrics: Mapping) -> pd.DataFrame:
    """Per-class precision / recall / F1 / support of :func:`classification_metrics` as a table."""
    if "per_class" not in metrics:
        raise ValueError(
            "metrics has no 'per_class' entry: pass classification_metrics(...) output"
        )
    df = pd.DataFrame(metrics["per_class"]).T
    df.index.name = "class"
    df["support"] = df["support"].astype(int)
    return df


def confusion(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
) -> pd.DataFrame:
    """Confusion matrix of counts: rows are the reference class, columns the prediction."""
    t, p = _check_pair(y_true, y_pred, classes)
    cm = confusion_matrix(t, p, labels=list(range(len(classes))))
    return pd.DataFrame(
        cm,
        index=pd.Index(list(classes), name="reference"),
        columns=pd.Index(list(classes), name="predicted"),
    )


def plot_confusion(cm: pd.DataFrame, normalize: bool = True, title: str | None = None) -> Figure:
    """Heatmap of a :func:`confusion` table.

    Args:
        cm: counts from :func:`confusion`.
        normalize: colour by row fraction (recall per reference class); cells show
            the fraction and the count.
        title: axes title.

    """
    if not isinstance(cm, pd.DataFrame) or cm.shape[0] != cm.shape[1] or cm.empty:
        raise ValueError("cm must be a square, non-empty DataFrame from confusion(...)")
    counts = cm.to_numpy()
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
    shown = frac if normalize else counts
    annot = np.array(
        [
            [f"{frac[i, j]:.2f}\n({counts[i, j]})" if normalize else f"{counts[i, j]}"
             for j in range(counts.shape[1])]
            for i in range(counts.shape[0])
        ]
    )
    n = counts.shape[0]
    size = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(
        shown, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1 if normalize else None,
        xticklabels=cm.columns, yticklabels=cm.index, cbar=True, ax=ax,
        annot_kws={"fontsize": 7 if n > 5 else 9},
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    default = "confusion matrix (row-normalised)" if normalize else "confusion matrix"
    ax.set_title(title or default)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- McNemar
def mcnemar(
    y_true: Sequence[int] | np.ndarray,
    pred_a: Sequence[int] | np.ndarray,
    pred_b: Sequence[int] | np.ndarray,
    exact: bool | None = None,
) -> dict:
    """McNemar's test of whether two classifiers err equally often on the same test patches.

    Only the discordant patches count: ``b`` = A right and B wrong, ``c`` = A wrong and
    B right. Under H0 (equal error rates) ``b ~ Binomial(b + c, 0.5)``.

    Args:
        y_true: reference labels of the shared test patches.
        pred_a: predictions of model A on those patches.
        pred_b: predictions of model B on those patches.
        exact: ``True`` -> exact two-sided binomial test (scipy ``binomtest``);
            ``False`` -> chi-square with Edwards' continuity correction,
            ``(|b - c| - 1)^2 / (b + c)`` with 1 degree of freedom; ``None`` (default)
            -> exact when ``b + c < 25``, else chi-square.

    Returns:
        ``b``, ``c``, ``statistic`` (``min(b, c)`` for the exact test, as statsmodels
        reports it; the chi-square value otherwise), ``p_value`` and ``method``.
        With no discordant pair (``b + c == 0``) the models agree everywhere: p = 1.

    """
    t, a = _check_pair(y_true, pred_a, pred_name="pred_a")
    _, bb = _check_pair(y_true, pred_b, pred_name="pred_b")
    if exact is not None and not isinstance(exact, bool):
        raise ValueError(f"exact must be True, False or None, got {exact!r}")
    ok_a, ok_b = a == t, bb == t
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    n_disc = b + c
    use_exact = (n_disc < MCNEMAR_EXACT_BELOW) if exact is None else exact
    if n_disc == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0,
                "method": "exact binomial" if use_exact else "chi-square (continuity corrected)"}
    if use_exact:
        p = float(stats.binomtest(b, n_disc, 0.5, alternative="two-sided").pvalue)
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": min(p, 1.0),
                "method": "exact binomial"}
    stat = (abs(b - c) - 1.0) ** 2 / n_disc
    p = float(stats.chi2.sf(stat, df=1))
    return {"b": b, "c": c, "statistic": float(stat), "p_value": p,
            "method": "chi-square (continuity corrected)"}


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


# --------------------------------------------------------------------------- NDVI errors
def ndvi_binned_errors(
    ndvi: Sequence[float] | np.ndarray,
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    bins: Sequence[float] | int = PAPER_B_NDVI_BINS,
) -> pd.DataFrame:
    """Error rate of one model per NDVI bin (paper B's NDVI-binned error analysis).

    Args:
        ndvi: one NDVI value per test patch (we use the patch-mean NDVI).
        y_true: reference labels.
        y_pred: predictions.
        bins: increasing bin edges (left-closed ``[lo, hi)``, the last bin closed), or an
            int ``k`` for ``k`` equal-width bins over ``[-1, 1]``. Paper B does not
            publish its edges; the default ``PAPER_B_NDVI_BINS`` is our choice.

    Returns:
        One row per bin: ``bin``, ``lo``, ``hi``, ``n``, ``n_wrong``, ``error_rate``
        (NaN for an empty bin) and its 95 % Wilson interval ``ci95_lo`` / ``ci95_hi``.
        Counts sum to the number of patches. The Wilson interval treats patches as
        independent; where patches share a source image it is too narrow (use
        :func:`cluster_bootstrap` at the image level for an honest interval).

    Raises:
        ValueError: on NaN NDVI or an NDVI outside the bin edges (never dropped silently).

    """
    t, p = _check_pair(y_true, y_pred)
    v = np.asarray(ndvi, dtype=np.float64)
    if v.shape != t.shape:
        raise ValueError(f"ndvi has shape {v.shape} but y_true has {t.shape}: one NDVI per patch")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"ndvi has {int(np.sum(~np.isfinite(v)))} non-finite values")
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise ValueError(f"bins must be >= 1 or a list of edges, got {bins}")
        edges = np.linspace(-1.0, 1.0, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"bins must be at least two strictly increasing edges, got {bins}")
    outside = (v < edges[0]) | (v > edges[-1])
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} NDVI values lie outside the bin edges "
            f"[{edges[0]}, {edges[-1]}] (min {v.min():.3f}, max {v.max():.3f})"
        )
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, edges.size - 2)
    wrong = t != p
    rows = []
    for k in range(edges.size - 1):
        m = idx == k
        n = int(m.sum())
        nw = int(wrong[m].sum())
        close = "]" if k == edges.size - 2 else ")"
        ci = (stats.binomtest(nw, n).proportion_ci(0.95, method="wilson") if n
              else None)
        rows.append({
            "bin": f"[{edges[k]:.2f}, {edges[k + 1]:.2f}{close}", "lo": float(edges[k]),
            "hi": float(edges[k + 1]), "n": n, "n_wrong": nw,
            "error_rate": nw / n if n else float("nan"),
            "ci95_lo": float(ci.low) if ci else float("nan"),
            "ci95_hi": float(ci.high) if ci else float("nan"),
        })
    return pd.DataFrame(rows)


def plot_ndvi_errors(
    table: pd.DataFrame | Mapping[str, pd.DataFrame],
    ndvi: Sequence[float] | np.ndarray | None = None,
    correct: Sequence[bool] | np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """Error rate per NDVI bin (bars) and NDVI histograms of correct vs wrong patches.

    Args:
        table: :func:`ndvi_binned_errors` output, or model name -> such a table
            (grouped bars, one colour per model).
        ndvi: patch NDVI values for the histogram panel (optional).
        correct: boolean per patch, True where the (single) model is right; needed
            with ``ndvi``.
        title: figure title.

    """
    tables = {"model": table} if isinstance(table, pd.DataFrame) else dict(table)
    if not tables:
        raise ValueError("table is empty: pass ndvi_binned_errors(...) output")
    with_hist = ndvi is not None
    if with_hist and correct is None:
        raise ValueError("correct is required with ndvi (True where the model is right)")
    fig, axes = plt.subplots(1, 2 if with_hist else 1, figsize=(11 if with_hist else 6, 4))
    ax = axes[0] if with_hist else axes
    first = next(iter(tables.values()))
    x = np.arange(len(first))
    width = 0.8 / len(tables)
    for i, (name, tb) in enumerate(tables.items()):
        if len(tb) != len(first):
            raise ValueError(f"table for {name!r} has {len(tb)} bins, expected {len(first)}")
        ax.bar(x + (i - (len(tables) - 1) / 2) * width, tb["error_rate"].fillna(0), width,
               label=name)
    ticks = [f"{b}\nn={n}" for b, n in zip(first["bin"], first["n"], strict=True)]
    ax.set_xticks(x, ticks, fontsize=7)
    ax.set_ylabel("error rate")
    ax.set_xlabel("patch mean NDVI")
    ax.set_ylim(0, 1)
    if len(tables) > 1:
        ax.legend(fontsize=7)
    if with_hist:
        v = np.asarray(ndvi, dtype=float)
        ok = np.asarray(correct, dtype=bool)
        if ok.shape != v.shape:
            raise ValueError(f"correct has shape {ok.shape} but ndvi has {v.shape}")
        edges = np.linspace(min(first["lo"].min(), v.min()), max(first["hi"].max(), v.max()), 31)
        axes[1].hist(v[ok], bins=edges, alpha=0.6, label=f"correct (n={int(ok.sum())})")
        axes[1].hist(v[~ok], bins=edges, alpha=0.8, label=f"wrong (n={int((~ok).sum())})")
        axes[1].set_xlabel("patch mean NDVI")
        axes[1].set_ylabel("test patches")
        axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- curves, tables
def summary_table(
    results: Mapping[str, Mapping],
    paper: Mapping[str, Mapping[str, float]] = PAPER_B_RESULTS,
) -> pd.DataFrame:
    """Our results beside paper B's published numbers.

    Args:
        results: model name -> metrics (``oa`` as a fraction, ``kappa``, ``macro_f1`` and
            optionally ``params``, ``flops``, ``cpu_ms_per_patch``). Names that match a
            key of ``paper`` (e.g. ``LightweightCNN``, ``ResNet-18``, ``NDVI threshold``)
            get the paper's numbers beside them.
        paper: published numbers, OA in percent (``constants.PAPER_B_RESULTS``).

    Returns:
        One row per model: ``oa_%``, ``kappa``, ``macro_f1``, ``params``, ``flops``,
        ``cpu_ms_per_patch``, ``paper_oa_%``, ``paper_kappa``, ``delta_oa_pp``
        (ours minus paper, percentage points). Missing values are NaN.

    """
    if not results:
        raise ValueError("results is empty")
    rows = []
    for name, m in results.items():
        if "oa" not in m:
            raise ValueError(f"results[{name!r}] has no 'oa' entry")
        pub = paper.get(name, {})
        oa = 100.0 * float(m["oa"])
        rows.append({
            "model": name,
            "oa_%": oa,
            "kappa": float(m.get("kappa", np.nan)),
            "macro_f1": float(m.get("macro_f1", np.nan)),
            "params": m.get("params", np.nan),
            "flops": m.get("flops", np.nan),
            "cpu_ms_per_patch": m.get("cpu_ms_per_patch", np.nan),
            "paper_oa_%": pub.get("oa", np.nan),
            "paper_kappa": pub.get("kappa", np.nan),
            "delta_oa_pp": oa - pub["oa"] if "oa" in pub else np.nan,
        })
    df = pd.DataFrame(rows).set_index("model")
    # counts stay integers (NaN where undefined, e.g. a forest has no "parameters")
    df[["params", "flops"]] = df[["params", "flops"]].astype("Float64").round().astype("Int64")
    return df


def mean_std(df: pd.DataFrame, by: str | Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of ``columns`` over seeds, per group.

    Returns one row per group with ``<col>_mean``, ``<col>_std`` and ``n`` (runs in the
    group); std is NaN for a single run.
    """
    by_list = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by_list, *columns] if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError("df is empty: no runs to aggregate")
    g = df.groupby(by_list, sort=True)[list(columns)]
    out = pd.concat([g.mean().add_suffix("_mean"), g.std(ddof=1).add_suffix("_std")], axis=1)
    out = out[[f"{c}_{s}" for c in columns for s in ("mean", "std")]]
    out["n"] = g.size()
    return out


# --------------------------------------------------------------------------- model cost
def _input_tensor(input_shape: Sequence[int], batch: int) -> torch.Tensor:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape}")
    return torch.zeros((batch, *shape), dtype=torch.float32)


def count_flops(model: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations for ONE patch of ``input_shape`` = (C, H, W), forward only.

    Counted by ``torch.utils.flop_counter`` on a CPU copy of the model in eval mode:
    a multiply-add counts as 2 FLOPs and only convolutions / matrix products are
    counted (activations, pooling and normalisation are ignored, as usual).
    """
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu().eval()
    x = _input_tensor(input_shape, 1)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(x)
    return int(counter.get_total_flops())


def cpu_latency_per_patch(
    model: torch.nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 64,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """Median CPU inference time per patch, in milliseconds (batched forward, eval mode).

    A CPU copy of the model classifies ``batch_size`` zero patches ``repeats`` times
    after ``warmup`` untimed passes; the median batch time divided by the batch size
    is returned. Timings depend on the machine and on ``torch.get_num_threads()``;
    compare models only within the same call site / run.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            "need batch_size >= 1, repeats >= 1, warmup >= 0; "
            f"got {batch_size}, {repeats}, {warmup}"
        )
    m = copy.deepcopy(model).cpu().eval()
    x = _input_tensor(input_shape, batch_size)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            m(x)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
    return float(np.median(times) / batch_size * 1000.0)


def paired_difference(diffs: np.ndarray) -> tuple[float, float, float, float]:
    """Mean of paired differences, its 95 % t-interval and the paired t-test p-value.

    The unit is the pair (e.g. one seed shared by two methods). Fewer than 2 pairs give NaN
    interval and p; identical differences give a zero-width interval.
    """
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return (float(d.mean()) if len(d) else float("nan")), float("nan"), float("nan"), float("nan")
    mean, se = d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    if se == 0:
        return float(mean), float(mean), float(mean), (1.0 if mean == 0 else 0.0)
    half = stats.t.ppf(0.975, len(d) - 1) * se
    p = 2 * stats.t.sf(abs(mean / se), len(d) - 1)
    return float(mean), float(mean - half), float(mean + half), float(p)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


# --------------------------------------------------------------------------- tests at the cluster level
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


def cluster_bootstrap(
    y_true: Sequence[int] | np.ndarray,
    preds: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_classes: int,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy measures of one model with 95 % cluster-bootstrap intervals.

    Test patches that share a source image (EuroSAT: the four quadrants of one image) or a
    spatial block are not independent. The bootstrap resamples whole ``clusters`` with
    replacement (percentile interval), so the interval describes the independent unit.
    ``preds`` may hold one row per training seed: each statistic is the mean over seeds,
    resampled with the same clusters for every seed.

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
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: use at least 100 bootstrap resamples")
    c = int(n_classes)
    # per seed and cluster, the confusion counts: (S, K, C, C)
    flat = (codes[None, :] * c + t[None, :]) * c + p
    cm = np.stack([np.bincount(f, minlength=k * c * c) for f in flat]).reshape(len(p), k, c, c)
    point = _confusion_metrics(cm.sum(1))  # (S,)
    rng = np.random.default_rng(seed)
    w = np.stack([np.bincount(rng.integers(0, k, k), minlength=k) for _ in range(int(n_boot))])
    boot = _confusion_metrics(np.einsum("bk,skij->bsij", w, cm))  # (B, S)
    rows = []
    for m, v in point.items():
        b = boot[m].mean(axis=1)
        rows.append({"measure": m, "estimate": float(v.mean()),
                     "seed_std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                     "ci95_lo": float(np.quantile(b, 0.025)), "ci95_hi": float(np.quantile(b, 0.975)),
                     "n_clusters": k})
    return pd.DataFrame(rows).set_index("measure")


def cluster_paired_test(
    y_true: Sequence[int] | np.ndarray,
    preds_a: Sequence | np.ndarray,
    preds_b: Sequence | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Paired comparison of two models at the level of the independent unit (a cluster).

    Each cluster (source image or spatial block) gets the difference of the two models'
    accuracy on its patches, averaged over training seeds (rows of ``preds_*``). Two
    answers, both at the cluster level:

    * a **sign test** (exact two-sided binomial on the clusters where one model is better;
      ties dropped): McNemar's idea with the cluster as the unit;
    * a **cluster bootstrap** 95 % percentile interval of the OA difference A - B
      (whole clusters resampled with replacement).

    Returns:
        ``oa_a``, ``oa_b`` (seed means), ``diff_pp`` (A - B, percentage points),
        ``ci95_lo_pp``, ``ci95_hi_pp``, ``n_clusters``, ``clusters_a_better``,
        ``clusters_b_better``, ``sign_p``.

    """
    t = _as_labels(y_true, "y_true")
    a = _as_seed_preds(preds_a, len(t), "preds_a")
    b = _as_seed_preds(preds_b, len(t), "preds_b")
    codes, k = _cluster_codes(clusters, len(t))
    d = ((a == t).mean(0) - (b == t).mean(0))  # per patch, seed-averaged
    s = np.bincount(codes, weights=d, minlength=k)
    n = np.bincount(codes, minlength=k).astype(float)
    per_cluster = s / n
    better_a, better_b = int(np.sum(per_cluster > 1e-12)), int(np.sum(per_cluster < -1e-12))
    sign_p = (float(stats.binomtest(better_a, better_a + better_b, 0.5).pvalue)
              if better_a + better_b else 1.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(int(n_boot), k))
    boot = s[idx].sum(1) / n[idx].sum(1)
    return {"oa_a": float((a == t).mean()), "oa_b": float((b == t).mean()),
            "diff_pp": 100 * float(d.mean()),
            "ci95_lo_pp": 100 * float(np.quantile(boot, 0.025)),
            "ci95_hi_pp": 100 * float(np.quantile(boot, 0.975)),
            "n_clusters": k, "clusters_a_better": better_a, "clusters_b_better": better_b,
            "sign_p": min(sign_p, 1.0)}


def pairwise_cluster_tests(
    y_true: Sequence[int] | np.ndarray,
    preds: Mapping[str, Sequence | np.ndarray],
    clusters: Sequence | np.ndarray,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """:func:`cluster_paired_test` for every pair (or the given ``pairs``), Holm-corrected.

    The sign-test p-values are adjusted with Holm's step-down method over all the pairs in
    the table; ``significant_holm`` is ``p_holm < alpha``. Beside them, labelled as such,
    the **patch-level** McNemar p-value (median over seeds): it treats correlated patches as
    independent and is kept only for comparison with paper B's unit.
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
        res = cluster_paired_test(t, preds[na], preds[nb], clusters, n_boot=n_boot, seed=seed)
        pa = _as_seed_preds(preds[na], len(t), na)
        pb = _as_seed_preds(preds[nb], len(t), nb)
        patch_p = [mcnemar(t, x, y)["p_value"] for x, y in zip(pa, pb, strict=False)]
        rows.append({"model_a": na, "model_b": nb, **res,
                     "patch_level_mcnemar_p": float(np.median(patch_p))})
    df = pd.DataFrame(rows)
    df.insert(df.columns.get_loc("sign_p") + 1, "sign_p_holm", holm(df["sign_p"].to_numpy()))
    df.insert(df.columns.get_loc("sign_p_holm") + 1, "significant_holm", df["sign_p_holm"] < alpha)
    return df


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
    """Error rate per bin of ``values`` (e.g. patch NDVI), seed mean, with a cluster-bootstrap CI.

    Bins are left-closed ``[lo, hi)``, the last closed. Within each bin the clusters (source
    images) holding its patches are resampled with replacement; the 95 % percentile interval
    of the seed-mean error rate is ``ci95_lo`` / ``ci95_hi`` (NaN for an empty bin; a bin
    with a single cluster gets a zero-width interval, which says nothing).

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
    rng = np.random.default_rng(seed)
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
            c, kk = pd.factorize(pd.Series(codes[m]))
            s = np.bincount(c, weights=w.mean(0), minlength=len(kk))
            cnt = np.bincount(c, minlength=len(kk)).astype(float)
            draw = rng.integers(0, len(kk), size=(int(n_boot), len(kk)))
            boot = s[draw].sum(1) / cnt[draw].sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where(total_wrong > 0, w.sum(1) / total_wrong, 0.0)
            row.update({"n_clusters": len(kk), "n_wrong": float(w.sum(1).mean()),
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
    gets a cluster-bootstrap 95 % CI (whole clusters resampled); ``share_of_errors_in`` vs
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
    wrong = (p != t).astype(np.float64).mean(0)  # seed-mean error per patch
    w_in = np.bincount(codes, weights=wrong * inside, minlength=k)
    n_in = np.bincount(codes, weights=inside.astype(float), minlength=k)
    w_out = np.bincount(codes, weights=wrong * ~inside, minlength=k)
    n_out = np.bincount(codes, weights=(~inside).astype(float), minlength=k)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, k, size=(int(n_boot), k))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = w_in[draw].sum(1) / n_in[draw].sum(1) - w_out[draw].sum(1) / n_out[draw].sum(1)
    boot = boot[np.isfinite(boot)]
    rate_in, rate_out = float(wrong[inside].mean()), float(wrong[~inside].mean())
    return {"n_in": int(inside.sum()), "n_out": int((~inside).sum()), "rate_in": rate_in,
            "rate_out": rate_out, "diff_pp": 100 * (rate_in - rate_out),
            "ci95_lo_pp": 100 * float(np.quantile(boot, 0.025)),
            "ci95_hi_pp": 100 * float(np.quantile(boot, 0.975)),
            "share_of_errors_in": float(wrong[inside].sum() / wrong.sum()) if wrong.sum() else float("nan"),
            "share_of_patches_in": float(inside.mean())}
