"""Paper A's layer-wise adaptive pruning (LAP), quantization (LAQ) and prune-then-quantize.

Each turns a layer importance (:func:`~lcc_utils.compression.layer_importance`) into
per-layer sparsities or bit-widths, solving for the one free constant by bisection so that
the whole model reaches a target :func:`~lcc_utils.compression.compression_ratio` (the
budget).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from lcc_utils.compression.importance import _normalise_importance
from lcc_utils.compression.pruning import _apply_mask, _check_sparsity, _smallest_k_mask
from lcc_utils.compression.quantization import (
    DEFAULT_GRANULARITY,
    DEFAULT_LEVELS,
    _check_bits,
    _check_granularity,
    _check_levels,
    _quantize_layers,
)
from lcc_utils.compression.size import (
    _FP32_BITS,
    CompressionReport,
    LayerReport,
    _check_model,
    analyze,
    compression_ratio,
    paper_compression_ratio,
    prunable_layers,
)

_MAX_SPARSITY_ADAPTIVE = 0.99  # LAP never removes a whole layer

#: What a budget is a target of: paper A's CR (32/b, 1/(1-s); the default, so that the
#: paper's budgets mean what they meant there) or ours (every byte of the artefact counted).
BUDGET_CRS: dict[str, Callable[[CompressionReport], float]] = {
    "paper": paper_compression_ratio,
    "ours": compression_ratio,
}


def _get_budget_cr(name: str) -> Callable[[CompressionReport], float]:
    if name not in BUDGET_CRS:
        raise ValueError(f"unknown budget_cr {name!r}; choose one of: {', '.join(BUDGET_CRS)}")
    return BUDGET_CRS[name]


def _bisect(fn: Callable[[float], float], target: float, lo: float, hi: float,
            increasing: bool, iters: int = 60) -> float:
    """Smallest (increasing) / largest (decreasing) x in [lo, hi] with fn(x) >= target."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        ok = fn(mid) >= target
        if increasing:
            lo, hi = (lo, mid) if ok else (mid, hi)
        else:
            lo, hi = (mid, hi) if ok else (lo, mid)
    return hi if increasing else lo


def _check_budget(budget: float) -> None:
    if not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 1.0:
        raise ValueError(f"budget is a target compression ratio and must be > 1, got {budget!r}")


def _plan_report(base: CompressionReport, sparsity: Mapping[str, float],
                 bits: Mapping[str, int], granularity: str = DEFAULT_GRANULARITY,
                 levels: str = DEFAULT_LEVELS) -> CompressionReport:
    """Report predicted from an :func:`analyze` report for per-layer sparsities and bits.

    A layer's sparsity is the fraction of the tensor removed on top of its existing zeros.
    """
    layers = {}
    for key, lr in base.layers.items():
        name = key[: -len(".weight")] if key.endswith(".weight") else ""
        nnz = max(lr.nnz - int(round(sparsity.get(name, 0.0) * lr.numel)), 0)
        b = int(bits.get(name, _FP32_BITS))
        n_scales = 1 if granularity == "tensor" else lr.shape[0]
        layers[key] = LayerReport(lr.name, lr.shape, nnz, b,
                                  np.ones(n_scales, np.float32) if b < _FP32_BITS else None,
                                  levels)
    return CompressionReport(base.method, base.settings, layers, base.state)


def _edges(names: list[str]) -> set[str]:
    return {names[0], names[-1]} if len(names) > 1 else set()


