"""A compressed model that runs faster on a CPU: int8 export with real low-precision kernels.

The ``.lcc`` artefact is the *storage* format: it decodes to dense fp32, so it is smaller on
disk but not faster. :func:`export_int8` produces the *execution* format: PyTorch's FX
post-training static quantization for the x86 backend (fbgemm / oneDNN int8 kernels, per
output channel symmetric int8 weights, uint8 activations calibrated on a few training
batches; Conv-BatchNorm-ReLU fused), traced and frozen into a TorchScript module so that a
user loads it without this package: ``torch.jit.load(path)``.

Choices (listed in docs/paper_a.md): int8 was chosen over channel pruning and ONNX Runtime by
measurement (``benchmarks/deploy_benchmark.py``) and because it needs no new dependency;
the calibration images come from the training split, never the test split; the activation
observer is a histogram over full 8-bit range (x86's default reduces it to 7 bits, which cost
1.26 points here; full range needs a CPU with VNNI to avoid saturation: ``reduce_range=True``
otherwise). PyTorch's int8 kernels have no
deterministic variant: run the exported module with ``torch.use_deterministic_algorithms``
off (or ``warn_only=True``).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lcc_utils.compression.size import _check_model
from lcc_utils.paths import atomic_path

#: Backend of the int8 kernels (x86: fbgemm + oneDNN; "qnnpack" on ARM).
INT8_BACKEND = "x86"


def export_int8(model: nn.Module, calib_batches: Iterable, num_batches: int = 8,
                backend: str = INT8_BACKEND,
                reduce_range: bool = False) -> torch.jit.ScriptModule:
    """Post-training static int8 quantization of ``model`` for CPU execution.

    Args:
        model: the fp32 model (not modified), in eval mode.
        calib_batches: batches ``(x, ...)`` of training images for the activation ranges.
        num_batches: calibration batches used (>= 1).
        backend: quantized engine, ``"x86"`` or ``"qnnpack"``.
        reduce_range: 7-bit activations (x86's default qconfig), safe on CPUs without VNNI
            where 8-bit products can saturate. False (full 8 bits) kept the full-data plain
            CNN at 96.69 % vs 96.81 % fp32; True lost 1.26 points (docs/paper_a.md).

    Returns:
        A frozen TorchScript module running int8 convolutions and linear layers.

    """
    _check_model(model)
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"unknown int8 backend {backend!r}; this torch supports: "
                         f"{', '.join(torch.backends.quantized.supported_engines)}")
    torch.backends.quantized.engine = backend
    batches = []
    for i, batch in enumerate(calib_batches):
        if i >= num_batches:
            break
        batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    if not batches:
        raise ValueError("calib_batches yielded no batch: int8 calibration needs images")
    # int8 kernels have no deterministic variant (quantized_resize_cpu_): a caller that turned
    # on torch.use_deterministic_algorithms (training does) gets a warning-only mode here
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if det:
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _export(model, batches, backend, reduce_range)
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)


def _export(model: nn.Module, batches: list[torch.Tensor], backend: str,
            reduce_range: bool) -> torch.jit.ScriptModule:
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        HistogramObserver,
        default_per_channel_weight_observer,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice
        warnings.simplefilter("ignore")
        qmap = get_default_qconfig_mapping(backend)
        if not reduce_range:  # full 8-bit activations, per-channel int8 weights
            qmap = qmap.set_global(QConfig(
                activation=HistogramObserver.with_args(reduce_range=False),
                weight=default_per_channel_weight_observer))
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), qmap, (batches[0],))
        with torch.no_grad():
            for x in batches:
                prepared(x.cpu())
        quantized = convert_fx(prepared)
        with torch.no_grad():
            traced = torch.jit.trace(quantized, batches[0][:1].cpu())
        return torch.jit.freeze(traced.eval())


def save_int8(module: torch.jit.ScriptModule, path: str | os.PathLike) -> Path:
    """Write an :func:`export_int8` module (TorchScript, atomically); load: ``torch.jit.load``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp))
    return path


def load_int8(path: str | os.PathLike, backend: str = INT8_BACKEND) -> torch.jit.ScriptModule:
    """Load a module written by :func:`save_int8` (sets the quantized engine it needs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"int8 model {path} does not exist")
    torch.backends.quantized.engine = backend
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a TorchScript int8 model (corrupted or truncated?)"
                         ) from exc
