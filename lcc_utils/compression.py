"""Paper A's model compression: pruning, quantization, LAP / LAQ, P->Q and a real artefact.

Paper A compresses its trained backbones with

* **fixed magnitude pruning** at "levels" k: a weight is removed when ``|w| < k * sigma``
  (:func:`prune_by_level`); and by target sparsity (:func:`prune_by_sparsity`);
* **fixed-bit post-training quantization** (PTQ) at 1-8 bits (:func:`quantize`);
* **layer-wise adaptive pruning (LAP) and quantization (LAQ)** driven by a layer importance
  (:func:`layer_importance`, :func:`adaptive_prune`, :func:`adaptive_quantize`);
* **adaptive prune-then-quantize (P->Q)** (:func:`prune_then_quantize`).

Every function works on a deep copy and returns ``(model, report)``: the model is the
*simulated* compressed model (pruned weights are exact zeros, quantized weights hold their
de-quantized fp32 values) and the :class:`CompressionReport` lists per-layer sparsity,
bit-width and quantization scales. :func:`compression_ratio` computes the paper's ratio
(original size / compressed size, counting sparsity, bit-width and the index and scale
overhead), and :func:`save_compressed` writes a real file whose size proves it (peer tools
such as ``torch.nn.utils.prune`` or fake quantization keep fp32 tensors, so their files never
shrink). :func:`load_compressed` rebuilds a model whose weights are bit-identical to the
simulated model's.

Choices the paper leaves open (listed in the README):

* Prunable / quantizable tensors are the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear``
  (timm Swin attention ``qkv``/``proj`` and MLP layers included). Biases, normalisation
  parameters, Swin relative-position tables and buffers stay fp32 and are counted at their
  stored width.
* Quantization is symmetric, uniform and per output channel (dim 0). For ``b >= 2`` bits the
  integer codes are ``-(2^(b-1)-1) .. 2^(b-1)-1`` (2^b - 1 levels, zero exactly
  representable, so pruned weights stay zero) with scale ``max|w_c| / (2^(b-1)-1)``. One bit
  means sign times a per-channel scale equal to the mean ``|w|`` of the channel's kept weights
  (binary-weight-network style); zeros are then kept only through the sparsity mask.
* Scales are stored as fp32 (32 bits per output channel; counted in the ratio).
* Sparse layers store a packed bit mask or packed indices (``ceil(log2(numel))`` bits each),
  whichever is smaller per layer; a dense layer stores no mask.
* The ratio's "original size" is the fp32 state dict (every tensor at its stored width);
  the measured on-disk ratio divides the ``torch.save(state_dict)`` file size by the artefact
  size.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from lcc_utils.constants import PAPER_A_PRUNING_LEVEL_CR

__all__ = [
    "ARTEFACT_SUFFIX",
    "IMPORTANCE_METRICS",
    "METHODS",
    "CompressionReport",
    "CompressionSetup",
    "LayerReport",
    "adaptive_prune",
    "adaptive_quantize",
    "analyze",
    "apply_variant",
    "arch_hash",
    "best_at_ratio",
    "compression_explorer",
    "collect_results",
    "compression_ratio",
    "evaluate_variants",
    "gaussian_level_sparsity",
    "get_importance_metric",
    "get_method",
    "importance_table",
    "layer_importance",
    "load_compressed",
    "make_variants",
    "paper_reference",
    "plot_accuracy_vs_cr",
    "predict_labels",
    "prepare_compression",
    "prunable_layers",
    "prune_by_level",
    "prune_by_sparsity",
    "prune_then_quantize",
    "pruning_level_table",
    "quantize",
    "results_summary",
    "save_compressed",
    "size_breakdown",
    "state_dict_file_size",
    "table2",
    "table3",
    "variant_name",
]

#: File extension of compressed artefacts (git-ignored under runs/).
ARTEFACT_SUFFIX = ".lcc"
_MAGIC = b"LCCZ"
_VERSION = 1
_CHECKSUM_BYTES = 32  # sha256 of everything before it
_FP32_BITS = 32
_SCALE_BITS = 32  # per-channel scales are stored as fp32
_MAX_SPARSITY_ADAPTIVE = 0.99  # LAP never removes a whole layer


# ============================================================================ reports
@dataclasses.dataclass
class LayerReport:
    """Compression state of one prunable weight tensor.

    Attributes:
        name: state-dict name of the weight (``"stages.0.blocks.0.conv_dw.weight"``).
        shape: tensor shape; dim 0 is the output channel used for per-channel scales.
        nnz: non-zero weights after compression (pruned and quantized-to-zero removed).
        bits: bit-width of the stored values; 32 means not quantized (fp32 values).
        scales: per-output-channel quantization scales (fp32), ``None`` when ``bits == 32``.

    """

    name: str
    shape: tuple[int, ...]
    nnz: int
    bits: int = _FP32_BITS
    scales: np.ndarray | None = None

    @property
    def numel(self) -> int:
        """Number of weights in the tensor."""
        return int(np.prod(self.shape))

    @property
    def sparsity(self) -> float:
        """Fraction of weights that are zero."""
        return 1.0 - self.nnz / self.numel if self.numel else 0.0


@dataclasses.dataclass
class CompressionReport:
    """Per-layer record of a compression: what :func:`save_compressed` stores.

    Attributes:
        method: the paper's method name (``fixed_prune``, ``fixed_quant``, ``lap``, ``laq``,
            ``pq`` or ``none``).
        settings: the method's settings (level, bits, importance, budget, ...).
        layers: one :class:`LayerReport` per prunable weight, in module order.
        state: every state-dict entry as ``(name, shape, dtype)``: the size of the model.

    """

    method: str
    settings: dict[str, Any]
    layers: dict[str, LayerReport]
    state: list[tuple[str, tuple[int, ...], str]]

    def to_frame(self) -> pd.DataFrame:
        """Per-layer table: name, shape, numel, nnz, sparsity, bits, storage bits."""
        rows = []
        for lr in self.layers.values():
            kind, nbits = _layer_storage(lr.numel, lr.nnz, lr.bits, lr.shape[0])
            rows.append({
                "layer": lr.name, "shape": "x".join(map(str, lr.shape)), "numel": lr.numel,
                "nnz": lr.nnz, "sparsity": lr.sparsity, "bits": lr.bits, "storage": kind,
                "stored_bits": nbits,
            })
        return pd.DataFrame(rows)

    @property
    def sparsity(self) -> float:
        """Global sparsity over all prunable weights."""
        numel = sum(lr.numel for lr in self.layers.values())
        return 1.0 - sum(lr.nnz for lr in self.layers.values()) / max(numel, 1)

    @property
    def mean_bits(self) -> float:
        """Mean bit-width over the stored (non-zero) prunable weights."""
        nnz = sum(lr.nnz for lr in self.layers.values())
        return sum(lr.nnz * lr.bits for lr in self.layers.values()) / max(nnz, 1)


# ============================================================================ layers
def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` and ``nn.Linear`` of the model, by module name, in module order.

    These are the layers the paper prunes and quantizes; their ``weight`` is the tensor
    compressed. Biases and norms are left alone (a documented choice: they are < 1 % of the
    parameters and sensitive).
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no Conv2d or Linear layer to compress")
    return layers


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _state_entries(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
            for k, v in model.state_dict().items()]


def arch_hash(model: nn.Module) -> str:
    """Short hash of the model class and its state-dict names, shapes and dtypes.

    An artefact records it so that it is never loaded into another architecture.
    """
    desc = json.dumps([type(model).__name__, _state_entries(model)])
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def analyze(model: nn.Module, method: str = "none",
            settings: dict[str, Any] | None = None) -> CompressionReport:
    """Report of an uncompressed (or only pruned, fp32) model: its zeros, all at 32 bits."""
    layers = {}
    for name, mod in prunable_layers(model).items():
        w = mod.weight.detach()
        layers[_weight_name(name)] = LayerReport(
            name=_weight_name(name), shape=tuple(w.shape), nnz=int(torch.count_nonzero(w)))
    return CompressionReport(method, dict(settings or {}), layers, _state_entries(model))


def _check_model(model: Any, param: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{param} must be a torch.nn.Module, got {type(model).__name__}")


# ============================================================================ pruning
def gaussian_level_sparsity(level: float) -> float:
    """Sparsity that pruning at ``|w| < level * sigma`` gives on Gaussian weights.

    ``P(|w| < k sigma) = erf(k / sqrt(2))``: 0.197, 0.383, 0.683, 0.866 for the paper's
    levels 0.25, 0.5, 1.0, 1.5 (CR 1.25, 1.62, 3.15, 7.5 counting sparsity only; the paper
    reports 1.3, 1.7, 3.4, 7.9, i.e. trained weights are more peaked than a Gaussian).
    """
    return math.erf(level / math.sqrt(2.0))


def _check_level(level: float) -> None:
    if not isinstance(level, (int, float)) or not math.isfinite(level) or level < 0:
        raise ValueError(f"level must be a finite number >= 0 (threshold = level x sigma), "
                         f"got {level!r}")


def _check_sparsity(sparsity: float, param: str = "sparsity") -> None:
    if not isinstance(sparsity, (int, float)) or not (0.0 <= sparsity < 1.0):
        raise ValueError(f"{param} must be in [0, 1), got {sparsity!r}")


def _check_bits(bits: int, param: str = "bits") -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"{param} must be an integer from 1 to 8, got {bits!r}")


def prune_by_level(model: nn.Module, level: float,
                   scope: str = "global") -> tuple[nn.Module, CompressionReport]:
    """Paper A's fixed magnitude pruning: remove weights with ``|w| < level * sigma``.

    Args:
        model: the trained model (not modified; a copy is pruned).
        level: the paper's pruning level k (0.25, 0.5, 1.0, 1.5 in the paper).
        scope: ``"global"``: sigma is the standard deviation of all prunable weights pooled
            (one threshold for the network); ``"layer"``: each layer uses its own sigma. The
            paper does not say which; :func:`pruning_level_table` compares both.

    Returns:
        The pruned copy and its report (bits 32: values stay fp32).

    """
    _check_model(model)
    _check_level(level)
    if scope not in ("global", "layer"):
        raise ValueError(f"unknown scope {scope!r}; choose one of: global, layer")
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    if scope == "global":  # population std of all prunable weights pooled, in float64
        n = sum(m.weight.numel() for m in layers.values())
        s1 = sum(float(m.weight.detach().double().sum()) for m in layers.values())
        s2 = sum(float(m.weight.detach().double().square().sum()) for m in layers.values())
        sigma_global = math.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0))
    with torch.no_grad():
        for mod in layers.values():
            w = mod.weight
            sigma = sigma_global if scope == "global" else float(w.double().std(unbiased=False))
            _apply_mask(w, w.abs() >= level * sigma)
    return model, analyze(model, "fixed_prune", {"level": float(level), "scope": scope})


def _apply_mask(w: torch.Tensor, keep: torch.Tensor) -> None:
    """Zero the weights outside ``keep`` in place (+0.0, never -0.0 as w * 0 would give)."""
    with torch.no_grad():
        w.copy_(torch.where(keep, w, torch.zeros_like(w)))


def _smallest_k_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask that removes exactly the k smallest |w| (ties broken by position)."""
    flat = w.detach().abs().flatten()
    if k <= 0:
        return torch.ones_like(flat, dtype=torch.bool).view_as(w)
    if k >= flat.numel():
        return torch.zeros_like(flat, dtype=torch.bool).view_as(w)
    # k-th smallest by selection (O(n)), not a full sort: this runs on 28 M weights per variant
    t = torch.kthvalue(flat, k).values
    keep = flat > t
    ties = torch.nonzero(flat == t).flatten()
    below = int((flat < t).sum())
    keep[ties[k - below:]] = True  # of the values equal to t, remove the first k - below
    return keep.view_as(w)


