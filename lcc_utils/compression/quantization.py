"""Paper A's fixed-bit post-training weight quantization (PTQ) at 1-8 bits.

The quantized model is *simulated*: its weights hold the de-quantized fp32 values, and
:func:`_dequantize` is the one formula that both the simulation and
:func:`~lcc_utils.compression.load_compressed` use, so a reloaded artefact is bit-identical.

Choice the paper leaves open (listed in the README): quantization is symmetric, uniform and
per output channel (dim 0). For ``b >= 2`` bits the integer codes are
``-(2^(b-1)-1) .. 2^(b-1)-1`` (2^b - 1 levels, zero exactly representable, so pruned weights
stay zero) with scale ``max|w_c| / (2^(b-1)-1)``. One bit means sign times a per-channel
scale equal to the mean ``|w|`` of the channel's kept weights (binary-weight-network style);
zeros are then kept only through the sparsity mask.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from lcc_utils.compression.size import (
    _FP32_BITS,
    CompressionReport,
    _check_model,
    _weight_name,
    analyze,
    prunable_layers,
)


def _check_bits(bits: int, param: str = "bits") -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"{param} must be an integer from 1 to 8, got {bits!r}")


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
