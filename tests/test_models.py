import json

import pytest
import torch

from lcc_utils import models
from lcc_utils.constants import EUROSAT_MS_BANDS, PAPER_B_BANDS, S2_ESA_BAND_ORDER
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
    assert desc.startswith(f"file:{path} sha256:") and len(desc.split("sha256:")[1].split()[0]) == 64
    assert desc.endswith(" bands: unknown")  # an ImageNet file names no bands: RGB-adapted as before
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


# --------------------------------------------------------------------------- weights by band name
#: torchgeo's spelling of SSL4EO-S12's 13 Sentinel-2 bands (B8A ninth), as a sidecar would copy it.
TORCHGEO_S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8a", "B9", "B10", "B11", "B12"]
#: Where paper B's six bands sit in that 13-band order: B02, B03, B04, B08, B11, B12.
PAPER_B_IN_ESA = [1, 2, 3, 7, 11, 12]


def _assert_rest_equal(model, src_state, skip):
    own = model.state_dict()
    for key, value in src_state.items():
        if key not in skip:
            assert torch.equal(own[key], value), key


def test_canonical_band_spellings():
    assert [models.canonical_band(b) for b in ("B1", "b02", "B8a", " B12 ", "R", "vv")] == \
        ["B01", "B02", "B8A", "B12", "R", "VV"]


@pytest.mark.parametrize("name, conv", [("lightweight_cnn", "features.0"), ("plain_cnn", "features.0"),
                                        ("resnet18", "conv1"), ("convnext_tiny", "stem.0")])
def test_first_conv_found_for_own_and_timm_models(name, conv):
    found, module = models.first_conv(create_model(name, num_classes=2, in_chans=6))
    assert found == conv and module.in_channels == 6


def test_13_band_checkpoint_into_6_band_lightweight_cnn_by_name(tmp_path):
    """Kernels of B02,B03,B04,B08,B11,B12 are picked out of a 13-band file; the rest loads as is."""
    torch.manual_seed(0)
    src = create_model("lightweight_cnn", num_classes=10, in_chans=13).state_dict()
    path = tmp_path / "s2_13.pt"
    torch.save({"state_dict": src, "bands": list(S2_ESA_BAND_ORDER)}, path)
    model = create_model("lightweight_cnn", num_classes=2, in_chans=6, bands=PAPER_B_BANDS, weights=path)
    loaded = model.state_dict()["features.0.weight"]
    assert loaded.shape == (32, 6, 3, 3)
    assert torch.equal(loaded, src["features.0.weight"][:, PAPER_B_IN_ESA])
    assert torch.equal(loaded[:, 3], src["features.0.weight"][:, 7])  # B08, 4th of ours, 8th of theirs
    # the 10-class head does not fit 2 classes: left at random init; everything else equal
    _assert_rest_equal(model, src, skip={"features.0.weight", "classifier.weight", "classifier.bias"})
    desc = describe_weights(weights=path, bands=PAPER_B_BANDS)
    assert f"bands:{','.join(S2_ESA_BAND_ORDER)} (13, from checkpoint)" in desc
    assert desc.endswith("first conv: selected B02,B03,B04,B08,B11,B12 of 13 by name")


def test_13_band_headless_checkpoint_with_sidecar_into_6_band_resnet18(tmp_path):
    """A torchgeo-like file: timm ResNet-18 state dict, no ``fc``, band names only in a sidecar."""
    torch.manual_seed(1)
    src = create_model("resnet18", num_classes=10, in_chans=13).state_dict()
    src = {k: v for k, v in src.items() if not k.startswith("fc.")}
    path = tmp_path / "resnet18_sentinel2_all_moco.pth"
    torch.save(src, path)
    with pytest.raises(ValueError, match=r"'conv1.weight' has 13 input channels, the model 6.*"
                                         r"weights_bands is unknown: pass weights_bands"):
        create_model("resnet18", num_classes=2, in_chans=6, bands=PAPER_B_BANDS, weights=path)
    models.sidecar_path(path).write_text(json.dumps({"bands": TORCHGEO_S2_BANDS}))
    model = create_model("resnet18", num_classes=2, in_chans=6, bands=PAPER_B_BANDS, weights=path)
    assert torch.equal(model.conv1.weight, src["conv1.weight"][:, PAPER_B_IN_ESA])
    _assert_rest_equal(model, src, skip={"conv1.weight"})
    assert model.fc.weight.shape == (2, 512)
    desc = describe_weights(weights=path, bands=PAPER_B_BANDS)
    assert "(13, from resnet18_sentinel2_all_moco.pth.json)" in desc and "B8A" in desc
    assert "selected B02,B03,B04,B08,B11,B12 of 13" in desc


