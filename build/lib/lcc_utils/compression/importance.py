"""Paper A's layer importance, the signal that drives adaptive pruning and quantization.

A registry of metrics (:data:`IMPORTANCE_METRICS`: magnitude, entropy, gradient), one score
per prunable layer, and the rank normalisation to [0, 1] that LAP / LAQ use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from lcc_utils.compression.size import _check_model, prunable_layers


def _magnitude_importance(model: nn.Module, **_: Any) -> dict[str, float]:
    return {n: float(m.weight.detach().abs().mean()) for n, m in prunable_layers(model).items()}


def _entropy_importance(model: nn.Module, bins: int = 256, **_: Any) -> dict[str, float]:
    # Shannon entropy (bits) of the histogram of the layer's weights over its own range:
    # a spread-out, information-rich distribution scores higher than a peaked one.
    out = {}
    for n, m in prunable_layers(model).items():
        w = m.weight.detach().flatten().double().numpy()
        hist, _ = np.histogram(w, bins=bins)
        p = hist[hist > 0] / hist.sum()
        out[n] = float(-(p * np.log2(p)).sum())
    return out


def _gradient_importance(model: nn.Module, calib_loader: Iterable | None = None,
                         num_batches: int = 4, **_: Any) -> dict[str, float]:
    # First-order Taylor sensitivity: mean |w * dL/dw| of the cross-entropy loss, averaged
    # over the first `num_batches` calibration batches; the model is in eval mode (BatchNorm
    # running statistics, no dropout) so the score does not change the model.
    if calib_loader is None:
        raise ValueError("calib_loader is required for metric='gradient' "
                         "(a loader of (x, y, ...) calibration batches)")
    model = copy.deepcopy(model).eval()
    layers = prunable_layers(model)
    totals = dict.fromkeys(layers, 0.0)
    seen = 0
    for batch in calib_loader:
        if seen >= num_batches:
            break
        x, y = batch[0], batch[1]
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        for n, m in layers.items():
            g = m.weight.grad
            totals[n] += 0.0 if g is None else float((m.weight.detach() * g).abs().mean())
        seen += 1
    if seen == 0:
        raise ValueError("calib_loader yielded no batch")
    return {n: v / seen for n, v in totals.items()}


#: Layer-importance metrics of paper A's LAP / LAQ.
IMPORTANCE_METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "entropy": _entropy_importance,
    "gradient": _gradient_importance,
    "magnitude": _magnitude_importance,
}


def get_importance_metric(name: str) -> Callable[..., dict[str, float]]:
    """The importance function registered under ``name``."""
    if name not in IMPORTANCE_METRICS:
        raise ValueError(f"unknown importance metric {name!r}; choose one of: "
                         f"{', '.join(sorted(IMPORTANCE_METRICS))}")
    return IMPORTANCE_METRICS[name]


def layer_importance(model: nn.Module, metric: str = "magnitude",
                     calib_loader: Iterable | None = None,
                     num_batches: int = 4) -> dict[str, float]:
    """Paper A's layer importance, one score per prunable layer (module name -> score).

    Args:
        model: the trained model.
        metric: ``"magnitude"`` (mean |w|), ``"entropy"`` (Shannon entropy in bits of a
            256-bin histogram of the weights) or ``"gradient"`` (first-order Taylor
            sensitivity mean |w * dL/dw| over ``num_batches`` calibration batches).
        calib_loader: batches ``(x, y, ...)``; needed for ``"gradient"`` only.
        num_batches: calibration batches used by ``"gradient"``.

    """
    _check_model(model)
    fn = get_importance_metric(metric)
    return fn(model, calib_loader=calib_loader, num_batches=num_batches)


def importance_table(scores: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Layer importance: one row per layer (module order), one column per metric.

    Each metric also gets its rank in [0, 1] (``<metric>_rank``), the value LAP/LAQ use.
    """
    frame = pd.DataFrame({m: pd.Series(dict(s)) for m, s in scores.items()})
    for m in list(scores):
        frame[f"{m}_rank"] = _normalise_importance(scores[m], list(frame.index))
    return frame.rename_axis("layer").reset_index()


def _normalise_importance(importance: Mapping[str, float], names: list[str]) -> np.ndarray:
    # Rank normalisation to [0, 1] (0 = least important): robust to the metrics' very
    # different scales and to outlier layers; ties share their mean rank.
    missing = [n for n in names if n not in importance]
    if missing:
        raise ValueError(f"importance has no score for layer(s) {missing[:3]}"
                         f"{' ...' if len(missing) > 3 else ''}; compute it with "
                         f"layer_importance(model) on the same model")
    vals = np.array([float(importance[n]) for n in names])
    if not np.all(np.isfinite(vals)):
        raise ValueError("importance scores must be finite numbers")
    if len(vals) == 1:
        return np.array([0.5])
    ranks = pd.Series(vals).rank(method="average").to_numpy() - 1
    return ranks / (len(vals) - 1)