def _lap_sparsities(model: nn.Module, importance: Mapping[str, float],
                    goal: Callable[[dict[str, float]], float], target: float,
                    keep_edges: bool) -> dict[str, float]:
    names = list(prunable_layers(model))
    iota = _normalise_importance(importance, names)
    # Least important layer pruned at rate c, most important at c / 2 (weight 1 - iota / 2):
    # "more important -> less pruned"; the stem and classifier stay dense (keep_edges).
    weight = 1.0 - iota / 2.0
    edges = _edges(names) if keep_edges else set()

    def plan(c: float) -> dict[str, float]:
        return {n: 0.0 if n in edges else float(min(_MAX_SPARSITY_ADAPTIVE, c * wt))
                for n, wt in zip(names, weight, strict=True)}

    hi = _MAX_SPARSITY_ADAPTIVE / weight.min()
    if goal(plan(hi)) < target:
        raise ValueError(f"budget {target:g} is out of reach of pruning alone "
                         f"(at most {goal(plan(hi)):.2f} with every layer "
                         f"{_MAX_SPARSITY_ADAPTIVE:.0%} sparse)")
    return plan(_bisect(lambda c: goal(plan(c)), target, 0.0, hi, increasing=True))


def _prune_to(model: nn.Module, sparsity: Mapping[str, float]) -> None:
    with torch.no_grad():
        for name, mod in prunable_layers(model).items():
            w = mod.weight
            zeros = int((w == 0).sum())
            # sparsity is the fraction of the whole tensor removed on top of existing zeros
            k = zeros + int(round(sparsity.get(name, 0.0) * w.numel()))
            _apply_mask(w, _smallest_k_mask(w, min(k, w.numel())))


def adaptive_prune(model: nn.Module, importance: Mapping[str, float], budget: float,
                   keep_edges: bool = True,
                   budget_cr: str = "paper") -> tuple[nn.Module, CompressionReport]:
    """Layer-wise adaptive pruning (LAP) to a target compression ratio.

    Per-layer sparsity ``s_l = min(0.99, c * (1 - iota_l / 2))`` where ``iota_l`` in [0, 1] is
    the layer's rank-normalised importance: the most important layer is pruned at half the
    rate of the least important one. ``c`` is solved by bisection so that the model's
    compression ratio reaches ``budget``.

    Args:
        model: the model (not modified).
        importance: :func:`layer_importance` scores of this model.
        budget: target compression ratio (> 1) of the whole model.
        keep_edges: keep the first (stem) and last (classifier) layers dense.
        budget_cr: ``"paper"``: the budget is paper A's CR, 1 / (1 - s); ``"ours"``: the
            size of the artefact (mask or index cost, fp32 biases and norms counted).

    """
    _check_model(model)
    _check_budget(budget)
    cr_fn = _get_budget_cr(budget_cr)
    model = copy.deepcopy(model)
    base = analyze(model)
    sp = _lap_sparsities(model, importance,
                         lambda s: cr_fn(_plan_report(base, s, {})), budget, keep_edges)
    _prune_to(model, sp)
    report = analyze(model, "lap", {"budget": float(budget), "budget_cr": budget_cr})
    return model, report


def _laq_bits(model: nn.Module, importance: Mapping[str, float], budget: float,
              min_bits: int, spread: float, keep_edges: bool, budget_cr: str = "paper",
              granularity: str = DEFAULT_GRANULARITY,
              levels: str = DEFAULT_LEVELS) -> dict[str, int]:
    names = list(prunable_layers(model))
    base = analyze(model)
    iota = _normalise_importance(importance, names)
    edges = _edges(names) if keep_edges else set()

    def plan(c: float) -> dict[str, int]:
        # bits_l = round(c + spread * (iota_l - 1/2)) clipped to [min_bits, 8]: the most
        # important layer gets `spread` more bits than the least important one.
        return {n: 8 if n in edges else int(np.clip(round(c + spread * (i - 0.5)), min_bits, 8))
                for n, i in zip(names, iota, strict=True)}

    cr_fn = _get_budget_cr(budget_cr)

    def cr(c: float) -> float:
        return cr_fn(_plan_report(base, {}, plan(c), granularity, levels))

    lo, hi = min_bits - spread - 1.0, 8.0 + spread + 1.0
    if cr(lo) < budget:
        raise ValueError(f"budget {budget:g} is out of reach of quantization at >= {min_bits} "
                         f"bits (at most {cr(lo):.2f}); lower the budget or min_bits")
    return plan(_bisect(cr, budget, lo, hi, increasing=False))


