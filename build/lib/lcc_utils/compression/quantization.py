"""Paper A's fixed-bit post-training weight quantization (PTQ) at 1-8 bits.

The quantized model is *simulated*: its weights hold the de-quantized fp32 values, and
:func:`_dequantize` is the one formula that both the simulation and
:func:`~lcc_utils.compression.load_compressed` use, so a reloaded artefact is bit-identical.

Paper A says only "b-bit quantization" (CR 32/b). Two choices it leaves open are options
here (listed in docs/paper_a.md), both symmetric and uniform:

* **granularity** (:data:`GRANULARITIES`): one fp32 scale per output channel (dim 0,
  ``"channel"``) or one for the whole tensor (``"tensor"``).
* **levels** (:data:`LEVELS`): ``"2^b"`` uses all 2^b codes of b bits, the odd multiples
  ``+-1, +-3, .., +-(2^b - 1)`` of the step ``s = max|w| / (2^b - 1)`` (a mid-rise grid:
  no code for zero, so a b-bit weight is never silently pruned and the paper's 32/b holds);
  ``"2^b-1"`` uses ``-(2^(b-1)-1) .. 2^(b-1)-1`` times ``s = max|w| / (2^(b-1)-1)``
  (mid-tread: zero is a code, so small weights round to zero; "2-bit" is then ternary and
  its file also profits from the zeros).

One bit is the same in both: sign times a scale equal to the mean ``|w|`` of the kept weights
(binary-weight-network style). Pruned weights (exact zeros) stay zero through the sparsity
mask, whatever the grid. The default (:data:`DEFAULT_GRANULARITY`, :data:`DEFAULT_LEVELS`) is
the combination that reproduces paper A's pattern best; see docs/paper_a.md.
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

#: Scale granularity: per output channel or per tensor.
GRANULARITIES = ("channel", "tensor")
#: Integer grids: all 2^b codes (mid-rise, no zero) or 2^b - 1 codes (mid-tread, with zero).
LEVELS = ("2^b", "2^b-1")
#: Defaults: per-tensor scales on the symmetric 2^b-1 grid (int8 style): of the four, the one
#: closest to paper A's pattern on our models (1-2 bit collapse, 3-4 bit lose most). docs/paper_a.md.
DEFAULT_GRANULARITY = "tensor"
DEFAULT_LEVELS = "2^b-1"


def _check_bits(bits: int, param: str = "bits") -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"{param} must be an integer from 1 to 8, got {bits!r}")


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown quantizer granularity {granularity!r}; choose one of: "
                         f"{', '.join(GRANULARITIES)}")


def _check_levels(levels: str) -> None:
    if levels not in LEVELS:
        raise ValueError(f"unknown quantizer levels {levels!r}; choose one of: "
                         f"{', '.join(LEVELS)}")


def _qmax(bits: int, levels: str = "2^b-1") -> int:
    """Largest absolute integer code."""
    if bits == 1:
        return 1
    return 2 ** bits - 1 if levels == "2^b" else 2 ** (bits - 1) - 1


def _has_zero_code(bits: int, levels: str) -> bool:
    """Whether a zero weight has a code of its own (else zeros need a mask)."""
    return bits >= 2 and levels == "2^b-1"


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def _scales(w: torch.Tensor, bits: int, granularity: str = "channel",
            levels: str = "2^b-1") -> torch.Tensor:
    """fp32 scales: one per output channel, or a single one (see the module docstring)."""
    a = w.detach().abs().float()
    a = a.flatten(1) if granularity == "channel" else a.reshape(1, -1)
    if bits == 1:
        nz = (a > 0).sum(1)
        return torch.where(nz > 0, a.sum(1) / nz.clamp(min=1), torch.zeros_like(a[:, 0]))
    return a.amax(1) / _qmax(bits, levels)


def _codes(w: torch.Tensor, scales: torch.Tensor, bits: int,
           levels: str = "2^b-1") -> torch.Tensor:
    """Signed integer codes of a weight tensor (int16; zeros stay zero)."""
    s = _channel_view(scales, w.ndim)
    if bits == 1:
        q = torch.where(w > 0, 1, -1)
    else:
        safe = torch.where(s > 0, s, torch.ones_like(s))
        x = w.float() / safe
        qm = _qmax(bits, levels)
        if levels == "2^b":  # nearest odd integer
            q = (2 * torch.floor(x / 2) + 1).clamp(-qm, qm).to(torch.int32)
        else:
            q = torch.round(x).clamp(-qm, qm).to(torch.int32)
    q = torch.where((w != 0) & (s > 0), q, torch.zeros_like(q))
    return q.to(torch.int16)


def _dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 weights from codes and scales: the one formula simulation and loading share."""
    return codes.to(torch.float32) * _channel_view(scales.to(torch.float32), codes.ndim)


def fake_quantize(w: torch.Tensor, bits: int, granularity: str = DEFAULT_GRANULARITY,
                  levels: str = DEFAULT_LEVELS) -> torch.Tensor:
    """De-quantized copy of ``w`` (no gradient): what a quantized layer computes with."""
    scales = _scales(w, bits, granularity, levels)
    return _dequantize(_codes(w.detach(), scales, bits, levels), scales)


def _quantize_layer(mod: nn.Module, bits: int, granularity: str, levels: str) -> np.ndarray:
    w = mod.weight.detach()
    scales = _scales(w, bits, granularity, levels)
    deq = _dequantize(_codes(w, scales, bits, levels), scales)
    with torch.no_grad():
        mod.weight.copy_(deq.to(mod.weight.dtype))
    return scales.numpy().astype(np.float32)


def _quantize_layers(model: nn.Module, bits_per_layer: Mapping[str, int], method: str,
                     settings: dict[str, Any], granularity: str = DEFAULT_GRANULARITY,
                     levels: str = DEFAULT_LEVELS) -> CompressionReport:
    _check_granularity(granularity)
    _check_levels(levels)
    layers = prunable_layers(model)
    scales, nnz_before = {}, {}
    for name, mod in layers.items():
        nnz_before[name] = int(torch.count_nonzero(mod.weight.detach()))
        b = bits_per_layer[name]
        if b < _FP32_BITS:
            scales[name] = _quantize_layer(mod, b, granularity, levels)
    report = analyze(model, method, {**settings, "granularity": granularity,
                                     "levels": levels})
    for name in layers:
        lr = report.layers[_weight_name(name)]
        lr.bits = int(bits_per_layer[name])
        lr.scales = scales.get(name)
        lr.levels = levels
        lr.nnz_pruned = nnz_before[name]
    return report


def quantize(model: nn.Module, bits: int, granularity: str = DEFAULT_GRANULARITY,
             levels: str = DEFAULT_LEVELS) -> tuple[nn.Module, CompressionReport]:
    """Fixed-bit post-training weight quantization of every prunable layer.

    Symmetric uniform quantization at ``bits`` (1-8) of every Conv2d and Linear weight,
    first and last layers included (that is what "fixed" means here). Existing zeros (a
    pruned model) stay zero.

    Args:
        model: the model (not modified).
        bits: bit-width, 1 to 8.
        granularity: ``"tensor"`` (one scale per weight tensor) or ``"channel"``.
        levels: ``"2^b"`` (all codes, no zero) or ``"2^b-1"`` (symmetric with zero).

    """
    _check_model(model)
    _check_bits(bits)
    _check_granularity(granularity)
    _check_levels(levels)
    model = copy.deepcopy(model)
    names = prunable_layers(model)
    report = _quantize_layers(model, dict.fromkeys(names, int(bits)), "fixed_quant",
                              {"bits": int(bits)}, granularity, levels)
    return model, report
