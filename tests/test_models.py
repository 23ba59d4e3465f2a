import pytest
import torch

from lcc_utils import models
from lcc_utils.models import LightweightCNN, count_parameters, create_model, describe_weights

TIMM_MODELS = ["convnext_tiny", "swin_tiny", "efficientnetv2_s", "regnety_032", "resnet18"]


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'; choose one of: convnext_tiny"):
        create_model("resnet19", num_classes=10)


def test_registry_has_both_papers_models():
    assert set(models.MODELS) == {*TIMM_MODELS, "lightweight_cnn", "plain_cnn", "plain_cnn_small"}


def test_plain_cnn_is_paper_a_cpu_stand_in():
    """1.2 M parameters at width 32, its proxy a quarter of the multiply-adds; bands and sizes free."""
    import torch

    big = models.create_model("plain_cnn", num_classes=10)
    small = models.create_model("plain_cnn_small", num_classes=10)
    assert models.count_parameters(big) == 1_175_786
    assert models.count_parameters(small) == 295_290
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in big.modules())
    ms = models.create_model("plain_cnn", num_classes=2, in_chans=13)
    assert ms(torch.zeros(2, 13, 16, 16)).shape == (2, 2)
    with pytest.raises(ValueError, match="pretrained=True"):
        models.create_model("plain_cnn", num_classes=10, pretrained=True)


def test_lightweight_cnn_baseline_under_150k_params_with_six_bands():
    model = create_model("lightweight_cnn", num_classes=2, in_chans=6)
    n = count_parameters(model)
    # 3 blocks 32/64/128 of 3x3 convs + linear(128, 2): 1,760 + 18,496 + 73,856 + 258
    assert n == 94_370
    assert n < 150_000


@pytest.mark.parametrize(
    "kwargs, n_convs, kernel",
    [({"depth": 2}, 2, 3), ({}, 3, 3), ({"kernel_size": 5}, 3, 5), ({"depth": 4}, 4, 3)],
)
def test_lightweight_cnn_ablation_variants(kwargs, n_convs, kernel):
    torch.manual_seed(0)
    model = create_model("lightweight_cnn", num_classes=2, in_chans=6, **kwargs)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == n_convs
    assert convs[0].kernel_size == (kernel, kernel)
    assert model(torch.zeros(2, 6, 32, 32)).shape == (2, 2)


def test_lightweight_cnn_bad_config():
    with pytest.raises(ValueError, match="filters has 2 entries but depth is 3"):
        LightweightCNN(filters=(8, 16), depth=3)
    with pytest.raises(ValueError, match="kernel_size"):
        LightweightCNN(kernel_size=4)
    with pytest.raises(ValueError, match="pretrained=True"):
        create_model("lightweight_cnn", num_classes=2, pretrained=True)


@pytest.mark.parametrize("name", TIMM_MODELS + ["lightweight_cnn"])
@pytest.mark.parametrize("in_chans", [3, 6, 13])
def test_forward_shapes_any_bands(name, in_chans):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=in_chans, image_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_swin_at_64px_and_bad_size():
    model = create_model("swin_tiny", num_classes=3, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="image_size=100 is not supported for swin_tiny"):
        create_model("swin_tiny", num_classes=3, image_size=100)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        create_model("resnet18", num_classes=3, image_size=0)


def test_weights_file_roundtrip_and_band_adaptation(tmp_path):
    torch.manual_seed(0)
    src = create_model("resnet18", num_classes=1000, in_chans=3)
    path = tmp_path / "rgb_imagenet_like.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    # 13 bands and 10 classes: first conv adapted, classifier left at random init
    model = create_model("resnet18", num_classes=10, in_chans=13, weights=path)
    assert model.conv1.weight.shape == (64, 13, 7, 7)
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    desc = describe_weights(weights=path)
    assert desc.startswith(f"file:{path} sha256:") and len(desc.split("sha256:")[1]) == 64
    assert describe_weights() == "random init"
    assert describe_weights(pretrained=True) == "imagenet (timm hub)"


def test_bad_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_model("resnet18", num_classes=2, weights=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read this file"):
        create_model("resnet18", num_classes=2, weights=junk)
    other = tmp_path / "cnn.pt"
    torch.save(create_model("lightweight_cnn", num_classes=2).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit this model"):
        create_model("resnet18", num_classes=2, weights=other)
    with pytest.raises(ValueError, match="either pretrained=True or weights"):
        create_model("resnet18", num_classes=2, pretrained=True, weights=other)
