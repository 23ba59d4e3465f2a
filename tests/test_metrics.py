"""Unit tests for lcc_utils.metrics on tiny synthetic labels (fixed seeds)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lcc_utils import metrics  # noqa: E402

CLASSES = ["a", "b", "c"]


def test_classification_metrics_hand_computed():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 1, 0])
    m = metrics.classification_metrics(y, p, CLASSES)
    assert m["oa"] == pytest.approx(4 / 6)
    assert m["n"] == 6
    # class a: tp 2, predicted 3, support 3
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    # class c never predicted: precision 0 (not NaN), recall 0
    assert m["per_class"]["c"]["precision"] == 0.0
    assert m["per_class"]["c"]["support"] == 1
    # kappa: po = 4/6, pe = (3*3 + 2*3 + 1*0)/36
    pe = (3 * 3 + 2 * 3 + 0) / 36
    assert m["kappa"] == pytest.approx((4 / 6 - pe) / (1 - pe))
    f1 = [m["per_class"][c]["f1"] for c in CLASSES]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    table = metrics.per_class_table(m)
    assert list(table.index) == CLASSES and table.loc["b", "support"] == 2


def test_classification_metrics_bad_input_named():
    with pytest.raises(ValueError, match="y_pred"):
        metrics.classification_metrics([0, 1], [0, 3], CLASSES)
    with pytest.raises(ValueError, match="same test patches"):
        metrics.classification_metrics([0, 1, 1], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="y_true is empty"):
        metrics.classification_metrics([], [], CLASSES)
    with pytest.raises(ValueError, match="integer"):
        metrics.classification_metrics([0.5, 1], [0, 1], CLASSES)


def test_confusion_and_plot():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 2, 2, 0])
    cm = metrics.confusion(y, p, CLASSES)
    assert cm.loc["a", "b"] == 1 and cm.loc["c", "c"] == 2
    assert cm.to_numpy().sum() == 6
    fig = metrics.plot_confusion(cm)
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_mcnemar_exact_and_chi2():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    a = y.copy()
    b = y.copy()
    # A wrong on 5 patches, B wrong on 15 others -> b = 15 (A right, B wrong), c = 5
    a[:5] = 1 - a[:5]
    b[5:20] = 1 - b[5:20]
    r = metrics.mcnemar(y, a, b)
    assert (r["b"], r["c"]) == (15, 5)
    assert r["method"] == "exact binomial"
    from scipy.stats import binomtest

    assert r["p_value"] == pytest.approx(binomtest(15, 20, 0.5).pvalue)
    r2 = metrics.mcnemar(y, a, b, exact=False)
    assert r2["statistic"] == pytest.approx((10 - 1) ** 2 / 20)
    # symmetric p-value when models swap
    assert metrics.mcnemar(y, b, a)["p_value"] == pytest.approx(r["p_value"])
    # identical predictions: no discordant pair, p = 1
    assert metrics.mcnemar(y, a, a)["p_value"] == 1.0
    # many discordant pairs -> chi-square branch
    b2 = y.copy()
    b2[5:60] = 1 - b2[5:60]
    assert metrics.mcnemar(y, a, b2)["method"].startswith("chi-square")
    assert metrics.mcnemar(y, a, b2)["p_value"] < 1e-6


def test_pairwise_mcnemar_all_pairs():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 50)
    preds = {k: np.where(rng.random(50) < 0.8, y, (y + 1) % 3) for k in ("m1", "m2", "m3")}
    df = metrics.pairwise_mcnemar(y, preds)
    assert len(df) == 3
    assert set(zip(df.model_a, df.model_b, strict=True)) == {
        ("m1", "m2"), ("m1", "m3"), ("m2", "m3")
    }
    assert df["p_value"].between(0, 1).all()
    with pytest.raises(ValueError, match="at least two"):
        metrics.pairwise_mcnemar(y, {"m1": preds["m1"]})


def test_ndvi_binned_errors_counts():
    ndvi = np.array([-0.5, -0.1, 0.1, 0.5, 0.7, 1.0])
    y = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([0, 1, 1, 0, 1, 1])
    t = metrics.ndvi_binned_errors(ndvi, y, p, bins=[-1.0, 0.0, 0.6, 1.0])
    assert t["n"].tolist() == [2, 2, 2]
    assert t["n_wrong"].tolist() == [1, 1, 0]
    assert t["error_rate"].tolist() == pytest.approx([0.5, 0.5, 0.0])
    # 1.0 falls in the last (closed) bin; default bins cover [-1, 1]
    assert metrics.ndvi_binned_errors(ndvi, y, p)["n"].sum() == 6
    with pytest.raises(ValueError, match="outside the bin edges"):
        metrics.ndvi_binned_errors([1.5, 0.0], [0, 0], [0, 0], bins=[-1, 0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.ndvi_binned_errors([np.nan, 0.0], [0, 0], [0, 0])
    fig = metrics.plot_ndvi_errors({"x": t, "y": t}, ndvi, y == p)
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_summary_mean_std():
    s = metrics.summary_table({"LightweightCNN": {"oa": 0.9, "kappa": 0.8},
                               "Random forest": {"oa": 0.85}})
    assert s.loc["LightweightCNN", "paper_oa_%"] == 91.2
    assert s.loc["LightweightCNN", "delta_oa_pp"] == pytest.approx(90.0 - 91.2)
    assert np.isnan(s.loc["Random forest", "paper_oa_%"])
    runs = pd.DataFrame({"variant": ["A1"] * 3 + ["A2"] * 3,
                         "oa": [0.8, 0.9, 1.0, 0.5, 0.5, 0.5]})
    ms = metrics.mean_std(runs, "variant", ["oa"])
    assert ms.loc["A1", "oa_mean"] == pytest.approx(0.9)
    assert ms.loc["A1", "oa_std"] == pytest.approx(0.1)
    assert ms.loc["A2", "n"] == 3
    with pytest.raises(ValueError, match="lacks columns"):
        metrics.mean_std(runs, "seed", ["oa"])


def test_model_cost_helpers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 2))
    flops = metrics.count_flops(model, (6, 8, 8))
    assert flops == 2 * (6 * 9 * 4 * 64) + 2 * (256 * 2)
    ms = metrics.cpu_latency_per_patch(model, (6, 8, 8), batch_size=4, repeats=2)
    assert ms > 0
    assert model.training  # the caller's model is untouched
    with pytest.raises(ValueError, match="input_shape"):
        metrics.count_flops(model, (8, 8))
