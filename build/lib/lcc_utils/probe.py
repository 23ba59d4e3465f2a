"""Frozen-feature linear probe: how good a coreset is, in seconds instead of a training run.

A pretrained backbone's penultimate features are computed once; a logistic regression fitted
on a coreset's features and scored on the test split measures what that coreset teaches a
linear classifier on fixed features. One fit takes well under a second, so many random draws
of the same size give the spread of random selection (which paper A never measured: one
random draw per cell) and each selector's percentile in it.

What it does not measure: fine-tuning (the backbone is frozen), so it answers "which images
are informative for these features", the question coreset selectors claim to answer, not
"which images train this network best in this budget" (notebook 04 answers that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

#: Random draws per fraction (issue 21 asks for >= 20; 50 makes a percentile move by 2 points).
PROBE_DRAWS = 50
#: Inverse L2 strength of the logistic regression on standardised features (scikit-learn's
#: default C; a coreset of 5 % has about 4 images per class, so the probe needs the penalty).
PROBE_C = 1.0


def feature_model(model: nn.Module) -> nn.Module:
    """``model`` with its classifier replaced by the identity: it returns pooled features.

    timm models through their own ``reset_classifier(0)``; our CNNs by their ``classifier``.
    """
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
    elif isinstance(getattr(model, "classifier", None), nn.Module):
        model.classifier = nn.Identity()
    else:
        raise ValueError(f"{type(model).__name__}: no classifier to remove (reset_classifier or .classifier)")
    return model.eval()


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = PROBE_C):
    """A multinomial logistic regression on standardised features (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   c: float = PROBE_C) -> float:
    """Test accuracy of :func:`fit_probe` on ``(train_x, train_y)``."""
    return float((fit_probe(train_x, train_y, c).predict(test_x) == test_y).mean())


def percentile_in(value: float, draws: Sequence[float]) -> float:
    """Percent of ``draws`` below ``value``, ties counted half (the mid-rank percentile)."""
    d = np.asarray(draws, dtype=float)
    if d.size == 0:
        raise ValueError("percentile_in needs at least one draw")
    return float(100.0 * ((d < value).sum() + 0.5 * (d == value).sum()) / d.size)


def probe_coresets(
    features: np.ndarray,
    labels: np.ndarray,
    train_pos: np.ndarray,
    test_pos: np.ndarray,
    selected: Mapping[str, Mapping[float, np.ndarray]],
    random_draw,
    draws: int = PROBE_DRAWS,
) -> pd.DataFrame:
    """Probe accuracy of every selector's coreset and of ``draws`` random ones per fraction.

    Args:
        features: Features of every image (rows are positions).
        labels: Their labels.
        train_pos: Positions of the split's training part (the pool coresets come from).
        test_pos: Positions of the test split.
        selected: ``{method: {fraction: positions}}`` of the selectors' coresets.
        random_draw: ``random_draw(fraction, i) -> positions``, the i-th random coreset.
        draws: Random draws per fraction.

    Returns:
        One row per coreset: ``method`` (``random_draw`` for the draws), ``fraction``, ``draw``
        (the draw's number, -1 for a selector), ``n`` and ``accuracy``; selectors also get
        ``percentile`` (:func:`percentile_in` of the draws of their fraction).

    """
    if draws < 1:
        raise ValueError(f"draws={draws} must be >= 1")
    test_x, test_y = features[test_pos], labels[test_pos]
    pool = set(np.asarray(train_pos).tolist())
    fractions = sorted({f for fr in selected.values() for f in fr})
    rows = []
    for f in fractions:
        for i in range(draws):
            pos = np.asarray(random_draw(f, i))
            rows.append({"method": "random_draw", "fraction": f, "draw": i, "n": len(pos),
                         "accuracy": probe_accuracy(features[pos], labels[pos], test_x, test_y)})
    table = pd.DataFrame(rows)
    for method, fr in selected.items():
        for f, pos in fr.items():
            pos = np.asarray(pos)
            if not set(pos.tolist()) <= pool:
                raise ValueError(f"{method} {f:g}: coreset holds images outside the training split")
            acc = probe_accuracy(features[pos], labels[pos], test_x, test_y)
            ref = table.loc[(table["method"] == "random_draw") & (table["fraction"] == f), "accuracy"]
            rows.append({"method": method, "fraction": f, "draw": -1, "n": len(pos), "accuracy": acc,
                         "percentile": percentile_in(acc, ref)})
    return pd.DataFrame(rows)


def probe_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per fraction: the random draws' mean, sd, 2.5/97.5 % quantiles, and each selector's percentile."""
    columns = ["method", "fraction", "accuracy", "percentile", "random_mean", "random_sd",
               "random_q025", "random_q975", "draws"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    draws = table[table["method"] == "random_draw"].groupby("fraction")["accuracy"]
    spread = pd.DataFrame({"random_mean": draws.mean(), "random_sd": draws.std(ddof=1),
                           "random_q025": draws.quantile(0.025), "random_q975": draws.quantile(0.975),
                           "draws": draws.size()})
    sel = table[table["method"] != "random_draw"][["method", "fraction", "accuracy", "percentile"]]
    out = sel.merge(spread.reset_index(), on="fraction")
    return out[columns].sort_values(["fraction", "method"]).reset_index(drop=True)


def backbone_features(backbone_model: nn.Module, loader, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``(features, dataset indices)`` of a loader's images through a frozen backbone.

    fp32 (no autocast): the probe's numbers do not depend on the device's mixed precision.
    """
    from lcc_utils.inference import predict

    with torch.no_grad():
        x, _, idx = predict(feature_model(backbone_model), loader, device, amp=False, output="logits")
    return x, idx
