"""One model factory for both papers: timm backbones (paper A) and the small CNN (paper B).

Every model in the project comes from :func:`create_model`, so a notebook, a test
or the compression stage swaps architectures by name only.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lcc_utils.constants import PAPER_A_BACKBONES

# Swin's patch embedding (4 px) and three 2x patch mergings divide the image by 32.
# timm 1.0.31 itself accepts ANY img_size (checked for 8..256 px): it pads partial
# patches/windows and shrinks the 7x7 window to the last feature map (1x1 at 32 px,
# 2x2 at 64 px, 7x7 at 224 px). We accept only multiples of 32 so no stage pads and the
# architecture at 224 px is exactly the paper's (7 x 32); choice documented in docs/paper_a.md.
SWIN_SIZE_MULTIPLE = 32


class _PooledCNN(nn.Module):
    """What both small CNNs share: features, global average pooling, dropout, a linear classifier."""

    def _head(self, features: list[nn.Module], width: int, num_classes: int, dropout: float) -> None:
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch ``(B, C, H, W)``."""
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


class LightweightCNN(_PooledCNN):
    """Paper B's lightweight CNN: ``depth`` blocks of Conv-ReLU-MaxPool, GAP, dropout, linear.

    The baseline (ablation A2) is three 3x3 blocks with 32/64/128 filters, dropout 0.3.
    Ablations: A1 ``depth=2``, A3 ``kernel_size=5``, A4 ``depth=4``.

    Args:
        in_chans: Input bands (paper B: 6 Sentinel-2 bands).
        num_classes: Output classes.
        depth: Number of Conv-ReLU-MaxPool blocks.
        filters: Filters per block; default doubles from 32 (32, 64, 128, 256, ...).
            Paper B does not say what a fourth block has: doubling is our choice.
        kernel_size: Convolution kernel size (odd; "same" padding).
        dropout: Dropout before the linear classifier.

    """

    def __init__(
        self,
        in_chans: int = 6,
        num_classes: int = 2,
        depth: int = 3,
        filters: Sequence[int] | None = None,
        kernel_size: int = 3,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        filters = tuple(filters) if filters is not None else tuple(32 * 2**i for i in range(depth))
        if len(filters) != depth:
            raise ValueError(f"filters has {len(filters)} entries but depth is {depth}")
        layers: list[nn.Module] = []
        prev = in_chans
        for width in filters:
            layers += [
                nn.Conv2d(prev, width, kernel_size, padding=kernel_size // 2),
                nn.ReLU(inplace=True),
                # ceil_mode keeps tiny inputs (e.g. 8 px with four blocks) from collapsing to 0
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            prev = width
        self._head(layers, prev, num_classes, dropout)


class PlainBNCNN(_PooledCNN):
    """Paper A's CPU stand-in: a plain VGG-style CNN, 4 stages of 2x (3x3 conv, BatchNorm, ReLU).

    Paper A's backbones are ImageNet-pretrained and trained at 224 px on a GPU; none of
    that exists here (no weights can be downloaded, 2 CPU cores). Trained from scratch at
    32 px, the timm backbones underfit EuroSAT (ResNet-18: 82 % after 10 epochs, 12 min),
    while this plain CNN (1.17 M parameters at width 32) reaches >= 95 % in about ten
    minutes: a coreset comparison needs a model that can learn the task. BatchNorm is
    what makes it train fast from scratch; paper B's ``LightweightCNN`` stays as paper B
    specifies it (no BatchNorm). Widths are ``width * (1, 2, 4, 8)``; a 2x2 max-pool
    follows each of the first three stages, then global average pooling and a linear
    classifier. ``width=16`` (~0.3 M parameters, 1/4 of the multiply-adds) is the cheap
    coreset-scoring proxy.

    Args:
        in_chans: Input bands.
        num_classes: Output classes.
        width: Channels of the first stage.
        dropout: Dropout before the classifier.

    """

    def __init__(self, in_chans: int = 3, num_classes: int = 10, width: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        prev = in_chans
        for stage in range(4):
            w = width * 2**stage
            for _ in range(2):
                layers += [nn.Conv2d(prev, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                prev = w
            if stage < 3:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self._head(layers, prev, num_classes, dropout)


def _timm_builder(timm_name: str, needs_img_size: bool = False) -> Callable[..., nn.Module]:
    def build(
        num_classes: int, in_chans: int, pretrained: bool, image_size: int | None, **kwargs
    ) -> nn.Module:
        import timm

        if needs_img_size and image_size is not None:
            kwargs["img_size"] = image_size
        return timm.create_model(
            timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )

    build.timm_name = timm_name  # type: ignore[attr-defined]
    return build


def _lightweight_builder(
    num_classes: int, in_chans: int, pretrained: bool, image_size: int | None, **kwargs
) -> nn.Module:
    if pretrained:
        raise ValueError("pretrained=True: lightweight_cnn has no ImageNet weights (paper B)")
    return LightweightCNN(in_chans=in_chans, num_classes=num_classes, **kwargs)


def _plain_builder(width: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, pretrained: bool, image_size: int | None,
              **kwargs) -> nn.Module:
        if pretrained:
            raise ValueError("pretrained=True: the plain BatchNorm CNN has no ImageNet weights")
        return PlainBNCNN(in_chans=in_chans, num_classes=num_classes, width=width, **kwargs)

    return build


#: Model registry: our name -> builder. Paper A's four backbones, ResNet-18, paper B's CNN,
#: and paper A's CPU stand-in ``plain_cnn`` with its scoring proxy ``plain_cnn_small``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnext_tiny": _timm_builder(PAPER_A_BACKBONES["convnext_tiny"]),
    "swin_tiny": _timm_builder(PAPER_A_BACKBONES["swin_tiny"], needs_img_size=True),
    "efficientnetv2_s": _timm_builder(PAPER_A_BACKBONES["efficientnetv2_s"]),
    "regnety_032": _timm_builder(PAPER_A_BACKBONES["regnety_032"]),
    "resnet18": _timm_builder("resnet18"),
    "lightweight_cnn": _lightweight_builder,
    "plain_cnn": _plain_builder(32),
    "plain_cnn_small": _plain_builder(16),
}


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """Return the registry entry for ``name`` or raise a ValueError listing the choices."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _check_image_size(name: str, image_size: int | None) -> None:
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    if name == "swin_tiny" and image_size % SWIN_SIZE_MULTIPLE:
        raise ValueError(
            f"image_size={image_size} is not supported for swin_tiny: use a multiple of "
            f"{SWIN_SIZE_MULTIPLE} (e.g. 32, 64, 96, 224, 256) so the 4-px patches and the "
            "three 2x patch mergings divide the image without padding"
        )


# --------------------------------------------------------------------------- weights files
# Sentinel-2 band names are spelt several ways (ours and ESA's "B02"/"B8A", torchgeo's
# SSL4EO lists "B2"/"B8a"): compared in one canonical spelling, ESA's.
_S2_BAND = re.compile(r"^B(\d{1,2})(A?)$")


def canonical_band(name: str) -> str:
    """One spelling of a band name, ESA's: ``"b2"``, ``"B2"`` -> ``"B02"``; ``"B8a"`` -> ``"B8A"``.

    Other names (``"R"``, ``"VV"``) are only stripped and upper-cased.
    """
    key = str(name).strip().upper()
    m = _S2_BAND.match(key)
    if not m:
        return key
    return f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"  # ESA: B8A, not B08A


def _band_list(bands: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(bands, str):
        raise ValueError(f"{what} must be a list of band names, got the string {bands!r}")
    out = tuple(canonical_band(b) for b in bands)
    dup = sorted({b for b in out if out.count(b) > 1})
    if dup:
        raise ValueError(f"{what} names a band twice: {', '.join(dup)}")
    return out


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The convolution that sees the input bands, and its name in ``model.state_dict()``.

    timm models name it in ``pretrained_cfg["first_conv"]`` (``conv1`` for ResNet-18,
    ``stem.0`` for ConvNeXt, ``patch_embed.proj`` for Swin); our own CNNs have no such
    record, so it is the first ``Conv2d`` registered (``features.0``), which is the first
    one applied in :class:`LightweightCNN` and :class:`PlainBNCNN`.
    """
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if name:
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            return name, module
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d: no first convolution to load bands into")


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier: timm's ``pretrained_cfg["classifier"]``, else the last ``Linear``."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    if names:
        return (names,) if isinstance(names, str) else tuple(names)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (linear[-1],) if linear else ()


def _read_checkpoint(path: Path, data: bytes | None = None) -> object:
    """The object stored in a weights file (read from ``data`` when the bytes are at hand)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load, load_file

            return load(data) if data is not None else load_file(str(path))
        src = io.BytesIO(data) if data is not None else path
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which one
        raise ValueError(f"weights={path}: cannot read this file ({err})") from err


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the weights in a checkpoint: a bare state dict or one nested under a common key."""
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_state", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights={path}: no state dict of tensors found in this file")
    # DataParallel / torch.compile prefixes
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def sidecar_path(weights: str | Path) -> Path:
    """``<weights>.json``: where the band list of a file that does not store one is written."""
    return Path(f"{weights}.json")


def read_weights_bands(
    weights: str | Path, given: Sequence[str] | None = None, obj: object = None
) -> tuple[tuple[str, ...] | None, str]:
    """The band list of a weights file's first convolution, and where it was found.

    In order: ``given`` (the caller's word); the file itself, a ``"bands"`` key beside the
    state dict or inside its ``"params"`` (what paper B's ``best.pt`` records); the sidecar
    ``<weights>.json`` (``{"bands": [...]}``, for files that carry no names, e.g. torchgeo's
    ``resnet18_sentinel2_all_moco`` whose 13 bands are ``B1..B8, B8a, B9..B12``). The file and
    its sidecar must agree. A sidecar rather than a notebook parameter: the bands are a property
    of the file and travel with it, and no run's parameters (nor its folder hash) change.

    Returns:
        ``(bands, source)``; ``(None, "unknown")`` when nothing names them.

    """
    path = Path(weights)
    if given is not None:
        return _band_list(given, "weights_bands"), "weights_bands argument"
    if obj is None:
        obj = _read_checkpoint(path)
    inside = None
    if isinstance(obj, dict):
        params = obj.get("params")
        inside = obj.get("bands", params.get("bands") if isinstance(params, dict) else None)
    inside = _band_list(inside, f"bands stored in {path}") if inside is not None else None
    side, sidecar = None, sidecar_path(path)
    if sidecar.is_file():
        try:
            side = json.loads(sidecar.read_text())["bands"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{sidecar}: expected a JSON object with a list under 'bands' ({err})") from err
        side = _band_list(side, f"bands of {sidecar}")
    if inside is not None and side is not None and inside != side:
        raise ValueError(f"{path} stores bands {','.join(inside)} but {sidecar} says "
                         f"{','.join(side)}: fix or remove the sidecar")
    if inside is not None:
        return inside, "checkpoint"
    if side is not None:
        return side, sidecar.name
    return None, "unknown"


def band_selection(weights_bands: Sequence[str], bands: Sequence[str]) -> list[int]:
    """Index of each of the model's ``bands`` among the checkpoint's ``weights_bands``, by name.

    ``band_selection(S2_ESA_BAND_ORDER, PAPER_B_BANDS)`` is ``[1, 2, 3, 7, 11, 12]``.

    Raises:
        ValueError: a model band the checkpoint has no kernel for (named, with the available ones).

    """
    src = _band_list(weights_bands, "weights_bands")
    dst = _band_list(bands, "bands")
    missing = [b for b in dst if b not in src]
    if missing:
        raise ValueError(f"band(s) {', '.join(missing)} of the model are not among the weights' "
                         f"bands; available: {', '.join(src)}")
    return [src.index(b) for b in dst]


def _mapping_note(src: tuple[str, ...], dst: tuple[str, ...]) -> str:
    if src == dst:
        return "bands match"
    verb = "reordered" if len(src) == len(dst) else "selected"
    return f"{verb} {','.join(dst)} of {len(src)} by name"


def describe_weights(
    pretrained: bool = False,
    weights: str | Path | None = None,
    bands: Sequence[str] | None = None,
    weights_bands: Sequence[str] | None = None,
) -> str:
    """Say where a model's initial weights come from, as recorded in a run's params and metrics.

    Returns ``"random init"``, ``"imagenet (timm hub)"`` or
    ``"file:<path> sha256:<hex> bands:<b1,...> (<n>, from <source>); first conv: <mapping>"``,
    e.g. ``... bands:B01,...,B12 (13, from x.pth.json); first conv: selected
    B02,B03,B04,B08,B11,B12 of 13 by name``. The band part says ``bands: unknown`` when no
    list names them (the file is then loaded as stored, or RGB-adapted, see :func:`load_weights`).
    ``bands`` and ``weights_bands`` are those given to :func:`load_weights`.
    """
    if weights in (None, ""):
        return "imagenet (timm hub)" if pretrained else "random init"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    data = path.read_bytes()
    text = f"file:{path} sha256:{hashlib.sha256(data).hexdigest()}"
    src, source = read_weights_bands(path, weights_bands, _read_checkpoint(path, data))
    if src is None:
        return f"{text} bands: unknown"
    text += f" bands:{','.join(src)} ({len(src)}, from {source})"
    if bands is None:
        return f"{text}; first conv: model bands unknown"
    dst = _band_list(bands, "bands")
    band_selection(src, dst)  # the same check load_weights makes
    return f"{text}; first conv: {_mapping_note(src, dst)}"


def load_weights(
    model: nn.Module,
    weights: str | Path,
    bands: Sequence[str] | None = None,
    weights_bands: Sequence[str] | None = None,
) -> nn.Module:
    """Load a local state dict or timm checkpoint into ``model``, matching input bands by name.

    Loaded manually (not through timm's ``pretrained_cfg_overlay``) so the same code handles
    timm and torchgeo files, our own ``best.pt`` and our own CNNs. The first convolution
    (:func:`first_conv`) is matched to the model's input bands:

    - both band lists known (``bands`` = the model's, the file's from :func:`read_weights_bands`):
      the file's kernels of the model's bands are **selected** by name, in the model's order,
      whatever the channel counts (B02,B03,B04,B08,B11,B12 out of 13; also a same-count
      reorder, e.g. torchgeo's B8A-ninth order into EuroSAT MS files' B8A-last order). No
      rescaling: a kept band's kernel is exactly what was learnt for that band, the dropped
      bands' terms are simply absent, and how large they were depends on those bands'
      statistics (B10 cirrus is near zero), so no single factor would restore them; this is
      what torchgeo/SSL4EO band subsets and TerraTorch's ``select_patch_embed_weights`` do,
      and fine-tuning (with BatchNorm after ResNet's ``conv1``) absorbs the shift. A model
      band the file has no kernel for is an error, not a random kernel.
    - otherwise, equal channel counts load as stored; a 3-channel file of unknown or unused
      bands (ImageNet RGB) is spread over the model's bands by timm's ``adapt_input_conv``
      (kernels repeated and scaled by 3/N, which *creates* channels, hence the rescale); any
      other count is an error asking for the band lists.

    A classifier whose shape differs (1000 ImageNet classes vs ours) or that the file lacks
    (self-supervised backbones) is left at its random init. Every other key must match exactly.

    Args:
        model: The freshly built model.
        weights: ``.pt``/``.pth`` (a state dict, or one under ``state_dict``/``model``/...) or
            ``.safetensors``.
        bands: The model's input bands, in the order of its input channels.
        weights_bands: The file's first-conv bands, when neither the file nor its
            ``<weights>.json`` sidecar records them.

    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = _read_checkpoint(path)
    state = _extract_state_dict(obj, path)
    own = model.state_dict()
    conv_name, conv = first_conv(model)
    key = f"{conv_name}.weight"
    if bands is not None:
        bands = _band_list(bands, "bands")
        if len(bands) != conv.in_channels:
            raise ValueError(f"bands names {len(bands)} bands but {conv_name!r} of the model has "
                             f"{conv.in_channels} input channels")
    if key in state and state[key].ndim == 4:
        state[key] = _match_input_bands(state[key], conv.in_channels, path, key, bands,
                                        weights_bands, obj)
    classifiers = _classifier_names(model)

    def is_head(k: str) -> bool:
        return any(k.startswith(f"{c}.") for c in classifiers)

    for k in list(state):
        if k not in own or state[k].shape == own[k].shape:
            continue
        if not is_head(k):
            raise ValueError(f"weights={path}: shape of {k!r} is {tuple(state[k].shape)}, "
                             f"model expects {tuple(own[k].shape)}")
        del state[k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not is_head(k)]
    if missing or unexpected:
        raise ValueError(
            f"weights={path} does not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def _match_input_bands(kernel: torch.Tensor, in_chans: int, path: Path, key: str,
                       bands: tuple[str, ...] | None, given: Sequence[str] | None,
                       obj: object) -> torch.Tensor:
    """The file's first-conv kernel with the model's input channels (see :func:`load_weights`)."""
    src, source = read_weights_bands(path, given, obj)
    n = kernel.shape[1]
    if src is not None and len(src) != n:
        raise ValueError(f"weights={path}: {len(src)} band names (from {source}) but {key!r} "
                         f"has {n} input channels")
    if src is not None and bands is not None:
        try:
            return kernel[:, band_selection(src, bands)].clone()
        except ValueError as err:
            raise ValueError(f"weights={path} (bands from {source}): {err}") from None
    if n == in_chans:
        return kernel
    if n == 3:
        from timm.models import adapt_input_conv

        return adapt_input_conv(in_chans, kernel)
    unknown = " and ".join(w for w, b in (("bands", bands), ("weights_bands", src)) if b is None)
    raise ValueError(
        f"weights={path}: {key!r} has {n} input channels, the model {in_chans}; channels are "
        f"matched by band name, but {unknown} {'is' if ' and ' not in unknown else 'are'} unknown: "
        f"pass {unknown} (the file's bands can also be stored in {sidecar_path(path)} as "
        '{"bands": [...]})'
    )


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | Path | None = None,
    image_size: int | None = None,
    bands: Sequence[str] | None = None,
    weights_bands: Sequence[str] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a classifier by name: any backbone of either paper, any number of input bands.

    Args:
        name: A key of :data:`MODELS`.
        num_classes: Output classes.
        in_chans: Input bands (3 RGB, 6 paper B bands, 13 EuroSAT MS).
        pretrained: ImageNet weights from the timm hub (needs a network connection).
        weights: Path of a local state dict / timm checkpoint instead of the hub.
        image_size: Input size; only Swin's architecture depends on it (multiple of 32).
        bands: Names of the input bands, in channel order (``len(bands) == in_chans``); with
            ``weights``, the file's first-conv kernels are selected by these names.
        weights_bands: The weights file's bands when it does not record them (see
            :func:`load_weights`).
        **kwargs: Extra builder options, e.g. ``depth``/``kernel_size`` for ``lightweight_cnn``.

    Returns:
        The model, in train mode, on the CPU.

    """
    builder = get_model_builder(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    _check_image_size(name, image_size)
    if pretrained and weights not in (None, ""):
        raise ValueError("give either pretrained=True or weights=<path>, not both")
    if bands is not None and len(bands) != in_chans:
        raise ValueError(f"bands names {len(bands)} bands but in_chans is {in_chans}")
    try:
        model = builder(num_classes, in_chans, bool(pretrained), image_size, **kwargs)
    except (ValueError, TypeError):
        raise
    except Exception as err:  # hub download failures come as many exception types
        if pretrained:
            raise RuntimeError(
                f"pretrained=True: could not fetch ImageNet weights for {name!r} from the timm "
                f"hub ({type(err).__name__}: {err}). Without network access, pass "
                "weights=<local file> or pretrained=False"
            ) from err
        raise
    if weights not in (None, ""):
        load_weights(model, weights, bands=bands, weights_bands=weights_bands)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Count the (trainable) parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
