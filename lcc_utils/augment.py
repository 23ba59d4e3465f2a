"""TrivialAugmentWide on whole batches (Müller & Hutter 2021), as torchvision defines it.

torchvision's ``v2.TrivialAugmentWide`` transforms one image per call and picks one op
for the whole input, so a batch needs a Python loop of ~1-4 ms per image. Here every
image of a batch still draws its own op and magnitude from torchvision's search space
(same ops, same 31 magnitude bins, same random sign), but the ops run vectorised: all
photometric ops as per-sample tensor arithmetic, all geometric ops as ONE ``grid_sample``
with per-sample affine matrices (nearest neighbour, zero fill: torchvision's defaults).
``tests/test_augment.py`` checks each op against torchvision's functional op.

One deliberate difference, used by :class:`lcc_utils.data.BatchLoader`: augmentation runs
at the images' native size, before resizing to the model's input size. The translation
range of TrivialAugmentWide is in *pixels* (up to 32 px), so ``reference_size`` rescales it
to what 32 px means at the size the paper augments at (224 px): 32 * 64 / 224 = 9 px on a
64-px EuroSAT image, not half the image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# torchvision's functional ops are imported where they are used: importing torchvision costs about
# 2 s (it imports torch._dynamo), which every notebook that never augments would pay at its start.

#: The op names in torchvision's TrivialAugmentWide order.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NUM_BINS = 31
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
           "Sharpness"}


def magnitudes(op: str) -> torch.Tensor | None:
    """Magnitude bins (torchvision's) of ``op`` (TrivialAugmentWide's wide search space)."""
    lin = {"ShearX": (0.0, 0.99), "ShearY": (0.0, 0.99), "TranslateX": (0.0, 32.0), "TranslateY": (0.0, 32.0),
           "Rotate": (0.0, 135.0), "Brightness": (0.0, 0.99), "Color": (0.0, 0.99), "Contrast": (0.0, 0.99),
           "Sharpness": (0.0, 0.99), "Solarize": (1.0, 0.0)}
    if op in lin:
        return torch.linspace(*lin[op], NUM_BINS)
    if op == "Posterize":
        return (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 6)).round().int()).float()
    return None


def sample_ops(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw an op index and a signed magnitude for each of ``n`` images."""
    ops = rng.integers(0, len(OPS), n)
    bins = rng.integers(0, NUM_BINS, n)
    signs = np.where(rng.integers(0, 2, n) == 1, -1.0, 1.0)
    mags = np.zeros(n)
    for i, (o, b) in enumerate(zip(ops, bins, strict=True)):
        m = magnitudes(OPS[o])
        if m is not None:
            mags[i] = float(m[b]) * (signs[i] if OPS[o] in _SIGNED else 1.0)
    return ops, mags


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    r = ratio.view(-1, 1, 1, 1)
    return (r * a + (1.0 - r) * b).clamp_(0, 255).floor_()  # uint8 cast truncates, as torchvision's


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _affine_matrices(ops: list[str], mags: np.ndarray, h: int, w: int, translate_scale: float) -> torch.Tensor:
    """Per-sample inverse affine matrices (torchvision's conventions for each geometric op)."""
    from torchvision.transforms.functional import _get_inverse_affine_matrix

    thetas = []
    for op, m in zip(ops, mags, strict=True):
        if op == "ShearX":  # torchvision shears about the top-left corner (center=[0, 0])
            mat = _get_inverse_affine_matrix([-w * 0.5, -h * 0.5], 0.0, [0.0, 0.0], 1.0,
                                             [math.degrees(math.atan(m)), 0.0])
        elif op == "ShearY":
            mat = _get_inverse_affine_matrix([-w * 0.5, -h * 0.5], 0.0, [0.0, 0.0], 1.0,
                                             [0.0, math.degrees(math.atan(m))])
        elif op == "TranslateX":
            mat = _get_inverse_affine_matrix([0.0, 0.0], 0.0, [float(int(m * translate_scale)), 0.0], 1.0, [0.0, 0.0])
        elif op == "TranslateY":
            mat = _get_inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, float(int(m * translate_scale))], 1.0, [0.0, 0.0])
        else:  # Rotate: torchvision's rotate passes -angle
            mat = _get_inverse_affine_matrix([0.0, 0.0], -m, [0.0, 0.0], 1.0, [0.0, 0.0])
        thetas.append(mat)
    return torch.tensor(thetas, dtype=torch.float32).view(-1, 2, 3)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply inverse affine matrices in pixel units, as torchvision's ``_apply_grid_transform``."""
    n, _, h, w = x.shape
    d = 0.5
    dev = x.device
    base = torch.empty(1, h, w, 3, device=dev)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + d, w * 0.5 + d - 1, steps=w, device=dev))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + d, h * 0.5 + d - 1, steps=h, device=dev).unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.to(dev).transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=dev)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def apply_ops(
    images: torch.Tensor, ops: np.ndarray, mags: np.ndarray, reference_size: int | None = None
) -> torch.Tensor:
    """Apply per-sample TrivialAugmentWide ops to a uint8 (B, 3, H, W) batch; returns uint8.

    Runs on the batch's device (the ops and magnitudes are drawn on the CPU, their application
    is tensor arithmetic): :class:`lcc_utils.data.BatchLoader`'s device path augments on the GPU.

    Args:
        images: uint8 RGB batch.
        ops: op index per image (into :data:`OPS`).
        mags: signed magnitude per image (ignored by ops without one).
        reference_size: image size whose pixel units the translation magnitudes refer to
            (None: the images' own size, i.e. exactly torchvision's behaviour).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"apply_ops needs a uint8 (B, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    x = images.float()
    out = x.clone()
    h, w = x.shape[-2:]
    dev = images.device
    names = np.array(OPS)[ops]
    # small per-batch parameters go to the device without a stream sync (they are staged at once)
    mag = torch.from_numpy(np.asarray(mags, dtype=np.float32)).to(dev, non_blocking=True)

    def pick(*which: str) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(np.isin(names, which))).to(dev, non_blocking=True)

    geo_np = np.flatnonzero(np.isin(names, ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")))
    if len(geo_np):
        geo = torch.from_numpy(geo_np).to(dev, non_blocking=True)
        scale = 1.0 if reference_size is None else w / reference_size
        theta = _affine_matrices(list(names[geo_np]), mags[geo_np], h, w, scale)
        out[geo] = _warp(x[geo], theta.to(dev, non_blocking=True))
    for op in ("Brightness", "Color", "Contrast", "Sharpness"):
        i = pick(op)
        if not len(i):
            continue
        xi, f = x[i], 1.0 + mag[i]
        if op == "Brightness":
            out[i] = _blend(xi, torch.zeros_like(xi), f)
        elif op == "Color":
            out[i] = _blend(xi, _gray(xi).floor().expand_as(xi), f)
        elif op == "Contrast":
            mean = _gray(xi).floor().mean(dim=(1, 2, 3), keepdim=True)
            out[i] = _blend(xi, mean.expand_as(xi), f)
        else:
            k = torch.ones(3, 3, device=dev)
            k[1, 1] = 5.0
            k = (k / k.sum()).expand(3, 1, 3, 3)
            blurred = F.conv2d(xi, k, groups=3).round_()
            degenerate = xi.clone()
            degenerate[..., 1:-1, 1:-1] = blurred
            out[i] = _blend(xi, degenerate, f)
    i = pick("Posterize")
    if len(i):
        bits = mag[i].to(torch.int64)
        mask = ((255 << (8 - bits)) & 255).view(-1, 1, 1, 1)
        out[i] = (images[i].to(torch.int64) & mask).float()
    i = pick("Solarize")
    if len(i):
        thr = (255.0 * mag[i]).view(-1, 1, 1, 1)
        out[i] = torch.where(x[i] >= thr, 255.0 - x[i], x[i])
    i = pick("AutoContrast")
    if len(i):
        xi = x[i]
        lo = xi.amin(dim=(2, 3), keepdim=True)
        hi = xi.amax(dim=(2, 3), keepdim=True)
        eq = hi == lo
        scale = torch.where(eq, torch.ones_like(hi), 255.0 / (hi - lo))
        lo = torch.where(eq, torch.zeros_like(lo), lo)
        out[i] = ((xi - lo) * scale).clamp_(0, 255).floor_()
    i = pick("Equalize")
    if len(i):
        from torchvision.transforms.v2 import functional as TF

        out[i] = TF.equalize(images[i]).float()  # torchvision's equalize is batched already
    return out.to(torch.uint8)


def trivial_augment_wide(images: torch.Tensor, rng: np.random.Generator,
                         reference_size: int | None = None) -> torch.Tensor:
    """TrivialAugmentWide of a uint8 (B, 3, H, W) batch: one random op and magnitude per image."""
    ops, mags = sample_ops(len(images), rng)
    return apply_ops(images, ops, mags, reference_size)
