"""Paper B's evaluation: accuracy metrics, confusion matrices, NDVI-binned errors, model cost.

Paper B reports overall accuracy (OA), Cohen's kappa, per-class precision /
recall / F1, a confusion matrix, a McNemar test between models and an error
analysis binned by NDVI. The accuracy measures here are computed with scikit-learn
on the *same* test patches for every model. How sure we are of them (McNemar, the
paired tests at the image level, equivalence tests, Holm, the bootstrap intervals)
is :mod:`lcc_utils.stats`; the names that used to live here still resolve, with a
DeprecationWarning.

Model cost helpers (parameter count, FLOPs, CPU time per patch) live here too
because they are model-agnostic and the evaluation tables report them.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import classification_report, cohen_kappa_score, confusion_matrix

from lcc_utils import stats as _stats
from lcc_utils.constants import PAPER_B_NDVI_BINS, PAPER_B_RESULTS
from lcc_utils.stats import _check_pair

#: Statistics that moved to :mod:`lcc_utils.stats` (issue 22); ``metrics.<name>`` still resolves.
MOVED_TO_STATS = ("MCNEMAR_EXACT_BELOW", "mcnemar", "pairwise_mcnemar", "paired_difference", "holm",
                  "cluster_bootstrap", "cluster_paired_test", "pairwise_cluster_tests", "binned_error_rates",
                  "range_error_contrast")


def __getattr__(name: str):  # PEP 562: the old home of the statistics forwards to the new one
    if name in MOVED_TO_STATS:
        warnings.warn(f"lcc_utils.metrics.{name} moved to lcc_utils.stats.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(_stats, name)
    raise AttributeError(f"module 'lcc_utils.metrics' has no attribute {name!r}")


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
        :func:`lcc_utils.stats.binned_error_rates` at the image level for an honest interval).

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
    first = next(iter(tables.values()))
    bar_w = max(6.0, 0.75 * len(first))  # about 0.75 in per bin: the tick labels never overlap
    fig, axes = plt.subplots(1, 2 if with_hist else 1, figsize=(bar_w + (5 if with_hist else 0), 4.2),
                             gridspec_kw={"width_ratios": [bar_w, 5]} if with_hist else None)
    ax = axes[0] if with_hist else axes
    x = np.arange(len(first))
    width = 0.8 / len(tables)
    for i, (name, tb) in enumerate(tables.items()):
        if len(tb) != len(first):
            raise ValueError(f"table for {name!r} has {len(tb)} bins, expected {len(first)}")
        ax.bar(x + (i - (len(tables) - 1) / 2) * width, tb["error_rate"].fillna(0), width,
               label=name)
    ticks = [f"{b}\nn={n}" for b, n in zip(first["bin"], first["n"], strict=True)]
    ax.set_xticks(x, ticks, fontsize=7, rotation=45, ha="right", rotation_mode="anchor")
    # a bin without bars is said: no patches (no error rate), or patches that every model got right
    rates = np.vstack([tb["error_rate"].fillna(0).to_numpy() for tb in tables.values()])
    for xi, n, top in zip(x, first["n"], rates.max(axis=0), strict=True):
        if n == 0 or top == 0:
            ax.text(xi, 0.02, "no test\npatches" if n == 0 else "no\nerrors", ha="center", va="bottom",
                    fontsize=6, color="grey")
    ax.set_ylabel("error rate (share of the bin's patches)")
    ax.set_xlabel("patch mean NDVI (bin; n = test patches)")
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
