"""Paper B's wall-to-wall map: classify a whole Sentinel-2 scene with the patch CNN, window by window.

Prediction granularity. Paper B's CNN labels a 32x32 patch. For a map we slide the
patch over the 10 m grid with a ``stride`` and give each patch's class (and its
probability) to the patch's central ``stride x stride`` block, so every pixel gets the
class of the patch centred on it, to within ``stride``. Two ways to compute this:

* ``mode="patch"`` (exact): every patch is cut out and classified on its own, as in
  training (zero "same"-padding at the patch border). Cost grows as
  ``(patch_size / stride)^2``.
* ``mode="fcn"`` (fast; the default for GAP networks such as ``LightweightCNN``): the
  convolutional trunk runs once over a whole window, then the global average pool is
  replaced by an average pool of one patch's footprint (``patch_size / d`` feature
  cells, d = the trunk's downsampling) with step ``stride / d``, then the classifier.
  Features are shared between overlapping patches, so the cost no longer depends on
  the stride. It differs from ``"patch"`` only near patch borders, where a conv sees
  the real neighbouring pixels instead of the zero padding the model saw in training
  (the agreement is measured in tests and the mapping notebook).

Pixels masked by SCL (clouds, cirrus, shadows, nodata) get nodata in the map. Inside a
patch's context, masked pixels are filled with the training mean (0 after
standardisation); pixels beyond the scene edge likewise.

Output GeoTIFF: the scene's CRS and 10 m transform; band 1 = class index (uint8),
band 2 = probability of that class in percent (uint8, 0-100); 255 = nodata in both.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import nn

from lcc_utils.paths import atomic_path, data_relative
from lcc_utils.sentinel2 import L2AProduct, ProductReader, grid_windows

from .progress import tqdm

#: Nodata value of both bands of the classification map.
MAP_NODATA = 255
MODES: tuple[str, ...] = ("auto", "fcn", "patch")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def _norm_tensor(v: Sequence[float] | None, c: int, name: str) -> torch.Tensor | None:
    if v is None:
        return None
    t = torch.as_tensor(np.asarray(v, dtype=np.float32))
    if t.shape != (c,):
        raise ValueError(f"{name} must have one value per band ({c}), got shape {tuple(t.shape)}")
    return t.view(1, c, 1, 1)


def fcn_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(trunk, classifier) of a conv net ending in global average pooling, else None.

    Recognises modules with ``features``, a global ``pool``
    (``AdaptiveAvgPool2d(1)``) and ``classifier`` (e.g. ``LightweightCNN``).
    """
    feats, pool, clf = (getattr(model, k, None) for k in ("features", "pool", "classifier"))
    if not isinstance(feats, nn.Module) or not isinstance(clf, nn.Module):
        return None
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (1, (1, 1)):
        return None
    return _pool_before_relu(feats), clf


def _pool_before_relu(trunk: nn.Module) -> nn.Module:
    """Same trunk with each ReLU -> MaxPool pair swapped (4x fewer ReLUs, identical output).

    max(relu(a), relu(b)) == relu(max(a, b)) because ReLU is non-decreasing.
    """
    if not isinstance(trunk, nn.Sequential):
        return trunk
    mods = list(trunk)
    i = 0
    while i < len(mods) - 1:
        if isinstance(mods[i], nn.ReLU) and isinstance(mods[i + 1], nn.MaxPool2d):
            mods[i], mods[i + 1] = mods[i + 1], mods[i]
            i += 2
        else:
            i += 1
    return nn.Sequential(*mods)


def _check_fcn(model: nn.Module, c: int, patch_size: int, device: torch.device) -> int:
    """Downsampling factor d of the trunk; checks trunk -> mean -> classifier == model."""
    feats, clf = fcn_parts(model)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, c, patch_size, patch_size, generator=g).to(device)
    with torch.inference_mode():
        f = feats(x)
        ref = model(x)
        alt = clf(f.mean(dim=(2, 3)))
    if not torch.allclose(ref, alt, atol=1e-4, rtol=1e-4):
        raise ValueError("mode='fcn': model(x) != classifier(mean(features(x))); use mode='patch'")
    if f.shape[-1] < 1 or patch_size % f.shape[-1]:
        raise ValueError(f"mode='fcn': patch_size={patch_size} is not a multiple of the trunk's "
                         f"output size {f.shape[-1]}; use mode='patch'")
    return patch_size // f.shape[-1]