def prune_by_sparsity(model: nn.Module, sparsity: float,
                      per_layer: bool = True) -> tuple[nn.Module, CompressionReport]:
    """Magnitude pruning to a target sparsity (fraction of prunable weights removed).

    Args:
        model: the model (not modified).
        sparsity: fraction in [0, 1) of weights set to zero.
        per_layer: True: every layer loses exactly ``round(sparsity * numel)`` of its
            smallest weights; False: one global magnitude ranking over all layers.

    """
    _check_model(model)
    _check_sparsity(sparsity)
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    with torch.no_grad():
        if per_layer:
            for mod in layers.values():
                k = int(round(sparsity * mod.weight.numel()))
                _apply_mask(mod.weight, _smallest_k_mask(mod.weight, k))
        else:
            pooled = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
            keep = _smallest_k_mask(pooled, int(round(sparsity * pooled.numel())))
            start = 0
            for mod in layers.values():
                n = mod.weight.numel()
                _apply_mask(mod.weight, keep[start:start + n].view_as(mod.weight))
                start += n
    return model, analyze(model, "prune_sparsity",
                          {"sparsity": float(sparsity), "per_layer": per_layer})


# ============================================================================ quantization
def _qmax(bits: int) -> int:
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def _scales(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel fp32 scale (see the module docstring)."""
    a = w.detach().abs().flatten(1).float()
    if bits == 1:
        nz = (a > 0).sum(1)
        return torch.where(nz > 0, a.sum(1) / nz.clamp(min=1), torch.zeros_like(a[:, 0]))
    return a.amax(1) / _qmax(bits)


def _codes(w: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes of a weight tensor (int16; zeros stay zero)."""
    s = _channel_view(scales, w.ndim)
    if bits == 1:
        q = torch.where(w > 0, 1, -1)
    else:
        safe = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round(w.float() / safe).clamp(-_qmax(bits), _qmax(bits)).to(torch.int32)
    q = torch.where((w != 0) & (s > 0), q, torch.zeros_like(q))
    return q.to(torch.int16)


def _dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 weights from codes and scales: the one formula simulation and loading share."""
    return codes.to(torch.float32) * _channel_view(scales.to(torch.float32), codes.ndim)


def _quantize_layer(mod: nn.Module, bits: int) -> np.ndarray:
    w = mod.weight.detach()
    scales = _scales(w, bits)
    deq = _dequantize(_codes(w, scales, bits), scales)
    with torch.no_grad():
        mod.weight.copy_(deq.to(mod.weight.dtype))
    return scales.numpy().astype(np.float32)


def _quantize_layers(model: nn.Module, bits_per_layer: Mapping[str, int], method: str,
                     settings: dict[str, Any]) -> CompressionReport:
    layers = prunable_layers(model)
    scales = {}
    for name, mod in layers.items():
        b = bits_per_layer[name]
        if b < _FP32_BITS:
            scales[name] = _quantize_layer(mod, b)
    report = analyze(model, method, settings)
    for name in layers:
        lr = report.layers[_weight_name(name)]
        lr.bits = int(bits_per_layer[name])
        lr.scales = scales.get(name)
    return report


def quantize(model: nn.Module, bits: int) -> tuple[nn.Module, CompressionReport]:
    """Fixed-bit post-training weight quantization of every prunable layer.

    Symmetric uniform per-output-channel quantization at ``bits`` (1-8) for every Conv2d and
    Linear weight, first and last layers included (that is what "fixed" means here); 1 bit
    is sign x mean|w| per channel. Existing zeros (a pruned model) stay zero.
    """
    _check_model(model)
    _check_bits(bits)
    model = copy.deepcopy(model)
    names = prunable_layers(model)
    report = _quantize_layers(model, dict.fromkeys(names, int(bits)), "fixed_quant",
                              {"bits": int(bits)})
    return model, report


# ============================================================================ importance
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


# ============================================================================ size model
def _index_bits(numel: int) -> int:
    return max(1, math.ceil(math.log2(max(numel, 2))))


def _layer_storage(numel: int, nnz: int, bits: int, out_channels: int) -> tuple[str, int]:
    """Cheapest storage of one weight tensor: (kind, bits) with kind dense/bitmask/indices."""
    scale_bits = out_channels * _SCALE_BITS if bits < _FP32_BITS else 0
    options = {
        "bitmask": numel + nnz * bits,
        "indices": nnz * (_index_bits(numel) + bits),
    }
    if nnz == numel or bits >= 2:  # dense needs a code for zero; 1-bit codes have none
        options["dense"] = numel * bits
    kind = min(options, key=lambda k: (options[k], k != "dense"))
    return kind, options[kind] + scale_bits


def _dtype_bits(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size() * 8


def size_breakdown(report: CompressionReport) -> dict[str, int]:
    """Bits of the original and compressed model, split by what they store.

    Returns:
        ``original`` (every state-dict tensor at its stored width), ``weights`` (values /
        codes of the prunable weights), ``index`` (sparsity masks or indices), ``scales``,
        ``other`` (biases, norms, buffers at their stored width) and ``compressed`` (sum).

    """
    out = {"original": 0, "weights": 0, "index": 0, "scales": 0, "other": 0}
    for name, shape, dtype in report.state:
        nbits = int(np.prod(shape)) * _dtype_bits(dtype)
        out["original"] += nbits
        lr = report.layers.get(name)
        if lr is None:
            out["other"] += nbits
            continue
        kind, total = _layer_storage(lr.numel, lr.nnz, lr.bits, lr.shape[0])
        scale_bits = lr.shape[0] * _SCALE_BITS if lr.bits < _FP32_BITS else 0
        values = lr.numel * lr.bits if kind == "dense" else lr.nnz * lr.bits
        out["weights"] += values
        out["scales"] += scale_bits
        out["index"] += total - values - scale_bits
    out["compressed"] = out["weights"] + out["index"] + out["scales"] + out["other"]
    return out


def compression_ratio(model_or_report: nn.Module | CompressionReport,
                      overhead: bool = True) -> float:
    """Paper A's compression ratio: original size / compressed size.

    Compressed size = non-zeros x bits + sparsity mask or index cost + per-channel scales +
    every other tensor at its stored width (32 bits for fp32).

    Args:
        model_or_report: a :class:`CompressionReport`, or a model (its zeros are counted as
            pruned, its weights as fp32).
        overhead: False drops the mask/index and scale costs (the "sparsity and bit-width
            only" ratio, which is what the paper's level CRs appear to count).

    """
    report = (model_or_report if isinstance(model_or_report, CompressionReport)
              else analyze(model_or_report))
    sizes = size_breakdown(report)
    compressed = sizes["compressed"] - (0 if overhead else sizes["index"] + sizes["scales"])
    return sizes["original"] / max(compressed, 1)


# ============================================================================ adaptive
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
                 bits: Mapping[str, int]) -> CompressionReport:
    """Report predicted from an :func:`analyze` report for per-layer sparsities and bits.

    A layer's sparsity is the fraction of the tensor removed on top of its existing zeros.
    """
    layers = {}
    for key, lr in base.layers.items():
        name = key[: -len(".weight")] if key.endswith(".weight") else ""
        nnz = max(lr.nnz - int(round(sparsity.get(name, 0.0) * lr.numel)), 0)
        layers[key] = LayerReport(lr.name, lr.shape, nnz, int(bits.get(name, _FP32_BITS)))
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
                   keep_edges: bool = True) -> tuple[nn.Module, CompressionReport]:
    """Layer-wise adaptive pruning (LAP) to a target compression ratio.

    Per-layer sparsity ``s_l = min(0.99, c * (1 - iota_l / 2))`` where ``iota_l`` in [0, 1] is
    the layer's rank-normalised importance: the most important layer is pruned at half the
    rate of the least important one. ``c`` is solved by bisection so that the model's
    :func:`compression_ratio` (values stay fp32, index cost counted) reaches ``budget``.

    Args:
        model: the model (not modified).
        importance: :func:`layer_importance` scores of this model.
        budget: target compression ratio (> 1) of the whole model.
        keep_edges: keep the first (stem) and last (classifier) layers dense.

    """
    _check_model(model)
    _check_budget(budget)
    model = copy.deepcopy(model)
    base = analyze(model)
    sp = _lap_sparsities(model, importance,
                         lambda s: compression_ratio(_plan_report(base, s, {})), budget,
                         keep_edges)
    _prune_to(model, sp)
    report = analyze(model, "lap", {"budget": float(budget)})
    return model, report


def _laq_bits(model: nn.Module, importance: Mapping[str, float], budget: float,
              min_bits: int, spread: float, keep_edges: bool) -> dict[str, int]:
    names = list(prunable_layers(model))
    base = analyze(model)
    iota = _normalise_importance(importance, names)
    edges = _edges(names) if keep_edges else set()

    def plan(c: float) -> dict[str, int]:
        # bits_l = round(c + spread * (iota_l - 1/2)) clipped to [min_bits, 8]: the most
        # important layer gets `spread` more bits than the least important one.
        return {n: 8 if n in edges else int(np.clip(round(c + spread * (i - 0.5)), min_bits, 8))
                for n, i in zip(names, iota, strict=True)}

    def cr(c: float) -> float:
        return compression_ratio(_plan_report(base, {}, plan(c)))

    lo, hi = min_bits - spread - 1.0, 8.0 + spread + 1.0
    if cr(lo) < budget:
        raise ValueError(f"budget {budget:g} is out of reach of quantization at >= {min_bits} "
                         f"bits (at most {cr(lo):.2f}); lower the budget or min_bits")
    return plan(_bisect(cr, budget, lo, hi, increasing=False))


def adaptive_quantize(model: nn.Module, importance: Mapping[str, float], budget: float,
                      min_bits: int = 2, spread: float = 4.0,
                      keep_edges: bool = True) -> tuple[nn.Module, CompressionReport]:
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

    """
    _check_model(model)
    _check_budget(budget)
    _check_bits(min_bits, "min_bits")
    model = copy.deepcopy(model)
    bits = _laq_bits(model, importance, budget, min_bits, spread, keep_edges)
    report = _quantize_layers(model, bits, "laq", {"budget": float(budget),
                                                   "min_bits": int(min_bits)})
    return model, report


def prune_then_quantize(model: nn.Module, importance: Mapping[str, float], budget: float,
                        sparsity: float = 0.5, min_bits: int = 2, spread: float = 4.0,
                        keep_edges: bool = True) -> tuple[nn.Module, CompressionReport]:
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
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())

    def global_sparsity(sp: dict[str, float]) -> float:
        return sum(sp[n] * m.weight.numel() for n, m in layers.items()) / total

    sp = (_lap_sparsities(model, importance, global_sparsity, sparsity, keep_edges)
          if sparsity > 0 else {})
    _prune_to(model, sp)
    bits = _laq_bits(model, importance, budget, min_bits, spread, keep_edges)
    report = _quantize_layers(model, bits, "pq", {"budget": float(budget),
                                                  "sparsity": float(sparsity),
                                                  "min_bits": int(min_bits)})
    return model, report


# ============================================================================ artefact
def _pack_uint(values: np.ndarray, nbits: int) -> bytes:
    """Pack unsigned integers (< 2**nbits) into a little-endian bit stream of nbits each."""
    v = np.asarray(values).reshape(-1)
    if nbits <= 8:
        # 8 codes of nbits fill exactly nbits bytes: build them in one uint64 per group
        n = len(v)
        groups = np.zeros((-(-n // 8)) * 8, np.uint64)
        groups[:n] = v
        groups = groups.reshape(-1, 8)
        word = np.zeros(len(groups), np.uint64)
        for i in range(8):
            word |= groups[:, i] << np.uint64(nbits * i)
        packed = word.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nbits].reshape(-1)
        return packed[: -(-n * nbits // 8)].tobytes()
    v32 = np.ascontiguousarray(v, dtype="<u4")
    bits = np.unpackbits(v32.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
    return np.packbits(bits[:, :nbits].reshape(-1), bitorder="little").tobytes()


def _unpack_uint(buf: bytes, count: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`_pack_uint`: ``count`` unsigned integers of ``nbits`` each."""
    raw = np.frombuffer(buf, np.uint8)
    if nbits <= 8:
        groups = -(-count // 8)
        padded = np.zeros(groups * nbits, np.uint8)
        padded[: len(raw)] = raw[: groups * nbits]
        full = np.zeros((groups, 8), np.uint8)
        full[:, :nbits] = padded.reshape(groups, nbits)
        word = full.view("<u8").reshape(-1)
        mask = np.uint64((1 << nbits) - 1)
        out = np.stack([(word >> np.uint64(nbits * i)) & mask for i in range(8)], axis=1)
        return out.reshape(-1)[:count].astype(np.uint32)
    bits = np.unpackbits(raw, bitorder="little")[: count * nbits]
    full = np.zeros((count, 32), np.uint8)
    full[:, :nbits] = bits.reshape(count, nbits)
    return np.packbits(full, axis=1, bitorder="little").view("<u4").reshape(-1)


def _encode_layer(w: torch.Tensor, lr: LayerReport) -> tuple[dict[str, Any], list[bytes]]:
    flat_w = w.detach().flatten()
    nz = flat_w != 0
    nnz = int(nz.sum())
    if nnz != lr.nnz:
        raise ValueError(f"layer {lr.name}: model has {nnz} non-zeros but the report says "
                         f"{lr.nnz}; pass the model returned together with this report")
    kind, _ = _layer_storage(lr.numel, nnz, lr.bits, lr.shape[0])
    meta: dict[str, Any] = {"bits": lr.bits, "storage": kind, "nnz": nnz}
    blobs: list[bytes] = []
    sel = slice(None) if kind == "dense" else nz
    if lr.bits < _FP32_BITS:
        scales = torch.from_numpy(np.asarray(lr.scales, np.float32))
        codes = _codes(w.detach(), scales, lr.bits)
        if not torch.equal(_dequantize(codes, scales), w.detach().float()):
            raise ValueError(f"layer {lr.name}: weights are not the quantized values the "
                             f"report describes; was the model changed after compression?")
        # 1-bit: bit = sign; b bits: code + offset is in 0 .. 2^b - 2
        c = codes.flatten()[sel].numpy().astype(np.int64)
        u = (c > 0).astype(np.uint32) if lr.bits == 1 else (c + _qmax(lr.bits)).astype(np.uint32)
        blobs.append(scales.numpy().astype("<f4").tobytes())
        blobs.append(_pack_uint(u, lr.bits))
    else:
        blobs.append(flat_w[sel].numpy().astype("<f4").tobytes())
    if kind == "bitmask":
        blobs.append(np.packbits(nz.numpy(), bitorder="little").tobytes())
    elif kind == "indices":
        idx = torch.nonzero(nz).flatten().numpy().astype(np.uint32)
        blobs.append(_pack_uint(idx, _index_bits(lr.numel)))
    return meta, blobs


def _decode_layer(meta: dict[str, Any], blobs: list[bytes], shape: tuple[int, ...]
                  ) -> torch.Tensor:
    numel = int(np.prod(shape))
    bits, kind, nnz = meta["bits"], meta["storage"], meta["nnz"]
    count = numel if kind == "dense" else nnz
    if kind == "dense":
        pos = np.arange(numel)
    elif kind == "bitmask":
        mask = np.unpackbits(np.frombuffer(blobs[-1], np.uint8), bitorder="little")[:numel]
        pos = np.flatnonzero(mask)
    else:
        pos = _unpack_uint(blobs[-1], nnz, _index_bits(numel)).astype(np.int64)
    if len(pos) != count:
        raise ValueError(f"corrupted artefact: mask of {meta['name']} has {len(pos)} entries, "
                         f"expected {count}")
    if bits < _FP32_BITS:
        scales = torch.from_numpy(np.frombuffer(blobs[0], "<f4").copy())
        u = _unpack_uint(blobs[1], count, bits).astype(np.int64)
        c = np.where(u > 0, 1, -1) if bits == 1 else u - _qmax(bits)
        codes = np.zeros(numel, np.int16)
        codes[pos] = c
        return _dequantize(torch.from_numpy(codes).view(shape), scales)
    vals = np.zeros(numel, np.float32)
    vals[pos] = np.frombuffer(blobs[0], "<f4")
    return torch.from_numpy(vals).view(shape)


def save_compressed(model: nn.Module, report: CompressionReport, path: str | os.PathLike,
                    model_name: str = "") -> Path:
    """Write the compressed model as a real ``.lcc`` file; returns its path.

    Layout: ``b"LCCZ"``, version (uint16), header length (uint32), zlib-compressed JSON
    header (model name, arch hash, every state-dict entry's name / shape / dtype / storage /
    byte ranges), the payload (per-channel fp32 scales, packed low-bit codes, packed bit mask
    or packed indices of each compressed weight; raw little-endian bytes of every other
    tensor), then the sha256 of everything before it. Written to a temporary name, then
    renamed.

    Args:
        model: the simulated compressed model returned with ``report``.
        report: its :class:`CompressionReport`.
        path: destination (``.lcc`` by convention).
        model_name: free-text name recorded in the header (e.g. the timm name).

    """
    _check_model(model)
    if not isinstance(report, CompressionReport):
        raise TypeError(f"report must be a CompressionReport, got {type(report).__name__}")
    path = Path(path)
    state = model.state_dict()
    if [(k, tuple(v.shape)) for k, v in state.items()] != [(n, s) for n, s, _ in report.state]:
        raise ValueError("report does not describe this model (state-dict names or shapes "
                         "differ); pass the model returned together with the report")
    entries, payload, offset = [], [], 0
    for name, tensor in state.items():
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape),
                                 "dtype": str(tensor.dtype).replace("torch.", "")}
        lr = report.layers.get(name)
        if lr is not None and (lr.bits < _FP32_BITS or lr.nnz < lr.numel):
            meta, blobs = _encode_layer(tensor, lr)
            entry.update(meta)
        else:
            blobs = [tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()]
            entry["storage"] = "raw"
        entry["blobs"] = [len(b) for b in blobs]
        entry["offset"] = offset
        offset += sum(entry["blobs"])
        payload.extend(blobs)
        entries.append(entry)
    header = {"format": "lcc-compressed", "version": _VERSION, "model_name": model_name,
              "model_class": type(model).__name__, "arch_hash": arch_hash(model),
              "method": report.method, "settings": report.settings, "payload_bytes": offset,
              "byteorder": "little", "entries": entries}
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    body = b"".join([_MAGIC, struct.pack("<HI", _VERSION, len(head)), head, *payload])
    digest = hashlib.sha256(body).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.write(digest)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _read_artefact(path: Path) -> tuple[dict[str, Any], memoryview]:
    if not path.is_file():
        raise FileNotFoundError(f"compressed artefact {path} does not exist")
    data = path.read_bytes()
    fixed = len(_MAGIC) + 6
    if len(data) < fixed + _CHECKSUM_BYTES or data[:4] != _MAGIC:
        raise ValueError(f"{path} is not an lcc compressed artefact (bad magic or too short)")
    version, head_len = struct.unpack("<HI", data[4:fixed])
    if version != _VERSION:
        raise ValueError(f"{path}: artefact format version {version} is not supported "
                         f"(this code reads version {_VERSION})")
    try:
        header = json.loads(zlib.decompress(data[fixed:fixed + head_len]))
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"{path}: truncated or corrupted artefact (unreadable header)") from exc
    expected = fixed + head_len + header["payload_bytes"] + _CHECKSUM_BYTES
    if len(data) != expected:
        raise ValueError(f"{path}: truncated or corrupted artefact: {len(data)} bytes, "
                         f"header promises {expected}")
    if hashlib.sha256(data[:-_CHECKSUM_BYTES]).digest() != data[-_CHECKSUM_BYTES:]:
        raise ValueError(f"{path}: checksum mismatch, the artefact is corrupted")
    return header, memoryview(data)[fixed + head_len:-_CHECKSUM_BYTES]


def load_compressed(path: str | os.PathLike,
                    model_factory_or_model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model from an artefact written by :func:`save_compressed`.

    Args:
        path: the ``.lcc`` file.
        model_factory_or_model: a model of the same architecture (copied, not modified) or a
            zero-argument function that builds one.

    Returns:
        The model, in eval mode, whose weights equal the simulated compressed model's bit for
        bit (same codes, same fp32 scales, same de-quantization formula).

    """
    path = Path(path)
    if isinstance(model_factory_or_model, nn.Module):
        model = copy.deepcopy(model_factory_or_model)
    elif callable(model_factory_or_model):
        model = model_factory_or_model()
        _check_model(model, "model_factory_or_model()")
    else:
        raise TypeError("model_factory_or_model must be a torch model or a function returning "
                        f"one, got {type(model_factory_or_model).__name__}")
    header, payload = _read_artefact(path)
    if header["arch_hash"] != arch_hash(model):
        mine = {n: s for n, s, _ in _state_entries(model)}
        diff = [e["name"] for e in header["entries"] if tuple(e["shape"]) != mine.get(e["name"])]
        raise ValueError(
            f"{path} was written for another model ({header['model_class']} "
            f"{header['model_name']!r}, arch hash {header['arch_hash']}) than "
            f"{type(model).__name__} (arch hash {arch_hash(model)}); "
            f"first differing tensors: {diff[:3] or 'class or dtypes'}")
    new_state = {}
    for e in header["entries"]:
        start = e["offset"]
        blobs = []
        for n in e["blobs"]:
            blobs.append(bytes(payload[start:start + n]))
            start += n
        shape = tuple(e["shape"])
        if e["storage"] == "raw":
            dt = getattr(torch, e["dtype"])
            buf = bytearray(blobs[0])
            new_state[e["name"]] = (torch.frombuffer(buf, dtype=dt).reshape(shape).clone()
                                    if buf else torch.zeros(shape, dtype=dt))
        else:
            new_state[e["name"]] = _decode_layer(e, blobs, shape)
    model.load_state_dict(new_state, strict=True)
    return model.eval()


def state_dict_file_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the fp32 baseline of the on-disk ratio."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


# ============================================================================ level table
def pruning_level_table(model: nn.Module,
                        levels: Iterable[float] = (0.25, 0.5, 1.0, 1.5, 2.0)) -> pd.DataFrame:
    """Which sigma reproduces the paper's level -> CR? Global vs per-layer, vs Gaussian theory.

    One row per level: the Gaussian prediction ``erf(k / sqrt 2)``, then for ``scope`` global
    and layer the measured sparsity, the CR counting sparsity only (``cr_*_sparsity_only``)
    and the full CR with mask/index cost (``cr_*``), beside the paper's CR where it has one.
    """
    rows = []
    for level in levels:
        p = gaussian_level_sparsity(level)
        row: dict[str, Any] = {"level": level, "gaussian_sparsity": p,
                               "gaussian_cr": 1.0 / (1.0 - p),
                               "paper_cr": PAPER_A_PRUNING_LEVEL_CR.get(level, float("nan"))}
        for scope in ("global", "layer"):
            _, rep = prune_by_level(model, level, scope=scope)
            row[f"sparsity_{scope}"] = rep.sparsity
            row[f"cr_{scope}_sparsity_only"] = compression_ratio(rep, overhead=False)
            row[f"cr_{scope}"] = compression_ratio(rep)
        rows.append(row)
    return pd.DataFrame(rows)


# ============================================================================ variants
def _fixed_prune(model: nn.Module, spec: Mapping[str, Any], **_: Any):
    return prune_by_level(model, spec["level"], scope=spec.get("scope", "global"))


def _fixed_quant(model: nn.Module, spec: Mapping[str, Any], **_: Any):
    return quantize(model, spec["bits"])


def _lap(model: nn.Module, spec: Mapping[str, Any], importance: Mapping[str, float], **_: Any):
    return adaptive_prune(model, importance, spec["budget"])


def _laq(model: nn.Module, spec: Mapping[str, Any], importance: Mapping[str, float], **_: Any):
    return adaptive_quantize(model, importance, spec["budget"])


def _pq(model: nn.Module, spec: Mapping[str, Any], importance: Mapping[str, float], **_: Any):
    return prune_then_quantize(model, importance, spec["budget"],
                               sparsity=spec.get("sparsity", 0.5))


#: Paper A's compression methods, by the names the notebook's ``methods`` parameter uses.
METHODS: dict[str, Callable[..., tuple[nn.Module, CompressionReport]]] = {
    "fixed_prune": _fixed_prune,
    "fixed_quant": _fixed_quant,
    "lap": _lap,
    "laq": _laq,
    "pq": _pq,
}
_ADAPTIVE = ("lap", "laq", "pq")


def get_method(name: str) -> Callable[..., tuple[nn.Module, CompressionReport]]:
    """The compression method registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown compression method {name!r}; choose one of: "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_variants(methods: Iterable[str], levels: Iterable[float] = (), bits: Iterable[int] = (),
                  importance: Iterable[str] = ("magnitude",),
                  budget: float | Iterable[float] = 9.0, scope: str = "global",
                  pq_sparsity: float = 0.5) -> list[dict[str, Any]]:
    """Every compression variant of a study: one dict per (method, setting).

    ``fixed_prune`` gets one variant per level, ``fixed_quant`` one per bit-width, and the
    adaptive methods (``lap``, ``laq``, ``pq``) one per (importance metric, budget).
    """
    methods = list(methods)
    for m in methods:
        get_method(m)
    budgets = [budget] if isinstance(budget, (int, float)) else list(budget)
    for b in budgets:
        _check_budget(b)
    for lvl in levels:
        _check_level(lvl)
    for b in bits:
        _check_bits(b)
    for imp in importance:
        get_importance_metric(imp)
    out: list[dict[str, Any]] = []
    for m in methods:
        if m == "fixed_prune":
            out += [{"method": m, "level": float(lv), "scope": scope} for lv in levels]
        elif m == "fixed_quant":
            out += [{"method": m, "bits": int(b)} for b in bits]
        else:
            out += [{"method": m, "importance": imp, "budget": float(b),
                     **({"sparsity": pq_sparsity} if m == "pq" else {})}
                    for imp in importance for b in budgets]
    return out


def variant_name(spec: Mapping[str, Any]) -> str:
    """Readable, file-safe name of a variant (``fixed_prune-level1.0``, ``laq-entropy-cr9``)."""
    m = spec["method"]
    if m == "fixed_prune":
        return f"{m}-level{spec['level']:g}-{spec.get('scope', 'global')}"
    if m == "fixed_quant":
        return f"{m}-{spec['bits']}bit"
    return f"{m}-{spec['importance']}-cr{spec['budget']:g}"


def apply_variant(model: nn.Module, spec: Mapping[str, Any],
                  importance: Mapping[str, Mapping[str, float]] | None = None
                  ) -> tuple[nn.Module, CompressionReport]:
    """Run one :func:`make_variants` spec; ``importance`` maps metric name -> layer scores."""
    fn = get_method(spec["method"])
    imp = None
    if spec["method"] in _ADAPTIVE:
        if not importance or spec["importance"] not in importance:
            raise ValueError(f"variant {variant_name(spec)} needs importance scores for "
                             f"{spec['importance']!r}; pass importance={{metric: scores}}")
        imp = importance[spec["importance"]]
    return fn(model, spec, importance=imp)


@torch.no_grad()
def predict_labels(model: nn.Module, loader: Iterable, max_images: int = 0,
                   desc: str = "predict", progress: bool = True,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Argmax predictions and true labels over a loader of ``(x, y, ...)`` batches.

    ``max_images`` > 0 stops after that many images (the first ones, in loader order).
    The model is moved to ``device`` (compression itself always runs on the CPU).
    """
    model.eval().to(device)
    preds, labels, seen = [], [], 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = batch[0], batch[1]
        if max_images and seen + len(x) > max_images:
            x, y = x[: max_images - seen], y[: max_images - seen]
        preds.append(model(x.to(device)).argmax(1).cpu().numpy())
        labels.append(np.asarray(y))
        seen += len(x)
        if max_images and seen >= max_images:
            break
    if not preds:
        raise ValueError("loader yielded no batch to predict")
    return np.concatenate(preds), np.concatenate(labels)


_CACHE_BYTES = 2 * 1024**3  # test batches up to this size are prepared once, not per variant


def _cached_batches(loader: Iterable, max_images: int = 0) -> Iterable:
    """The loader's batches as a list when they fit in memory, else the loader itself.

    Decoding, resizing and normalising then happen once instead of once per variant.
    """
    batches, nbytes, seen = [], 0, 0
    for batch in loader:
        x, y = batch[0], batch[1]
        batches.append((x, y))
        nbytes += x.element_size() * x.nelement()
        seen += len(x)
        if nbytes > _CACHE_BYTES:
            return loader
        if max_images and seen >= max_images:
            break
    return batches


def evaluate_variants(model: nn.Module, variants: list[dict[str, Any]], test_loader: Iterable,
                      artefact_dir: str | os.PathLike,
                      importance: Mapping[str, Mapping[str, float]] | None = None,
                      max_images: int = 0, model_name: str = "",
                      device: str = "cpu", check_images: int = 0) -> pd.DataFrame:
    """Compress, save, reload and evaluate every variant: the study's results table.

    For the fp32 baseline and each variant: top-1 accuracy (%) of the simulated model,
    computed CR (with and without index/scale overhead), on-disk CR (``torch.save`` fp32
    state-dict size / artefact size), their relative gap, global sparsity, mean bits, save
    and load time, and ``artefact_match``: True when the reloaded artefact has bit-identical
    weights and predicts exactly the same labels as the simulated model on the first
    ``check_images`` evaluated test images (0: all of them; ``n_checked`` records how many).
    Compression runs on the CPU; predictions on ``device``.
    """
    if not isinstance(check_images, int) or check_images < 0:
        raise ValueError(f"check_images must be an integer >= 0, got {check_images!r}")
    artefact_dir = Path(artefact_dir)
    model = model.cpu().eval()
    test_loader = _cached_batches(test_loader, max_images)
    fp32_bytes = state_dict_file_size(model)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    base_pred, y = predict_labels(copy.deepcopy(model), test_loader, max_images, desc="fp32",
                                  device=device)
    rows.append({"variant": "fp32", "method": "none", "accuracy": 100 * float((base_pred == y)
                 .mean()), "cr": 1.0, "cr_sparsity_bits_only": 1.0, "cr_disk": 1.0,
                 "size_bytes": fp32_bytes, "params": n_params,
                 "nonzero_params": n_params, "sparsity": analyze(model).sparsity,
                 "mean_bits": 32.0, "artefact_match": True, "n_checked": 0, "n_test": len(y)})
    for spec in tqdm(variants, desc="variants"):
        name = variant_name(spec)
        cmodel, report = apply_variant(model, spec, importance)
        t0 = time.perf_counter()
        path = save_compressed(cmodel, report, artefact_dir / f"{name}{ARTEFACT_SUFFIX}",
                               model_name=model_name)
        t1 = time.perf_counter()
        reloaded = load_compressed(path, model)
        t2 = time.perf_counter()
        pred, _ = predict_labels(cmodel, test_loader, max_images, progress=False, device=device)
        n_check = min(check_images, len(y)) if check_images else len(y)
        pred_r, _ = predict_labels(reloaded, test_loader, n_check, progress=False,
                                   device=device)
        cmodel, reloaded = cmodel.cpu(), reloaded.cpu()
        same_w = all(torch.equal(a, b) for a, b in
                     zip(cmodel.state_dict().values(), reloaded.state_dict().values(),
                         strict=True))
        size = path.stat().st_size
        cr = compression_ratio(report)
        nnz = sum(int(torch.count_nonzero(p)) for p in cmodel.parameters())
        rows.append({"variant": name, **spec, "accuracy": 100 * float((pred == y).mean()),
                     "cr": cr, "cr_sparsity_bits_only": compression_ratio(report, overhead=False),
                     "cr_disk": fp32_bytes / size, "size_bytes": size, "params": n_params,
                     "nonzero_params": nnz, "sparsity": report.sparsity,
                     "mean_bits": report.mean_bits,
                     "artefact_match": bool(same_w and np.array_equal(pred[:n_check], pred_r)),
                     "n_checked": n_check,
                     "save_s": t1 - t0, "load_s": t2 - t1, "n_test": len(y)})
    df = pd.DataFrame(rows)
    df["cr_gap"] = df["cr_disk"] / df["cr"] - 1.0
    return df


# ============================================================================ tables, plot
def _setting(row: Mapping[str, Any]) -> str:
    m = row["method"]
    if m == "fixed_prune":
        return f"level {row['level']:g}"
    if m == "fixed_quant":
        return f"{int(row['bits'])} bit"
    if m in _ADAPTIVE:
        return f"{row['importance']}, CR>={row['budget']:g}"
    return "fp32"


def paper_reference(results: pd.DataFrame) -> pd.DataFrame:
    """Paper A's published CR / accuracy beside each variant, only where the paper has one.

    Fixed pruning at the paper's levels gets its CR (1.3 / 1.7 / 3.4 / 7.9); every P->Q row
    gets the paper's best P->Q result (CR 9.0 at 98.10 %). Nothing else is published in a
    form we can match, so other cells stay empty (never invented).
    """
    from lcc_utils.constants import PAPER_A_PQ_BEST

    paper_cr, paper_acc = [], []
    for _, row in results.iterrows():
        cr = acc = float("nan")
        if row["method"] == "fixed_prune":
            cr = PAPER_A_PRUNING_LEVEL_CR.get(float(row["level"]), float("nan"))
        elif row["method"] == "pq":
            cr, acc = PAPER_A_PQ_BEST["cr"], PAPER_A_PQ_BEST["accuracy"]
        paper_cr.append(cr)
        paper_acc.append(acc)
    out = results.copy()
    out["paper_cr"], out["paper_accuracy"] = paper_cr, paper_acc
    return out


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Paper A's Table 2 layout: method x training fraction, accuracy and CR.

    One row per method and setting; per training fraction (coreset size) our accuracy (%),
    computed CR and on-disk CR; then the paper's numbers. ``results`` is
    :func:`evaluate_variants`'s table with a ``fraction`` column (one or more training runs).
    """
    df = paper_reference(results)
    df["setting"] = [_setting(r) for _, r in df.iterrows()]
    if "fraction" not in df:
        raise ValueError("results need a 'fraction' column (the training run's coreset size)")
    wide = df.pivot_table(index=["method", "setting"], columns="fraction",
                          values=["accuracy", "cr", "cr_disk"], sort=False)
    wide = wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    paper = df.groupby(["method", "setting"], sort=False)[["paper_cr", "paper_accuracy"]].first()
    paper.columns = pd.MultiIndex.from_tuples([("paper", c) for c in paper.columns])
    return wide.join(paper)


def table3(results: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Paper A's Table 3 layout: model (variant), accuracy (%), #params (non-zero), CR."""
    df = paper_reference(results)
    return pd.DataFrame({
        "model": [f"{model_name} {r['variant']}" if r["variant"] != "fp32" else model_name
                  for _, r in df.iterrows()],
        "accuracy": df["accuracy"], "params": df["params"],
        "nonzero_params": df["nonzero_params"], "cr": df["cr"], "cr_disk": df["cr_disk"],
        "paper_cr": df["paper_cr"], "paper_accuracy": df["paper_accuracy"],
    })


def best_at_ratio(results: pd.DataFrame, min_cr: float = 9.0) -> pd.Series | None:
    """The most accurate variant whose computed CR is at least ``min_cr`` (None if none)."""
    ok = results[results["cr"] >= min_cr]
    return None if ok.empty else ok.sort_values(["accuracy", "cr"], ascending=False).iloc[0]


def plot_accuracy_vs_cr(results: pd.DataFrame, title: str = ""):
    """Accuracy (%) against compression ratio (log axis), one marker per method.

    The fp32 baseline is a dashed line; the paper's P->Q best (CR 9.0, 98.10 %) is a star.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from lcc_utils.constants import PAPER_A_PQ_BEST

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    base = results[results["method"] == "none"]
    if not base.empty:
        ax.axhline(float(base["accuracy"].iloc[0]), color="grey", ls="--", lw=1, label="fp32")
    markers = {"fixed_prune": "o", "fixed_quant": "s", "lap": "^", "laq": "v", "pq": "D"}
    for method, grp in results[results["method"] != "none"].groupby("method", sort=False):
        ax.scatter(grp["cr"], grp["accuracy"], marker=markers.get(method, "x"), label=method)
    ax.scatter([PAPER_A_PQ_BEST["cr"]], [PAPER_A_PQ_BEST["accuracy"]], marker="*", s=160,
               color="black", label="paper A P->Q best")
    ax.set_xscale("log")
    # plain tick labels (1, 2, 4, ...) instead of 2 x 10^0 on the log axis
    hi = max(float(results["cr"].max()), PAPER_A_PQ_BEST["cr"])
    ax.set_xticks([t for t in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if t <= hi * 1.2])
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("compression ratio (paper's definition, computed)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Accuracy vs compression ratio")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compression_explorer(results: pd.DataFrame):
    """An ipywidgets explorer of a results table: sliders for level, bits and budget.

    It only looks rows up in ``results`` (no recomputation). Returns the widget, or None
    when ipywidgets is not installed (the notebook then just shows the table).
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        return None
    cols = ["variant", "accuracy", "cr", "cr_disk", "sparsity", "mean_bits", "artefact_match"]

    def options(col: str) -> list:
        return sorted(results[col].dropna().unique().tolist()) if col in results else []

    sliders = {}
    for col, desc in (("level", "prune level"), ("bits", "bits"), ("budget", "budget CR")):
        opts = options(col)
        if opts:
            sliders[col] = widgets.SelectionSlider(options=opts, description=desc,
                                                   continuous_update=False)
    # An HTML widget updated by slider observers: no Output widget and no clear_output,
    # which made headless execution (papermill / nbclient) hang now and then.
    table = widgets.HTML()

    def show(_change: Any = None) -> None:
        parts = [results[results[col] == s.value] for col, s in sliders.items()]
        table.value = (pd.concat(parts)[cols].round(3).to_html(index=False) if parts
                       else "<p>no level / bits / budget variants in this table</p>")

    for s in sliders.values():
        s.observe(show, names="value")
    show()
    return widgets.VBox([*sliders.values(), table])


def results_summary(results: pd.DataFrame, min_cr: float = 9.0) -> dict[str, Any]:
    """Metrics of a compression run, written to ``metrics.json``.

    fp32 accuracy, best accuracy at CR >= ``min_cr``, the largest computed-vs-disk CR gap
    and whether every artefact reproduced its simulated model.
    """
    base = results[results["method"] == "none"]
    best = best_at_ratio(results, min_cr)
    comp = results[results["method"] != "none"]
    return {
        "fp32_accuracy": float(base["accuracy"].iloc[0]) if not base.empty else float("nan"),
        f"best_accuracy_cr{min_cr:g}": float("nan") if best is None else float(best["accuracy"]),
        f"best_variant_cr{min_cr:g}": "" if best is None else str(best["variant"]),
        f"best_cr_cr{min_cr:g}": float("nan") if best is None else float(best["cr"]),
        "max_cr_gap": float(comp["cr_gap"].abs().max()) if not comp.empty else 0.0,
        "all_artefacts_match": bool(comp["artefact_match"].all()),
        "n_variants": int(len(comp)),
        "n_test": int(results["n_test"].iloc[0]),
    }


# ============================================================================ study setup
@dataclasses.dataclass
class CompressionSetup:
    """What notebook 05 compresses: a trained run's best model and its test data.

    Attributes:
        model: the run's best model (eval mode, CPU).
        train_params: the training run's parameters (``params.json``).
        ds: the run's dataset; ``split`` its split (same seed as the training run).
        loaders: ``{"train", "val", "test"}`` loaders at the run's image size.
        model_name: the run's model key (``convnext_tiny``...).
        fraction: the run's training fraction (coreset size), Table 2's column.

    """

    model: nn.Module
    train_params: dict[str, Any]
    ds: Any
    split: Any
    loaders: dict[str, Any]
    model_name: str
    fraction: float


def prepare_compression(run: str | os.PathLike, data_dir: str | None = None,
                        max_test_images: int = 0, batch_size: int = 64) -> CompressionSetup:
    """Load a trained run (rebuilding its checkpoint if missing) and its data split.

    The dataset, split seed and image size are the training run's, so the test split is
    exactly the one the run never saw. A run whose recorded data hash differs from the data
    found now is refused. ``max_test_images`` > 0 evaluates a seeded uniform random sample
    of that many test images (the split's test indices are grouped by class, so taking the
    first N would test one or two classes only); 0 keeps the whole test split.
    """
    from lcc_utils import data, training
    from lcc_utils.paths import resolve_path

    if run in (None, ""):
        raise ValueError("run is empty: give a trained run folder such as runs/train/<name>")
    if not isinstance(max_test_images, int) or max_test_images < 0:
        raise ValueError(f"max_test_images must be an integer >= 0, got {max_test_images!r}")
    run_dir = resolve_path(run)
    if not (run_dir / "params.json").is_file():
        raise FileNotFoundError(f"run={run!s}: {run_dir} is not a training run folder "
                                "(no params.json)")
    info = json.loads((run_dir / "params.json").read_text())
    model, params = training.load_trained(run_dir, rebuild=True, data_dir=data_dir or None)
    ds = data.load_dataset(params["dataset"], data_dir=data_dir or None)
    recorded = info.get("data_hash")
    if recorded and recorded != ds.hash:
        raise ValueError(f"run={run!s} was trained on data with hash {recorded}, but "
                         f"{params['dataset']} under the data root has hash {ds.hash}")
    seed = int(params.get("seed", 0))
    split = data.get_split(ds, seed=seed)
    loaders = data.make_loaders(ds, split, image_size=params.get("image_size"),
                                batch_size=batch_size, seed=seed)
    if max_test_images and max_test_images < len(split.test):
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(np.asarray(split.test), max_test_images, replace=False))
        mean, std = data.normalization(ds, split)
        loaders["test"] = data.BatchLoader(ds.images, ds.labels, subset, batch_size,
                                           image_size=params.get("image_size"), mean=mean,
                                           std=std)
    return CompressionSetup(model.cpu().eval(), params, ds, split, loaders,
                            str(params["model"]), float(params.get("fraction", 1.0)))


def collect_results(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every finished compression run's ``results.csv``, with its dataset, model and fraction.

    Feed it to :func:`table2` for the study-wide Table 2 (one column group per fraction).
    """
    from lcc_utils.paths import runs_root

    root = Path(root) if root else runs_root() / "compression"
    frames = []
    for res in sorted(root.glob("*/results.csv")):
        if not (res.parent / "metrics.json").is_file():
            continue
        df = pd.read_csv(res)
        df["compression_run"] = res.parent.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
