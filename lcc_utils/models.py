"""One model factory for both papers: timm backbones (paper A) and the small CNN (paper B).

Every model in the project comes from :func:`create_model`, so a notebook, a test
or the compression stage swaps architectures by name only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lcc_utils.constants import PAPER_A_BACKBONES

# Swin's patch embedding (4 px) and three 2x patch mergings divide the image by 32.
# timm 1.0.31 itself accepts ANY img_size (checked for 8..256 px): it pads partial
# patches/windows and shrinks the 7x7 window to the last feature map (1x1 at 32 px,
# 2x2 at 64 px, 7x7 at 224 px). We accept only multiples of 32 so no stage pads and the
# architecture at 224 px is exactly the paper's (7 x 32); choice documented in README.
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


def describe_weights(pretrained: bool = False, weights: str | Path | None = None) -> str:
    """Say where a model's initial weights come from, as recorded in a run's params.

    Returns ``"random init"``, ``"imagenet (timm hub)"`` or ``"file:<path> sha256:<hex>"``.
    """
    if weights not in (None, ""):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"file:{path} sha256:{digest}"
    return "imagenet (timm hub)" if pretrained else "random init"


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


def load_weights(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load a local state dict or timm checkpoint into ``model``, adapting it when needed.

    Loaded manually (not through timm's ``pretrained_cfg_overlay``) so the same code
    handles timm files, our own ``best.pt`` and files for any ``in_chans``: the first
    convolution is adapted with timm's ``adapt_input_conv`` (ImageNet RGB kernels repeated
    and rescaled over 6 or 13 bands) and a classifier whose shape differs (1000 ImageNet
    classes vs ours) is left at its random init. Every other key must match exactly.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which one
        raise ValueError(f"weights={path}: cannot read this file ({err})") from err
    state = _extract_state_dict(obj, path)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first_conv = cfg.get("first_conv")
    classifiers = cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    skipped = []
    for key in list(state):
        if key not in own or state[key].shape == own[key].shape:
            continue
        if first_conv and key == f"{first_conv}.weight":
            from timm.models import adapt_input_conv

            state[key] = adapt_input_conv(own[key].shape[1], state[key])
        elif any(key.startswith(f"{c}.") for c in classifiers):
            skipped.append(key)
            del state[key]
        else:
            raise ValueError(
                f"weights={path}: shape of {key!r} is {tuple(state[key].shape)}, "
                f"model expects {tuple(own[key].shape)}"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(
            f"weights={path} does not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | Path | None = None,
    image_size: int | None = None,
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
        load_weights(model, weights)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Count the (trainable) parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
