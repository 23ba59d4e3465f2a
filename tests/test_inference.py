"""The one prediction loop shared by training, coresets, paper B and compression (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lcc_utils import inference, training
from lcc_utils.inference import predict


def tiny_model(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, classes))


def batches(n: int = 3, b: int = 5, with_index: bool = True):
    g = torch.Generator().manual_seed(1)
    out = []
    for k in range(n):
        x, y = torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 4, (b,), generator=g)
        out.append((x, y, torch.arange(b) + 100 * k) if with_index else (x, y))
    return out


class FixedLogits(nn.Module):
    """Returns the same logits for every image: two classes one rounding step apart."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 1e-9, -3.0]]).expand(len(x), 3)


def test_probs_labels_and_indices():
    loader = batches()
    probs, labels, idx = predict(tiny_model(), loader, "cpu")
    assert probs.shape == (15, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert labels.tolist() == torch.cat([b[1] for b in loader]).tolist()
    assert idx.tolist() == [100 * k + i for k in range(3) for i in range(5)]


def test_logits_are_the_models_outputs_exactly():
    model, loader = tiny_model(), batches()
    logits, _, _ = predict(model, loader, "cpu", output="logits")
    with torch.no_grad():
        expected = torch.cat([model(b[0]) for b in loader]).numpy()
    assert np.array_equal(logits, expected)


def test_logits_keep_a_prediction_that_softmax_rounds_away():
    # 0 and 1e-9 give equal fp32 probabilities, so argmax(probs) says class 0; the model says 1
    probs, _, _ = predict(FixedLogits(), batches(n=1), "cpu")
    logits, _, _ = predict(FixedLogits(), batches(n=1), "cpu", output="logits")
    assert probs.argmax(1).tolist() == [0] * 5 and logits.argmax(1).tolist() == [1] * 5


def test_max_images_stops_mid_batch_and_pairs_without_index():
    loader = batches(with_index=False)
    full, labels, idx = predict(tiny_model(), loader, "cpu")
    part, part_labels, part_idx = predict(tiny_model(), loader, "cpu", max_images=7)
    assert part.shape == (7, 4) and np.array_equal(part, full[:7])
    assert np.array_equal(part_labels, labels[:7])
    assert idx.tolist() == [-1] * 15 and part_idx.tolist() == [-1] * 7


def test_progress_bar_does_not_change_the_numbers():
    a = predict(tiny_model(), batches(), "cpu", progress=True, desc="test")
    b = predict(tiny_model(), batches(), "cpu")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match="choose one of: logits, probs"):
        predict(tiny_model(), batches(), "cpu", output="labels")
    with pytest.raises(ValueError, match="max_images must be an integer >= 0"):
        predict(tiny_model(), batches(), "cpu", max_images=-1)
    with pytest.raises(ValueError, match="yielded no batches"):
        predict(tiny_model(), [], "cpu")
    with pytest.raises(ValueError, match="choose one of: auto, cpu, cuda, cuda:N"):
        predict(tiny_model(), batches(), "tpu")


def test_training_reexports_the_one_predict():
    assert training.predict is inference.predict
    assert training.resolve_device is inference.resolve_device