class _Classifier:
    """Batched prediction of (class, probability) for every block of a padded window."""

    def __init__(self, model: nn.Module, mode: str, patch_size: int, stride: int,
                 batch_size: int, device: torch.device, c: int, precision: str = "fp32"):
        self.model, self.mode, self.p, self.s = model, mode, patch_size, stride
        self.bs, self.device = batch_size, device
        self.bf16 = precision == "bf16"
        if mode == "fcn":
            self.feats, self.clf = fcn_parts(model)
            self.d = _check_fcn(model, c, patch_size, device)
            if stride % self.d:
                raise ValueError(f"mode='fcn': stride={stride} must be a multiple of the "
                                 f"trunk's downsampling {self.d}")

    @torch.inference_mode()
    def __call__(self, xp: torch.Tensor, nh: int, nw: int) -> tuple[np.ndarray, np.ndarray]:
        """``xp`` (1, C, (nh-1)*s+p, (nw-1)*s+p) -> class and probability (nh, nw)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self._logits(xp, nh, nw)
        prob = torch.softmax(logits.float(), dim=1)
        conf, cls = prob.max(dim=1)
        return (cls.cpu().numpy().reshape(nh, nw).astype(np.uint8),
                conf.cpu().numpy().reshape(nh, nw))

    def _logits(self, xp: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        if self.mode == "fcn":
            f = self.feats(xp.to(self.device).contiguous(memory_format=torch.channels_last))
            k, st = self.p // self.d, self.s // self.d
            pooled = F.avg_pool2d(f, kernel_size=k, stride=st)[:, :, :nh, :nw]
            v = pooled[0].permute(1, 2, 0).reshape(nh * nw, -1)
            logits = torch.cat([self.clf(v[i:i + 65536]) for i in range(0, len(v), 65536)])
        else:
            patches = F.unfold(xp, kernel_size=self.p, stride=self.s)  # (1, C*p*p, L)
            patches = patches[0].T.reshape(-1, xp.shape[1], self.p, self.p)
            logits = torch.cat([self.model(patches[i:i + self.bs].to(self.device).contiguous(
                memory_format=torch.channels_last))
                                for i in range(0, len(patches), self.bs)])
        return logits


def _resolve_mode(model: nn.Module, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "auto":
        return "fcn" if fcn_parts(model) is not None else "patch"
    if mode == "fcn" and fcn_parts(model) is None:
        raise ValueError("mode='fcn' needs a model with features, a global average pool and "
                         "classifier (like LightweightCNN); use mode='patch'")
    return mode


def _check_geometry(patch_size: int, stride: int, window_size: int) -> None:
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size={patch_size} and stride={stride} must be >= 1")
    if stride > patch_size or (patch_size - stride) % 2:
        raise ValueError(f"stride={stride} must be <= patch_size={patch_size} with an even "
                         "difference, so each patch has one central stride x stride block")
    if window_size < stride:
        raise ValueError(f"window_size={window_size} must be >= stride={stride}")


def _padded_window(reader: ProductReader, product: L2AProduct, win: Window, halo: int, hp: int,
                   wp: int, mean: torch.Tensor | None, std: torch.Tensor | None
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """Standardised input of shape (1, C, hp, wp) starting ``halo`` px before ``win``.

    Masked or off-scene pixels are 0 (the training mean after standardisation). Returns
    the tensor and the mask of ``win`` itself.
    """
    r0, c0 = int(win.row_off) - halo, int(win.col_off) - halo
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + hp, product.height), min(c0 + wp, product.width)
    wd = reader.read(Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
    x = torch.from_numpy(wd.x).unsqueeze(0)
    if mean is not None:
        x = x - mean
    if std is not None:
        x = x / std
    m = torch.from_numpy(wd.mask)
    x = x.masked_fill(m.view(1, 1, *m.shape), 0.0)
    out = torch.zeros((1, x.shape[1], hp, wp), dtype=torch.float32)
    out[:, :, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = x
    h, w = int(win.height), int(win.width)
    own = wd.mask[int(win.row_off) - rr0:int(win.row_off) - rr0 + h,
                  int(win.col_off) - cc0:int(win.col_off) - cc0 + w]
    return out, own


def classify_scene(
    product: L2AProduct,
    model: nn.Module,
    out_path: str | os.PathLike,
    patch_size: int = 32,
    stride: int = 16,
    batch_size: int = 256,
    device: str = "cpu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    window_size: int = 1024,
    mode: str = "auto",
    progress: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Classify every pixel of a scene and write a georeferenced class + probability map.

    Streams windows of ``window_size`` px (plus a halo of ``(patch_size - stride) / 2``):
    memory stays flat however large the scene. See the module docstring for the
    granularity, the two modes and the output format.

    Args:
        product: The L2A product (``sentinel2.open_l2a``), bands in the model's order.
        model: Trained classifier taking (B, C, patch_size, patch_size) standardised input.
        out_path: GeoTIFF to write (atomically).
        patch_size: Side of the patch the model classifies (paper B: 32).
        stride: Step between patches = side of the block each patch labels.
        batch_size: Patches per forward pass (``mode="patch"``).
        device: Torch device.
        mean: Per-band training mean of reflectance (standardisation), or None.
        std: Per-band training std, or None.
        classes: Class names written into the file's ``CLASSES`` tag.
        window_size: Output window side in px (rounded down to a multiple of ``stride``).
        mode: ``"auto"`` (``"fcn"`` when the model allows it), ``"fcn"`` or ``"patch"``.
        progress: Show a tqdm bar.
        precision: ``"fp32"`` (default, as trained) or ``"bf16"`` (bfloat16 autocast: about
            2x faster on CPUs with AVX512-BF16; a few pixels near the decision boundary
            may flip, so measure the agreement with ``map_agreement`` before relying on it).

    Returns:
        A report: pixels, seconds, pixels per second, mode, class pixel counts.

    """
    ps_, st = int(patch_size), int(stride)
    ws = max(st, (int(window_size) // st) * st)
    _check_geometry(ps_, st, int(window_size))
    mode = _resolve_mode(model, mode)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    c = len(product.bands)
    mean_t, std_t = _norm_tensor(mean, c, "mean"), _norm_tensor(std, c, "std")
    dev = torch.device(device)
    # channels-last is 2x faster for these convolutions on CPU (oneDNN); work on a copy
    # so the caller's model keeps its memory format.
    model = copy.deepcopy(model).to(dev).eval().to(memory_format=torch.channels_last)
    clf = _Classifier(model, mode, ps_, st, int(batch_size), dev, c, precision)
    n_classes = None
    halo = (ps_ - st) // 2
    out_path = Path(out_path)
    profile = {
        "driver": "GTiff", "dtype": "uint8", "count": 2, "width": product.width,
        "height": product.height, "crs": product.crs, "transform": product.transform,
        "nodata": MAP_NODATA, "compress": "deflate", "tiled": True, "blockxsize": 256,
        "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }
    counts = np.zeros(256, np.int64)
    t0 = time.perf_counter()
    wins = grid_windows(product.height, product.width, ws)
    with atomic_path(out_path) as tmp, ProductReader(product) as reader, \
            rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = ("class", "probability_percent")
        for win in tqdm(wins, desc="classify", disable=not progress, leave=False):
            h, w = int(win.height), int(win.width)
            nh, nw = -(-h // st), -(-w // st)
            hp, wp = (nh - 1) * st + ps_, (nw - 1) * st + ps_
            xp, own_mask = _padded_window(reader, product, win, halo, hp, wp, mean_t, std_t)
            cls, conf = clf(xp, nh, nw)
            if n_classes is None:
                n_classes = int(_n_out(model, c, ps_, dev))
            # each block's class to its stride x stride pixels
            cls_px = np.repeat(np.repeat(cls, st, 0), st, 1)[:h, :w]
            prob_px = np.repeat(np.repeat(np.round(conf * 100).astype(np.uint8), st, 0),
                                st, 1)[:h, :w]
            cls_px[own_mask] = MAP_NODATA
            prob_px[own_mask] = MAP_NODATA
            dst.write(np.stack([cls_px, prob_px]), window=win)
            counts += np.bincount(cls_px.ravel(), minlength=256)
        names = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
        if len(names) != n_classes:
            raise ValueError(f"classes has {len(names)} names, the model predicts "
                             f"{n_classes} classes")
        dst.update_tags(CLASSES=json.dumps(dict(enumerate(names))), MODE=mode,
                        PRECISION=precision,
                        PATCH_SIZE=ps_, STRIDE=st, SOURCE=data_relative(product.path),
                        BAND_2="probability of the predicted class, percent (0-100)")
    dt = time.perf_counter() - t0
    npx = product.width * product.height
    return {
        "path": str(out_path), "mode": mode, "precision": precision, "patch_size": ps_,
        "stride": st,
        "width": product.width, "height": product.height, "pixels": npx, "seconds": dt,
        "pixels_per_second": npx / dt, "masked_pixels": int(counts[MAP_NODATA]),
        "class_pixels": {names[k]: int(counts[k]) for k in range(n_classes)},
    }


def _n_out(model: nn.Module, c: int, p: int, dev: torch.device) -> int:
    with torch.inference_mode():
        return model(torch.zeros(1, c, p, p, device=dev)).shape[1]


def classify_scene_naive(
    product: L2AProduct,
    model: nn.Module,
    patch_size: int = 32,
    stride: int = 16,
    device: str = "cpu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Reference loop: read, standardise and classify one patch at a time (benchmark only).

    Same granularity as :func:`classify_scene` with ``mode="patch"``; returns the class
    map (H, W) uint8 with ``MAP_NODATA`` on masked pixels. Holds the map in memory.
    """
    ps_, st = int(patch_size), int(stride)
    _check_geometry(ps_, st, st)
    c = len(product.bands)
    mean_t, std_t = _norm_tensor(mean, c, "mean"), _norm_tensor(std, c, "std")
    dev = torch.device(device)
    model = model.to(dev).eval()
    halo = (ps_ - st) // 2
    out = np.full((product.height, product.width), MAP_NODATA, np.uint8)
    blocks = [(r, cc) for r in range(0, product.height, st) for cc in range(0, product.width, st)]
    with ProductReader(product) as reader, torch.inference_mode():
        for r, cc in tqdm(blocks, desc="naive", disable=not progress, leave=False):
            win = Window(cc, r, min(st, product.width - cc), min(st, product.height - r))
            xp, own = _padded_window(reader, product, win, halo, ps_, ps_, mean_t, std_t)
            k = int(model(xp.to(dev)).argmax(1))
            blk = np.full(own.shape, k, np.uint8)
            blk[own] = MAP_NODATA
            out[r:r + own.shape[0], cc:cc + own.shape[1]] = blk
    return out


def read_map(path: str | os.PathLike, max_size: int | None = None
             ) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Class band of a map (decimated to at most ``max_size`` px a side), class names, profile."""
    with rasterio.open(path) as src:
        if src.count != 2 or src.descriptions[0] != "class":
            raise ValueError(f"{path}: not a classification map written by classify_scene")
        f = 1 if max_size is None else max(1, int(np.ceil(max(src.width, src.height) / max_size)))
        shape = (-(-src.height // f), -(-src.width // f))
        a = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        names = json.loads(src.tags().get("CLASSES", "{}"))
        classes = [names[str(i)] for i in range(len(names))]
        prof = {"crs": src.crs, "transform": src.transform, "width": src.width,
                "height": src.height, "bounds": src.bounds}
    return a, classes, prof


def class_area_table(path: str | os.PathLike) -> Any:
    """Pixels, area (km^2) and share of each class in a map, counted block by block."""
    import pandas as pd

    counts = np.zeros(256, np.int64)
    with rasterio.open(path) as src:
        px_area = abs(src.transform.a * src.transform.e)
        names = json.loads(src.tags().get("CLASSES", "{}"))
        for _, win in src.block_windows(1):
            counts += np.bincount(src.read(1, window=win).ravel(), minlength=256)
    rows = [{"class": names.get(str(k), str(k)), "pixels": int(counts[k])}
            for k in range(len(names))]
    rows.append({"class": "masked (nodata)", "pixels": int(counts[MAP_NODATA])})
    df = pd.DataFrame(rows)
    df["area_km2"] = df["pixels"] * px_area / 1e6
    df["share"] = df["pixels"] / counts.sum()
    return df


def plot_map(path: str | os.PathLike, max_size: int = 1500, title: str | None = None,
             colors: Sequence[str] | None = None) -> Any:
    """Figure of a classification map with a legend (masked pixels in light grey)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    a, classes, prof = read_map(path, max_size)
    default = ["#2ca25f", "#d95f0e", "#3182bd", "#756bb1", "#e7298a", "#66a61e", "#e6ab02",
               "#a6761d", "#1b9e77", "#666666"]
    if classes == ["non_vegetation", "vegetation"]:
        default = ["#d9b26f", "#2ca25f"]
    cols = list(colors or default)[: len(classes)]
    if len(cols) < len(classes):
        raise ValueError(f"colors: {len(cols)} colours for {len(classes)} classes")
    img = np.ma.masked_equal(a, MAP_NODATA)
    b = prof["bounds"]
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.set_facecolor("#dddddd")
    ax.imshow(img, cmap=ListedColormap(cols), vmin=-0.5, vmax=len(classes) - 0.5,
              extent=(b.left, b.right, b.bottom, b.top), interpolation="nearest")
    handles = [Patch(color=cc, label=n) for cc, n in zip(cols, classes, strict=True)]
    handles.append(Patch(color="#dddddd", label="masked (SCL cloud/cirrus/nodata)"))
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.9)
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)  # metres as written, no 1e6 offset
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel(f"easting (m, {prof['crs']})")
    ax.set_ylabel("northing (m)")
    ax.set_title(title or Path(path).name)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- model and checks
def check_georeference(map_path: str | os.PathLike, product: L2AProduct) -> dict[str, Any]:
    """Whether a map has the scene's CRS, 10 m transform and size (read back with rasterio)."""
    with rasterio.open(map_path) as src:
        return {
            "crs": src.crs.to_string(), "same_crs": src.crs == product.crs,
            "transform": tuple(round(v, 6) for v in src.transform[:6]),
            "same_transform": src.transform.almost_equals(product.transform),
            "pixel_size": (src.transform.a, -src.transform.e),
            "same_shape": (src.height, src.width) == product.shape,
            "shape": (src.height, src.width), "nodata": src.nodata,
        }


def map_agreement(path_a: str | os.PathLike, path_b: str | os.PathLike) -> float:
    """Share of unmasked pixels with the same class in two maps of one scene."""
    same = valid = 0
    with rasterio.open(path_a) as a, rasterio.open(path_b) as b:
        if (a.shape, a.transform) != (b.shape, b.transform):
            raise ValueError(f"{path_a} and {path_b} are not on the same grid")
        for _, win in a.block_windows(1):
            x, y = a.read(1, window=win), b.read(1, window=win)
            ok = (x != MAP_NODATA) & (y != MAP_NODATA)
            valid += int(ok.sum())
            same += int((x[ok] == y[ok]).sum())
    return same / max(valid, 1)


# --------------------------------------------------------------------------- validation against SCL
#: SCL classes that serve as the (weak, independent) reference of a binary vegetation map:
#: 4 = vegetation, 5 = not vegetated (``constants.SCL_VEGETATION_LABELS``).
SCL_REFERENCE = {4: "vegetation", 5: "non_vegetation"}


def scl_agreement(map_path: str | os.PathLike, product: L2AProduct, window_size: int = 1024
                  ) -> tuple[Any, dict[str, Any]]:
    """Agreement of a binary vegetation map with SCL's vegetation (4) / not-vegetated (5) classes.

    Only clear pixels count (not nodata in the map, i.e. not masked by SCL) whose SCL class
    is 4 or 5; other SCL classes (water, dark, unclassified...) have no reference and are
    counted in ``other_scl_pixels``. SCL is ESA's automatic scene classification, not
    ground truth: the agreement is a weak but independent check. Streams window by window.

    Returns:
        (confusion table: rows ``SCL 4 vegetation`` / ``SCL 5 not vegetated``, columns the
        map's classes, pixel counts), and ``{"oa", "reference_pixels", "other_scl_pixels",
        "clear_pixels", "map_vegetation_share", "reference_vegetation_share"}``.

    Raises:
        ValueError: the map is not a binary vegetation map, is on another grid, or the
            product has no SCL.

    """
    if product.scl is None:
        raise ValueError(f"{product.path}: no SCL band, nothing to validate the map against")
    with rasterio.open(map_path) as src:
        names = json.loads(src.tags().get("CLASSES", "{}"))
        classes = [names[str(i)] for i in range(len(names))]
        if sorted(classes) != sorted(SCL_REFERENCE.values()):
            raise ValueError(f"{map_path}: classes {classes} are not the binary vegetation classes "
                             f"{sorted(SCL_REFERENCE.values())}; SCL agreement needs a binary map")
        if (src.height, src.width) != product.shape or not src.transform.almost_equals(product.transform):
            raise ValueError(f"{map_path} is not on the 10 m grid of {product.path.name}")
        cm = np.zeros((2, len(classes)), np.int64)
        other = clear = 0
        with ProductReader(product) as reader:
            for win in grid_windows(product.height, product.width, int(window_size)):
                m = src.read(1, window=win)
                scl = reader.read(win).scl
                counts, n_other, n_clear = scl_counts(m, scl, len(classes))
                cm += counts
                other += n_other
                clear += n_clear
    table = scl_confusion_table(cm, classes)
    ref_idx = [classes.index(n) for n in SCL_REFERENCE.values()]
    n = int(cm.sum())
    veg = classes.index("vegetation")
    return table, {
        "oa": float(sum(cm[r, ref_idx[r]] for r in range(2)) / n) if n else float("nan"),
        "reference_pixels": n, "other_scl_pixels": other, "clear_pixels": clear,
        "map_vegetation_share": float(cm[:, veg].sum() / n) if n else float("nan"),
        "reference_vegetation_share": float(cm[0].sum() / n) if n else float("nan"),
        **scl_specificity(table),
    }


def scl_confusion_table(cm: np.ndarray, classes: Sequence[str]) -> Any:
    """:func:`scl_counts`'s counts as a table: rows ``SCL 4 vegetation`` / ``SCL 5 not vegetated``, columns classes."""
    import pandas as pd

    rows = [f"SCL {c} {'vegetation' if c == 4 else 'not vegetated'}" for c in SCL_REFERENCE]
    return pd.DataFrame(np.asarray(cm), index=pd.Index(rows, name="reference"),
                        columns=pd.Index(list(classes), name="map"))


def scl_counts(map_classes: np.ndarray, scl: np.ndarray, n_classes: int) -> tuple[np.ndarray, int, int]:
    """Pixel counts of one block of a map against SCL: ``(2 x n_classes counts, other SCL, clear)``.

    Row 0 counts the clear map pixels (not :data:`MAP_NODATA`) where SCL is 4 (vegetation), row 1
    where SCL is 5 (not vegetated), by the map's class; ``other`` the clear pixels of any other
    SCL class (no reference); ``clear`` all clear pixels.
    """
    m, scl = np.asarray(map_classes), np.asarray(scl)
    if m.shape != scl.shape:
        raise ValueError(f"map block {m.shape} and SCL block {scl.shape} differ in shape")
    ok = m != MAP_NODATA
    cm = np.zeros((2, n_classes), np.int64)
    for r, code in enumerate(SCL_REFERENCE):
        cm[r] = np.bincount(m[ok & (scl == code)], minlength=n_classes)[:n_classes]
    return cm, int((ok & ~np.isin(scl, list(SCL_REFERENCE))).sum()), int(ok.sum())


def scl_specificity(table: Any) -> dict[str, float | None]:
    """Specificity and sensitivity of a binary vegetation map against SCL, from :func:`scl_agreement`'s table.

    ``not_vegetated_as_non_vegetation``: the share of SCL "not vegetated" (5) clear pixels that the
    map calls non-vegetation. On a bare tile (29RKH: no SCL vegetation at all) this is the number
    that matters: a correct model maps nearly all of it non-vegetation. ``vegetation_as_vegetation``:
    the share of SCL vegetation (4) pixels mapped vegetation. None where SCL has no such pixel.
    """
    def share(row: str, col: str) -> float | None:
        n = int(table.loc[row].sum())
        return float(table.loc[row, col] / n) if n else None

    return {"not_vegetated_as_non_vegetation": share("SCL 5 not vegetated", "non_vegetation"),
            "vegetation_as_vegetation": share("SCL 4 vegetation", "vegetation")}


# --------------------------------------------------------------------------- NDVI-threshold map
def ndvi_threshold_map(
    product: L2AProduct,
    out_path: str | os.PathLike,
    threshold: float,
    patch_size: int = 32,
    stride: int = 16,
    window_size: int = 1024,
    classes: Sequence[str] = ("non_vegetation", "vegetation"),
) -> dict[str, Any]:
    """Paper B's NDVI baseline as a map, on the CNN map's grid and granularity.

    Each ``stride x stride`` block gets the class of the patch centred on it, as in
    :func:`classify_scene`: vegetation where the patch's mean NDVI is above ``threshold``
    (strictly, as ``baselines.NDVIThreshold.predict``), the mean taken over the patch's unmasked
    pixels (:func:`lcc_utils.spectral.normalized_difference`, NIR = B08, else B8A). The
    threshold is the one notebook 06 chose on its validation patches. Those were EuroSAT MS L1C
    top-of-atmosphere patches; here NDVI is the product's own (L2A surface) reflectance, so
    the threshold crosses a reflectance definition (README, "NDVI").

    The GeoTIFF has :func:`classify_scene`'s layout: band 1 the class (255 = nodata), band 2 the
    patch-mean NDVI as ``round(50 * (NDVI + 1))`` (0-100).
    """
    from lcc_utils.spectral import nir_band, normalized_difference

    ps_, st = int(patch_size), int(stride)
    _check_geometry(ps_, st, int(window_size))
    ws = max(st, (int(window_size) // st) * st)
    nir = nir_band(product.bands, where=product.path.name)
    veg = list(classes).index("vegetation")
    halo = (ps_ - st) // 2
    profile = {
        "driver": "GTiff", "dtype": "uint8", "count": 2, "width": product.width, "height": product.height,
        "crs": product.crs, "transform": product.transform, "nodata": MAP_NODATA, "compress": "deflate",
        "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }
    counts = np.zeros(256, np.int64)
    t0 = time.perf_counter()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, ProductReader(product) as reader, rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = ("class", "ndvi_scaled (round(50 * (NDVI + 1)))")
        for win in grid_windows(product.height, product.width, ws):
            h, w = int(win.height), int(win.width)
            nh, nw = -(-h // st), -(-w // st)
            hp, wp = (nh - 1) * st + ps_, (nw - 1) * st + ps_
            r0, c0 = int(win.row_off) - halo, int(win.col_off) - halo
            rr0, cc0 = max(r0, 0), max(c0, 0)
            rr1, cc1 = min(r0 + hp, product.height), min(c0 + wp, product.width)
            wd = reader.read(Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
            nd = normalized_difference(wd.x, product.bands, nir, "B04", axis=0, dtype=np.float64)
            valid = np.zeros((hp, wp), np.float64)
            val = np.zeros((hp, wp), np.float64)
            valid[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = ~wd.mask
            val[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = np.where(wd.mask, 0.0, nd)
            pool = [F.avg_pool2d(torch.from_numpy(a)[None, None], ps_, st)[0, 0, :nh, :nw].numpy()
                    for a in (val, valid)]
            mean = np.clip(np.divide(pool[0], pool[1], out=np.zeros_like(pool[0]), where=pool[1] > 0), -1, 1)
            cls = np.where(mean > threshold, veg, 1 - veg).astype(np.uint8)
            cls_px = np.repeat(np.repeat(cls, st, 0), st, 1)[:h, :w]
            nd_px = np.repeat(np.repeat(np.round(50 * (mean + 1)).astype(np.uint8), st, 0), st, 1)[:h, :w]
            own = wd.mask[int(win.row_off) - rr0:int(win.row_off) - rr0 + h,
                          int(win.col_off) - cc0:int(win.col_off) - cc0 + w]
            cls_px[own] = MAP_NODATA
            nd_px[own] = MAP_NODATA
            dst.write(np.stack([cls_px, nd_px]), window=win)
            counts += np.bincount(cls_px.ravel(), minlength=256)
        dst.update_tags(CLASSES=json.dumps(dict(enumerate(classes))), MODE="ndvi_threshold",
                        NDVI_THRESHOLD=repr(float(threshold)), PATCH_SIZE=ps_, STRIDE=st,
                        SOURCE=data_relative(product.path))  # data:<rel>: no machine path in a tag
    return {"path": str(out_path), "threshold": float(threshold), "seconds": time.perf_counter() - t0,
            "masked_pixels": int(counts[MAP_NODATA]),
            "class_pixels": {c: int(counts[k]) for k, c in enumerate(classes)}}


def areas_beside_agreement(maps: dict[str, str | os.PathLike], agreement: dict[str, dict[str, Any]]) -> Any:
    """Class areas of each map, each row beside that map's agreement with SCL.

    An area is only as good as the map: on the desert tile a map that calls bare soil
    vegetation reports thousands of km^2 of "vegetation". So areas are never shown alone: every
    row carries the map's ``scl_oa`` and ``scl_not_vegetated_as_non_vegetation``
    (:func:`scl_specificity`).
    """
    import pandas as pd

    frames = []
    for name, path in maps.items():
        t = class_area_table(path)
        t.insert(0, "map", name)
        a = agreement[name]
        t["scl_oa"] = a["oa"]
        t["scl_not_vegetated_as_non_vegetation"] = a["not_vegetated_as_non_vegetation"]
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


#: Colours of SCL classes in the map panels: 4 vegetation, 5 not vegetated, anything else clear.
_SCL_PANEL = {4: ("#2ca25f", "SCL 4 vegetation"), 5: ("#d9b26f", "SCL 5 not vegetated"),
              -1: ("#6a51a3", "other clear SCL class (no reference)")}


def plot_map_panels(maps: dict[str, str | os.PathLike], product: L2AProduct,
                    agreement: dict[str, dict[str, Any]], max_size: int = 700) -> Any:
    """The maps and SCL side by side on one grid, each map titled with its agreement with SCL.

    ``maps``: title -> binary map GeoTIFF (the CNN's, the NDVI threshold's...); ``agreement``:
    title -> :func:`scl_agreement`'s summary. The last panel is SCL's own classes on the same
    10 m grid (masked pixels grey in every panel).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from lcc_utils.sentinel2 import read_overview

    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 5.2), sharex=True, sharey=True)
    shape = None
    for ax, (title, path) in zip(axes, maps.items(), strict=False):
        a, classes, prof = read_map(path, max_size)
        shape, b = a.shape, prof["bounds"]
        cols = [mcolor(c) for c in classes]
        ax.imshow(np.ma.masked_equal(a, MAP_NODATA), cmap=ListedColormap(cols), vmin=-0.5,
                  vmax=len(classes) - 0.5, extent=(b.left, b.right, b.bottom, b.top), interpolation="nearest")
        g = agreement[title]
        spec = g.get("not_vegetated_as_non_vegetation")
        ax.set_title(f"{title}\nSCL 5 mapped non-veg.: {'n/a' if spec is None else f'{100 * spec:.1f} %'}"
                     f" | OA vs SCL 4/5 {100 * g['oa']:.1f} %", fontsize=9)
    ov = read_overview(product, max_size)
    scl = ov.scl if ov.scl is not None else np.zeros(ov.mask.shape, np.uint8)
    code = np.where(scl == 4, 0, np.where(scl == 5, 1, 2))
    if shape is not None and code.shape != shape:  # read_map and read_overview decimate alike; guard anyway
        ri = np.minimum((np.arange(shape[0]) * code.shape[0]) // shape[0], code.shape[0] - 1)
        ci = np.minimum((np.arange(shape[1]) * code.shape[1]) // shape[1], code.shape[1] - 1)
        code, mask = code[np.ix_(ri, ci)], ov.mask[np.ix_(ri, ci)]
    else:
        mask = ov.mask
    bnd = rasterio.transform.array_bounds(product.height, product.width, product.transform)
    ax = axes[-1]
    ax.imshow(np.ma.masked_array(code, mask), cmap=ListedColormap([v[0] for v in _SCL_PANEL.values()]),
              vmin=-0.5, vmax=2.5, extent=(bnd[0], bnd[2], bnd[1], bnd[3]), interpolation="nearest")
    ax.set_title("SCL (ESA scene classification), the reference", fontsize=9)
    for a_ in axes:
        a_.set_facecolor("#dddddd")
        a_.tick_params(labelsize=7)
        a_.ticklabel_format(useOffset=False, style="plain")  # metres of the CRS, no "1e6"
    handles = [Patch(color=BINARY_HEX[c], label=f"map: {c}") for c in BINARY_HEX]
    handles += [Patch(color=c, label=lab) for c, lab in _SCL_PANEL.values()]
    handles.append(Patch(color="#dddddd", label="masked (SCL cloud/cirrus/nodata)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


#: Hex colours of the binary classes in figures (the COG colour table's, :data:`BINARY_COLORS`).
BINARY_HEX = {"non_vegetation": "#d9b26f", "vegetation": "#2ca25f"}


def mcolor(cls: str) -> str:
    """Figure colour of a binary map class (grey for any other class name)."""
    return BINARY_HEX.get(cls, "#666666")


# --------------------------------------------------------------------------- GIS-ready output
#: RGBA colours of the class COG's colour table: binary maps soil tan / vegetation green,
#: other maps a ten-colour qualitative palette; nodata (255) is transparent.
BINARY_COLORS = {"non_vegetation": (217, 178, 111, 255), "vegetation": (44, 162, 95, 255)}
PALETTE = ((44, 162, 95), (217, 95, 14), (49, 130, 189), (117, 107, 177), (231, 41, 138),
           (102, 166, 30), (230, 171, 2), (166, 118, 29), (27, 158, 119), (102, 102, 102))


def class_colors(classes: Sequence[str]) -> dict[int, tuple[int, int, int, int]]:
    """Colour table of a class map: class index -> RGBA, plus transparent nodata."""
    if set(classes) == set(BINARY_COLORS):
        cmap = {i: BINARY_COLORS[c] for i, c in enumerate(classes)}
    else:
        if len(classes) > len(PALETTE):
            raise ValueError(f"{len(classes)} classes but only {len(PALETTE)} palette colours")
        cmap = {i: (*PALETTE[i], 255) for i in range(len(classes))}
    cmap[MAP_NODATA] = (0, 0, 0, 0)
    return cmap


def _category_xml(classes: Sequence[str]) -> str:
    """GDAL PAM sidecar (``.aux.xml``) naming the categories of band 1 (read by GDAL and QGIS)."""
    from xml.sax.saxutils import escape

    cats = "".join(f"      <Category>{escape(c)}</Category>\n" for c in classes)
    return ("<PAMDataset>\n  <PAMRasterBand band=\"1\">\n    <CategoryNames>\n" + cats
            + "    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n")


def write_map_cogs(map_path: str | os.PathLike, class_path: str | os.PathLike,
                   prob_path: str | os.PathLike, blocksize: int = 512) -> dict[str, Any]:
    """Cloud-Optimized GeoTIFFs of a :func:`classify_scene` map: one for classes, one for probability.

    * class COG: uint8, nodata 255, an embedded colour table (:func:`class_colors`), the class
      names as GDAL category names (a ``.aux.xml`` sidecar, the place GDAL keeps them for
      GeoTIFF; QGIS shows them as the legend) and in the ``CLASSES`` tag, overviews built with
      **mode** resampling (a class is never averaged);
    * probability COG: uint8 percent of the predicted class, nodata 255, overviews by average.

    Both are written through GDAL's ``COG`` driver (tiled, DEFLATE, internal overviews before
    the full-resolution tiles), streamed block by block, each to a temporary name renamed
    only when complete: a failure leaves no half-written COG.
    """
    import tempfile

    from rasterio.shutil import copy as rio_copy

    from lcc_utils.paths import atomic_write

    class_path, prob_path = Path(class_path), Path(prob_path)
    with rasterio.open(map_path) as src:
        if src.count != 2 or src.descriptions[0] != "class":
            raise ValueError(f"{map_path}: not a classification map written by classify_scene")
        names = json.loads(src.tags().get("CLASSES", "{}"))
        classes = [names[str(i)] for i in range(len(names))]
        tags = src.tags()
        base = {k: src.profile[k] for k in ("width", "height", "crs", "transform")}
        with tempfile.TemporaryDirectory(dir=class_path.parent, prefix=".cog-") as tmpd:
            work = {}
            for band, name in ((1, "class"), (2, "probability_percent")):
                p = Path(tmpd) / f"{name}.tif"
                with rasterio.open(p, "w", driver="GTiff", count=1, dtype="uint8", nodata=MAP_NODATA,
                                   tiled=True, blockxsize=256, blockysize=256, **base) as dst:
                    dst.set_band_description(1, name)
                    if band == 1:
                        dst.write_colormap(1, class_colors(classes))
                        dst.update_tags(CLASSES=tags.get("CLASSES", "{}"))
                    keep = ("MODE", "STRIDE", "PATCH_SIZE", "SOURCE")
                    dst.update_tags(**{k: v for k, v in tags.items() if k in keep})
                    for _, win in src.block_windows(band):
                        dst.write(src.read(band, window=win), 1, window=win)
                work[name] = p
            for name, out, resampling in (("class", class_path, "MODE"),
                                          ("probability_percent", prob_path, "AVERAGE")):
                with atomic_path(out) as tmp:
                    rio_copy(work[name], tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=int(blocksize),
                             OVERVIEW_RESAMPLING=resampling, OVERVIEWS="AUTO")
    atomic_write(class_path.with_name(class_path.name + ".aux.xml"), _category_xml(classes))
    atomic_write(class_path.with_suffix(".qml"), qgis_style(classes))
    return {"class_cog": str(class_path), "probability_cog": str(prob_path), "classes": classes,
            "qgis_style": str(class_path.with_suffix(".qml"))}


def qgis_style(classes: Sequence[str]) -> str:
    """A QGIS layer style (``.qml``) for a class map: a paletted renderer with each class's name and colour.

    QGIS loads ``<name>.qml`` beside ``<name>.tif`` by itself when the layer is added, so the
    map opens with the legend of :func:`class_colors` (nodata transparent).
    """
    from xml.sax.saxutils import quoteattr

    colors = class_colors(classes)
    hexes = {i: "#{:02x}{:02x}{:02x}".format(*colors[i][:3]) for i in range(len(classes))}
    entries = "".join(f'        <paletteEntry value="{i}" color="{hexes[i]}" alpha="{colors[i][3]}" '
                      f"label={quoteattr(c)}/>\n" for i, c in enumerate(classes))
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28" styleCategories="Symbology">\n  <pipe>\n'
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
            "      <rasterTransparency/>\n      <colorPalette>\n" + entries
            + "      </colorPalette>\n    </rasterrenderer>\n"
            '    <brightnesscontrast brightness="0" contrast="0"/>\n'
            '    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0"/>\n'
            '    <rasterresampler maxOversample="2"/>\n  </pipe>\n  <blendMode>0</blendMode>\n</qgis>\n')


def check_cog(path: str | os.PathLike) -> dict[str, Any]:
    """What a GIS user gets from a COG, read back with rasterio (GDAL): layout, overviews, colours, categories."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    with rasterio.open(path) as src:
        aux = path.with_name(path.name + ".aux.xml")
        cats = []
        if aux.is_file():
            cats = [c.text or "" for c in ET.parse(aux).getroot().iter("Category")]
        names = json.loads(src.tags().get("CLASSES", "{}"))
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = None
        return {
            "driver": src.driver, "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "dtype": src.dtypes[0], "nodata": src.nodata, "overviews": src.overviews(1),
            "blocksize": src.block_shapes[0],
            "colormap": None if cmap is None else {k: cmap[k] for k in [*range(len(names)), MAP_NODATA]},
            "category_names": cats, "gdal_sees_sidecar": any(str(f).endswith(".aux.xml") for f in src.files),
            "crs": src.crs.to_string(),
        }


def check_model_bands(model_bands: Sequence[str], scene_bands: Sequence[str], model_source: str = "the model",
                      scene: str = "the scene") -> None:
    """A map needs the model's bands in the model's order: else a ValueError naming both lists."""
    if list(model_bands) != list(scene_bands):
        missing = [b for b in model_bands if b not in scene_bands]
        hint = (f"the scene lacks {missing}" if missing else "same bands, another order: open the "
                "product with the model's band order (sentinel2.open_l2a(path, bands))")
        raise ValueError(f"bands of {model_source} {list(model_bands)} differ from the bands of {scene} "
                         f"{list(scene_bands)}: {hint}")
