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


def test_ndvi_binned_errors_wilson_interval_and_default_edges():
    t = metrics.ndvi_binned_errors([0.16, 0.17, 0.2, 0.3], [0, 0, 0, 0], [1, 0, 0, 0])
    # paper B's transitional range 0.15-0.25 is two bins of the default edges
    assert {0.15, 0.2, 0.25} <= set(t["lo"])
    row = t[t["lo"] == 0.15].iloc[0]
    assert (row["n"], row["n_wrong"]) == (2, 1)
    assert row["ci95_lo"] == pytest.approx(0.0945, abs=1e-3)  # Wilson 1/2
    assert row["ci95_hi"] == pytest.approx(0.9055, abs=1e-3)


def _clustered(n_img=100, per=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_img * per)
    return y, np.repeat(np.arange(n_img), per)


def test_cluster_bootstrap_matches_sklearn_and_widens_with_clusters():
    from sklearn.metrics import cohen_kappa_score, f1_score

    y, cl = _clustered()
    rng = np.random.default_rng(1)
    preds = np.where(rng.random((3, len(y))) < 0.9, y, 1 - y)
    t = metrics.cluster_bootstrap(y, preds, cl, n_classes=2, n_boot=500)
    assert t.loc["oa", "estimate"] == pytest.approx(np.mean([np.mean(p == y) for p in preds]))
    assert t.loc["kappa", "estimate"] == pytest.approx(np.mean([cohen_kappa_score(y, p) for p in preds]))
    assert t.loc["macro_f1", "estimate"] == pytest.approx(np.mean([f1_score(y, p, average="macro") for p in preds]))
    assert t.loc["oa", "ci95_lo"] < t.loc["oa", "estimate"] < t.loc["oa", "ci95_hi"]
    assert t.loc["oa", "n_clusters"] == 100
    # the same errors with whole images wrong together: fewer independent units, a wider interval
    img_wrong = np.repeat(rng.random(100) < 0.1, 4)
    together = np.where(img_wrong, 1 - y, y)
    spread = np.where(rng.permutation(img_wrong), 1 - y, y)
    w_img = metrics.cluster_bootstrap(y, together, cl, 2, n_boot=500).loc["oa"]
    w_patch = metrics.cluster_bootstrap(y, spread, cl, 2, n_boot=500).loc["oa"]
    assert (w_img.ci95_hi - w_img.ci95_lo) > 1.3 * (w_patch.ci95_hi - w_patch.ci95_lo)
    with pytest.raises(ValueError, match="one cluster id per test patch"):
        metrics.cluster_bootstrap(y, preds, cl[:-1], 2)


def test_cluster_paired_test_counts_images_not_patches():
    # the case: discordant patches concentrated in few images
    y, cl = _clustered(n_img=130)
    a = y.copy()
    b = y.copy()
    b[: 4 * 11] = 1 - y[: 4 * 11]  # B wrong on all 4 quadrants of 11 images
    a[4 * 11: 4 * 14] = 1 - y[4 * 11: 4 * 14]  # A wrong on 3 images
    r = metrics.cluster_paired_test(y, a, b, cl, n_boot=1000)
    assert (r["clusters_a_better"], r["clusters_b_better"]) == (11, 3)
    assert r["sign_p"] == pytest.approx(0.0574, abs=1e-3)  # exact binomial 11 vs 3
    assert metrics.mcnemar(y, a, b)["p_value"] < 0.001  # 44 vs 12 patches: the patch level overstates
    assert r["diff_pp"] == pytest.approx(100 * 32 / 520)
    assert r["ci95_lo_pp"] < r["diff_pp"] < r["ci95_hi_pp"]
    df = metrics.pairwise_cluster_tests(y, {"a": a, "b": b, "c": y}, cl, n_boot=200)
    assert len(df) == 3
    assert df["sign_p_holm"].tolist() == pytest.approx(list(metrics.holm(df["sign_p"])))
    assert "patch_level_mcnemar_p" in df
    with pytest.raises(ValueError, match="not in preds"):
        metrics.pairwise_cluster_tests(y, {"a": a, "b": b}, cl, pairs=[("a", "z")])


def test_binned_error_rates_and_range_contrast():
    y, cl = _clustered(n_img=50)
    v = np.repeat(np.linspace(-0.2, 0.8, 50), 4)
    inside = (v >= 0.15) & (v < 0.25)
    p = np.where(inside, 1 - y, y)  # every error inside the range
    t = metrics.binned_error_rates(v, y, p, cl, n_boot=200)
    assert t["n"].sum() == len(y)
    assert t.loc[t["lo"].isin([0.15, 0.2]), "error_rate"].eq(1.0).all()
    assert t.loc[~t["lo"].isin([0.15, 0.2]) & (t["n"] > 0), "error_rate"].eq(0.0).all()
    assert t["share_of_errors"].sum() == pytest.approx(1.0)
    c = metrics.range_error_contrast(v, y, p, cl, 0.15, 0.25, n_boot=200)
    assert c["rate_in"] == 1.0 and c["rate_out"] == 0.0 and c["ci95_lo_pp"] > 0
    assert c["share_of_errors_in"] == 1.0