def test_same_band_count_reordered_by_name(tmp_path):
    """ESA order (B8A 9th) into EuroSAT MS file order (B8A last): same count, kernels reordered."""
    torch.manual_seed(2)
    src = create_model("plain_cnn_small", num_classes=10, in_chans=13).state_dict()
    path = tmp_path / "esa.pt"
    torch.save(src, path)
    model = create_model("plain_cnn_small", num_classes=10, in_chans=13, bands=EUROSAT_MS_BANDS,
                         weights=path, weights_bands=S2_ESA_BAND_ORDER)
    loaded = model.state_dict()["features.0.weight"]
    assert torch.equal(loaded[:, 12], src["features.0.weight"][:, 8])  # B8A
    assert torch.equal(loaded[:, 8], src["features.0.weight"][:, 9])  # B09
    assert not torch.equal(loaded, src["features.0.weight"])
    _assert_rest_equal(model, src, skip={"features.0.weight"})
    assert "reordered" in describe_weights(weights=path, bands=EUROSAT_MS_BANDS,
                                           weights_bands=S2_ESA_BAND_ORDER)


def test_band_errors_name_the_problem(tmp_path):
    torch.manual_seed(3)
    six = create_model("lightweight_cnn", num_classes=2, in_chans=6).state_dict()
    best = tmp_path / "best.pt"  # what paper B's training writes: bands inside its params
    torch.save({"model": six, "epoch": 3, "params": {"bands": list(PAPER_B_BANDS)}}, best)
    other = ("B02", "B03", "B04", "B05", "B11", "B12")
    with pytest.raises(ValueError, match=r"band\(s\) B05 of the model are not among the weights' bands; "
                                         r"available: B02, B03, B04, B08, B11, B12"):
        create_model("lightweight_cnn", num_classes=2, in_chans=6, bands=other, weights=best)
    with pytest.raises(ValueError, match="B05 of the model"):
        describe_weights(weights=best, bands=other)
    # a model whose bands are unknown cannot take 6 named kernels into 4 channels
    with pytest.raises(ValueError, match="bands is unknown: pass bands"):
        create_model("lightweight_cnn", num_classes=2, in_chans=4, weights=best)
    with pytest.raises(ValueError, match="4 band names .from weights_bands argument. but 'features.0.weight' has 6"):
        create_model("lightweight_cnn", num_classes=2, in_chans=4, bands=PAPER_B_BANDS[:4],
                     weights=best, weights_bands=PAPER_B_BANDS[:4])
    with pytest.raises(ValueError, match="bands names 5 bands but in_chans is 6"):
        create_model("lightweight_cnn", num_classes=2, in_chans=6, bands=PAPER_B_BANDS[:5])
    with pytest.raises(ValueError, match="names a band twice: B02"):
        models.band_selection(["B2", "B02"], ["B02"])
    models.sidecar_path(best).write_text(json.dumps({"bands": list(S2_ESA_BAND_ORDER[:6])}))
    with pytest.raises(ValueError, match="fix or remove the sidecar"):
        create_model("lightweight_cnn", num_classes=2, in_chans=6, bands=PAPER_B_BANDS, weights=best)
    # same bands, same order: loaded as stored
    models.sidecar_path(best).unlink()
    model = create_model("lightweight_cnn", num_classes=2, in_chans=6, bands=PAPER_B_BANDS, weights=best)
    _assert_rest_equal(model, six, skip=set())
    assert describe_weights(weights=best, bands=PAPER_B_BANDS).endswith("first conv: bands match")
