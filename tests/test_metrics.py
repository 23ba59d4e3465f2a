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


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def test_ndvi_error_figure_ticks_do_not_overlap_and_an_empty_bin_is_said():
    """Paper B's default bins (many, narrow): each tick label has its own room; an empty bin is labelled."""
    rng = np.random.default_rng(0)
    ndvi = np.concatenate([rng.uniform(-0.2, 0.1, 60), rng.uniform(0.4, 0.9, 60)])  # nothing in 0.1-0.4
    y = (ndvi > 0.3).astype(int)
    p = np.where(rng.random(120) < 0.2, 1 - y, y)
    t = metrics.ndvi_binned_errors(ndvi, y, p)
    assert (t["n"] == 0).any()
    for tables in (t, {"lightweight_cnn": t, "random_forest": t, "svm": t}):
        fig = metrics.plot_ndvi_errors(tables, ndvi, y == p)
        fig.canvas.draw()
        ax = fig.axes[0]
        r = fig.canvas.get_renderer()
        boxes = [lb.get_window_extent(r) for lb in ax.get_xticklabels() if lb.get_text()]
        assert len(boxes) == len(t) and not _overlaps(boxes), _overlaps(boxes)
        assert sum("no test" in tx.get_text() for tx in ax.texts) == int((t["n"] == 0).sum())
        right = int(((t["n"] > 0) & (t["error_rate"] == 0)).sum())  # bins every model got right
        assert sum("no\nerrors" in tx.get_text() for tx in ax.texts) == right
        assert "(" in ax.get_ylabel() and "n = test patches" in ax.get_xlabel()
        plt.close(fig)


def test_band_axes_carry_their_units_and_sizes_are_rounded():
    from lcc_utils import plots

    stats = pd.DataFrame({"band": ["R", "G", "B"], "mean": [0.4, 0.4, 0.3], "std": [0.1, 0.1, 0.1]})
    assert plots.plot_band_statistics(stats).axes[0].get_ylabel() == "pixel value / 255 (8-bit RGB)"
    stats["band"] = ["B02", "B03", "B8A"]
    assert plots.plot_band_statistics(stats).axes[0].get_ylabel() == "reflectance (DN / 10000)"
    from lcc_utils.compression.explorer import _kb

    assert _kb(4726610) == "4.73 MB" and _kb(12345) == "12.3 kB"
    plt.close("all")
