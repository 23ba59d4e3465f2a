"""Running a model over data: the device, mixed precision and the one prediction loop.

Training's validation and test metrics, coreset scoring, paper B's test predictions and
the compression study's evaluation all go through :func:`predict`, so a model is always
run the same way. This module sits below both :mod:`lcc_utils.training` and
:mod:`lcc_utils.compression` and imports neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .progress import tqdm

__all__ = ["OUTPUTS", "mixed_precision", "predict", "resolve_device"]

#: What :func:`predict` returns per image: softmax probabilities or raw logits.
OUTPUTS = ("logits", "probs")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise ValueError(f"device={device!r} is not a valid device string") from err
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available here; use 'auto' "
                             "(CUDA when present, else the CPU) or 'cpu'")
        return dev
    raise ValueError(f"unknown device {device!r}; choose one of: auto, cpu, cuda, cuda:N")


def mixed_precision(device: torch.device) -> torch.autocast:
    """Autocast context of training and evaluation: bf16 (else fp16) on CUDA, off elsewhere."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device = "auto",
    *,
    max_images: int = 0,
    progress: bool = False,
    desc: str = "predict",
    amp: bool = True,
    output: str = "probs",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``model`` (in eval mode, moved to ``device``) over a loader of ``(x, y[, index])`` batches.

    Args:
        model: the classifier; its outputs are logits ``(B, K)``.
        loader: batches whose first two items are images and labels; a third item, when
            present, is the images' dataset indices.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (see :func:`resolve_device`).
        max_images: > 0 stops after that many images (the first ones, in loader order).
        progress: show a progress bar labelled ``desc``.
        desc: the progress bar's label.
        amp: run under :func:`mixed_precision` (bf16/fp16 on CUDA, as in training). False runs
            the model at its own precision: the compression study evaluates quantized weights
            exactly, not rounded again by autocast.
        output: ``"probs"`` (softmax probabilities) or ``"logits"`` (the raw fp32 scores,
            whose argmax is the model's prediction exactly; softmax can round two logits a
            few ulps apart to the same probability).

    Returns:
        ``(scores, labels, indices)``: ``scores`` ``(N, K)`` as chosen by ``output``,
        labels ``(N,)`` and dataset indices ``(N,)``; the indices are -1 when the batches
        carry none.

    """
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; choose one of: {', '.join(OUTPUTS)}")
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 0:
        raise ValueError(f"max_images must be an integer >= 0 (0: all), got {max_images!r}")
    dev = resolve_device(device)
    model.eval().to(dev)
    scores, labels, indices, seen = [], [], [], 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = batch[0], batch[1]
        idx = batch[2] if len(batch) > 2 else torch.full((len(x),), -1, dtype=torch.int64)
        if max_images and seen + len(x) > max_images:
            x, y, idx = x[: max_images - seen], y[: max_images - seen], idx[: max_images - seen]
        with mixed_precision(dev) if amp else contextlib.nullcontext():
            logits = model(x.to(dev, non_blocking=True)).float()
        out = torch.softmax(logits, dim=1) if output == "probs" else logits
        scores.append(out.cpu().numpy())
        labels.append(np.asarray(y))
        indices.append(np.asarray(idx))
        seen += len(x)
        if max_images and seen >= max_images:
            break
    if not scores:
        raise ValueError("predict: the loader yielded no batches")
    return np.concatenate(scores), np.concatenate(labels), np.concatenate(indices)
