"""What a compressed model weighs: per-layer reports and paper A's compression ratio.

Every compression function returns a :class:`CompressionReport` (per-layer non-zeros,
bit-width and quantization scales) beside the simulated model; :func:`compression_ratio`
turns it into the paper's ratio (original size / compressed size) and
:func:`size_breakdown` says where the bits go.

Choices the paper leaves open (listed in docs/paper_a.md):

* Prunable / quantizable tensors are the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear``
  (timm Swin attention ``qkv``/``proj`` and MLP layers included). Biases, normalisation
  parameters, Swin relative-position tables and buffers stay fp32 and are counted at their
  stored width.
* Scales are stored as fp32 (32 bits per output channel; counted in the ratio).
* Sparse layers store a packed bit mask or packed indices (``ceil(log2(numel))`` bits each),
  whichever is smaller per layer; a dense layer stores no mask.
* The ratio's "original size" is the fp32 state dict (every tensor at its stored width);
  the measured on-disk ratio divides the ``torch.save(state_dict)`` file size
  (:func:`state_dict_file_size`) by the artefact size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

_FP32_BITS = 32
_SCALE_BITS = 32  # per-channel scales are stored as fp32


@dataclasses.dataclass
class LayerReport:
    """Compression state of one prunable weight tensor.

    Attributes:
        name: state-dict name of the weight (``"stages.0.blocks.0.conv_dw.weight"``).
        shape: tensor shape; dim 0 is the output channel used for per-channel scales.
        nnz: non-zero weights after compression (pruned and quantized-to-zero removed).
        bits: bit-width of the stored values; 32 means not quantized (fp32 values).
        scales: quantization scales (fp32; one per output channel, or one per tensor),
            ``None`` when ``bits == 32``.
        levels: integer grid of the codes, ``"2^b"`` or ``"2^b-1"`` (see quantization).
        nnz_pruned: non-zero weights before quantization (after pruning); ``None``: ``nnz``.
            Paper A's CR counts pruning, not weights that quantization rounded to zero.

    """

    name: str
    shape: tuple[int, ...]
    nnz: int
    bits: int = _FP32_BITS
    scales: np.ndarray | None = None
    levels: str = "2^b-1"
    nnz_pruned: int | None = None

    @property
    def n_scales(self) -> int:
        """Number of stored fp32 scales (0 when not quantized)."""
        if self.bits >= _FP32_BITS:
            return 0
        return len(self.scales) if self.scales is not None else self.shape[0]

    @property
    def zero_code(self) -> bool:
        """Whether a zero has a code of its own (else a sparse layer needs a mask)."""
        return self.bits >= _FP32_BITS or (self.bits >= 2 and self.levels == "2^b-1")

    def storage(self) -> tuple[str, int]:
        """Cheapest storage of this tensor: (kind, bits), see :func:`_layer_storage`."""
        return _layer_storage(self.numel, self.nnz, self.bits, self.n_scales, self.zero_code)

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
            kind, nbits = lr.storage()
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


def _index_bits(numel: int) -> int:
    return max(1, math.ceil(math.log2(max(numel, 2))))


def _layer_storage(numel: int, nnz: int, bits: int, n_scales: int,
                   zero_code: bool = True) -> tuple[str, int]:
    """Cheapest storage of one weight tensor: (kind, bits) with kind dense/bitmask/indices."""
    scale_bits = n_scales * _SCALE_BITS if bits < _FP32_BITS else 0
    options = {
        "bitmask": numel + nnz * bits,
        "indices": nnz * (_index_bits(numel) + bits),
    }
    if nnz == numel or zero_code:  # dense needs a code for zero (1-bit and 2^b grids: none)
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
        kind, total = lr.storage()
        scale_bits = lr.n_scales * _SCALE_BITS
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


def paper_compression_ratio(report: CompressionReport) -> float:
    """Paper A's own compression ratio: 32 / b for quantization, 1 / (1 - s) for pruning.

    Over the prunable weights only: ``sum(numel x 32) / sum(nnz_pruned x bits)``, which is
    exactly 32 / b for b-bit quantization, 1 / (1 - s) for pruning at sparsity s, and their
    product for P->Q (mixed bits: the size-weighted harmonic mean). Masks, indices, scales,
    biases and norms are not counted, nor zeros that quantization produced (paper A reports
    2-bit as CR 16 whatever the grid). :func:`compression_ratio` counts all of them.
    """
    num = den = 0
    for lr in report.layers.values():
        kept = lr.nnz if lr.nnz_pruned is None else lr.nnz_pruned
        num += lr.numel * _FP32_BITS
        den += kept * lr.bits
    return num / max(den, 1)


def state_dict_file_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the fp32 baseline of the on-disk ratio."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