def adaptive_quantize(model: nn.Module, importance: Mapping[str, float], budget: float,
                      min_bits: int = 2, spread: float = 4.0, keep_edges: bool = True,
                      budget_cr: str = "paper", granularity: str = DEFAULT_GRANULARITY,
                      levels: str = DEFAULT_LEVELS) -> tuple[nn.Module, CompressionReport]:
    """Layer-wise adaptive quantization (LAQ): per-layer bit-widths under a size budget.

    ``bits_l = clip(round(c + spread * (iota_l - 1/2)), min_bits, 8)`` with ``iota_l`` the
    rank-normalised importance; ``c`` is the largest value (most bits) whose
    :func:`compression_ratio` still reaches ``budget``. The first (stem) and last
    (classifier) layers stay at 8 bits (``keep_edges``), a common policy the paper does not
    spell out. Existing zeros (a pruned model) stay zero.

    Args:
        model: the model (not modified).
        importance: :func:`layer_importance` scores of this model.
        budget: target compression ratio (> 1) of the whole model.
        min_bits: lowest bit-width a layer may get (1-8).
        spread: bits between the least and the most important layer.
        keep_edges: keep stem and classifier at 8 bits.
        budget_cr: ``"paper"`` (32 / mean bits) or ``"ours"`` (the artefact's size).
        granularity: quantizer scales, ``"tensor"`` or ``"channel"``.
        levels: quantizer grid, ``"2^b"`` or ``"2^b-1"``.

    """
    _check_model(model)
    _check_budget(budget)
    _check_bits(min_bits, "min_bits")
    _check_granularity(granularity)
    _check_levels(levels)
    _get_budget_cr(budget_cr)
    model = copy.deepcopy(model)
    bits = _laq_bits(model, importance, budget, min_bits, spread, keep_edges, budget_cr,
                     granularity, levels)
    report = _quantize_layers(model, bits, "laq", {"budget": float(budget),
                                                   "min_bits": int(min_bits),
                                                   "budget_cr": budget_cr},
                              granularity, levels)
    return model, report


def prune_then_quantize(model: nn.Module, importance: Mapping[str, float], budget: float,
                        sparsity: float = 0.5, min_bits: int = 2, spread: float = 4.0,
                        keep_edges: bool = True, budget_cr: str = "paper",
                        granularity: str = DEFAULT_GRANULARITY,
                        levels: str = DEFAULT_LEVELS) -> tuple[nn.Module, CompressionReport]:
    """Adaptive prune-then-quantize (P->Q): LAP to a global sparsity, then LAQ to the budget.

    The paper gives no split between pruning and quantization; we first prune adaptively
    (same importance, same ``1 - iota / 2`` rule as :func:`adaptive_prune`) until
    ``sparsity`` of the prunable weights are removed, then choose per-layer bits with
    :func:`adaptive_quantize`'s rule so the whole model reaches ``budget`` (target CR).
    """
    _check_model(model)
    _check_budget(budget)
    _check_sparsity(sparsity)
    _check_bits(min_bits, "min_bits")
    _check_granularity(granularity)
    _check_levels(levels)
    _get_budget_cr(budget_cr)
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())

    def global_sparsity(sp: dict[str, float]) -> float:
        return sum(sp[n] * m.weight.numel() for n, m in layers.items()) / total

    sp = (_lap_sparsities(model, importance, global_sparsity, sparsity, keep_edges)
          if sparsity > 0 else {})
    _prune_to(model, sp)
    bits = _laq_bits(model, importance, budget, min_bits, spread, keep_edges, budget_cr,
                     granularity, levels)
    report = _quantize_layers(model, bits, "pq", {"budget": float(budget),
                                                  "sparsity": float(sparsity),
                                                  "min_bits": int(min_bits),
                                                  "budget_cr": budget_cr},
                              granularity, levels)
    return model, report
