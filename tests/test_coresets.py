import numpy as np
import pandas as pd
import pytest

from lcc_utils.coresets import (
    CORESETS,
    CoresetScores,
    forgetting_scores,
    get_coreset_method,
    load_coreset,
    load_scores,
    margin_scores,
    save_coreset,
    save_scores,
    select_coreset,
)
from lcc_utils.paper_a import protocol_differences, table1


def test_registry_error_lists_choices():
    assert set(CORESETS) == {"random", "forgetting", "margin"}
    with pytest.raises(ValueError, match="unknown coreset 'forgeting'; choose one of: forgetting, "
                                         "margin, random"):
        get_coreset_method("forgeting")


def test_forgetting_counts_learned_to_forgotten_transitions():
    c = np.array([
        [1, 0, 1, 0, 1],
        [0, 0, 1, 1, 1],
        [1, 0, 1, 0, 1],
        [0, 0, 1, 1, 0],
    ], dtype=bool)
    # sample 0: 1->0 twice; 1: never learned -> epochs + 1 = 5; 2: never forgotten;
    # 3: learned at epoch 2, forgotten at 3; 4: forgotten at the last epoch
    assert forgetting_scores(c).tolist() == [2.0, 5.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="correctness must be"):
        forgetting_scores(np.zeros(3))


def test_margin_is_top1_minus_top2():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6]])
    assert np.allclose(margin_scores(p), [0.5, 0.0, 0.3])
    with pytest.raises(ValueError, match="probs must be"):
        margin_scores(np.ones(3))


def labels_and_scores(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), [80, 60, 40, 20])
    return labels, rng.random(n)


@pytest.mark.parametrize("method", ["random", "forgetting", "margin"])
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
def test_balanced_selection_keeps_class_shares(method, fraction):
    labels, scores = labels_and_scores()
    sel = select_coreset(scores, fraction, labels, method, seed=0)
    assert len(sel) == round(200 * fraction)
    assert np.all(np.diff(sel) > 0)  # sorted, unique
    counts = np.bincount(labels[sel], minlength=4)
    assert counts.min() >= 1
    expected = np.array([80, 60, 40, 20]) * fraction
    assert np.abs(counts - expected).max() <= 1


def test_forgetting_keeps_highest_margin_keeps_lowest():
    labels = np.zeros(10, dtype=int)
    scores = np.arange(10, dtype=float)
    assert select_coreset(scores, 0.3, labels, "forgetting").tolist() == [7, 8, 9]
    assert select_coreset(scores, 0.3, labels, "margin").tolist() == [0, 1, 2]


def test_ties_broken_by_seed_and_deterministic():
    labels = np.zeros(100, dtype=int)
    scores = np.zeros(100)
    a = select_coreset(scores, 0.1, labels, "forgetting", seed=0)
    b = select_coreset(scores, 0.1, labels, "forgetting", seed=0)
    c = select_coreset(scores, 0.1, labels, "forgetting", seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unbalanced_takes_global_top():
    labels, scores = labels_and_scores()
    sel = select_coreset(scores, 0.05, labels, "forgetting", balanced=False)
    assert set(sel) == set(np.argsort(-scores)[:10])


def test_full_fraction_is_everything():
    labels, scores = labels_and_scores()
    assert select_coreset(scores, 1.0, labels, "margin").tolist() == list(range(200))


def test_selection_errors():
    labels, scores = labels_and_scores()
    for bad in (0, -0.1, 1.5, "0.1"):
        with pytest.raises(ValueError, match="fraction="):
            select_coreset(scores, bad, labels, "random")
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        select_coreset(scores, 0.01, labels, "random")  # 2 images, 4 classes
    with pytest.raises(ValueError, match="unknown coreset 'best'"):
        select_coreset(scores, 0.1, labels, "best")
    with pytest.raises(ValueError, match="needs scores"):
        select_coreset(None, 0.1, labels, "margin")
    with pytest.raises(ValueError, match="scores has shape"):
        select_coreset(scores[:5], 0.1, labels, "margin")
    with pytest.raises(ValueError, match="NaN"):
        select_coreset(np.full(200, np.nan), 0.1, labels, "margin")


def test_index_files_byte_identical(tmp_path):
    labels, scores = labels_and_scores()
    paths = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        sel = select_coreset(scores, 0.1, labels, "random", seed=seed)
        paths.append(save_coreset(sel, tmp_path / f"{run}.json", method="random",
                                  fraction=0.1, seed=seed))
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b and a != c
    assert len(load_coreset(paths[0])) == 20
    with pytest.raises(FileNotFoundError, match="coreset index file not found"):
        load_coreset(tmp_path / "missing.json")


def test_scores_roundtrip_and_missing(tmp_path):
    sc = CoresetScores("margin", np.array([0.1, 0.5]), np.array([3, 7]), np.array([0, 1]),
                       {"seed": 0, "seconds": 1.5})
    path = save_scores(sc, tmp_path / "s.npz")
    back = load_scores(path)
    assert back.method == "margin" and back.meta["seconds"] == 1.5
    assert np.array_equal(back.indices, [3, 7])
    with pytest.raises(FileNotFoundError, match="scores file not found"):
        load_scores(tmp_path / "none.npz")


def test_table1_layout_never_invents_paper_numbers():
    rows = []
    for method, acc in (("random", 0.80), ("forgetting", 0.82), ("margin", 0.84)):
        for seed in range(3):
            rows.append({"model": "resnet18", "dataset": "eurosat", "fraction": 0.05,
                         "coreset": method, "seed": seed, "test_accuracy": acc + 0.01 * seed,
                         "image_size": 64, "epochs": 3, "pretrained": False, "device": "cpu"})
    rows.append({"model": "resnet18", "dataset": "eurosat", "fraction": 1.0, "coreset": "random",
                 "seed": 0, "test_accuracy": 0.95, "image_size": 32, "epochs": 3,
                 "pretrained": False, "device": "cpu"})
    df = pd.DataFrame(rows)
    t = table1(df)
    assert len(t) == 2
    five = t[t["fraction"] == 0.05].iloc[0]
    assert five["margin"] == "85.00 ± 1.00" and five["margin_n"] == 3
    assert t["paper"].isna().all()
    full = t[t["fraction"] == 1.0].iloc[0]
    assert full["forgetting"] == "95.00" and full["forgetting_n"] == 1  # one seed: no spread shown
    proto = protocol_differences(df)
    assert proto.set_index("setting").loc["image_size", "ours"] == "32, 64"
    with pytest.raises(ValueError, match="lacks columns"):
        table1(df.drop(columns="seed"))


def tiny_dataset():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    images = rng.normal(0, 1, (90, 8, 8, 3)).astype(np.float32)
    images[..., 1] += labels[:, None, None]
    ds = SimpleNamespace(name="tiny", hash="abcdef0123456789", classes=["a", "b", "c"],
                         labels=labels.astype(np.int64), images=images, bands=("x", "y", "z"))
    split = SimpleNamespace(train=np.arange(60), val=np.arange(60, 75), test=np.arange(75, 90),
                            hash="0123456789abcdef", seed=0, kind="stratified")
    return ds, split


def test_score_dataset_with_a_proxy_and_cache(tmp_path, monkeypatch):
    from lcc_utils.coresets import coreset_indices, get_scores, score_dataset

    monkeypatch.setenv("LCC_CACHE_DIR", str(tmp_path))
    ds, split = tiny_dataset()
    out = score_dataset(ds, split, "forgetting", scoring_model="lightweight_cnn",
                        scoring_epochs=3, image_size=None, device="cpu", batch_size=16)
    assert set(out) == {"forgetting", "margin"}
    f, m = out["forgetting"], out["margin"]
    assert f.scores.shape == (60,) and f.scores.max() <= 4  # epochs + 1 for never learned
    assert np.all((m.scores >= 0) & (m.scores <= 1))
    assert f.meta["seconds"] > 0 and f.meta["scoring_epochs"] == 3
    again = score_dataset(ds, split, "margin", scoring_model="lightweight_cnn",
                          scoring_epochs=3, image_size=None, device="cpu", batch_size=16)
    assert np.array_equal(again["margin"].scores, m.scores)  # same seed, same scores
    sc, path, computed = get_scores(ds, split, "margin", "lightweight_cnn", 2, None, 0, "cpu")
    assert computed and path.exists()
    assert path.with_name(path.name.replace("margin", "forgetting")).exists()
    _, _, computed = get_scores(ds, split, "forgetting", "lightweight_cnn", 2, None, 0, "cpu")
    assert not computed
    idx, info = coreset_indices(ds, split, "margin", 0.1, seed=0, scoring_model="lightweight_cnn",
                                scoring_epochs=2, image_size=None, device="cpu")
    assert len(idx) == 6 and np.isin(idx, split.train).all() and not info["scores_computed"]


def test_score_plots_return_figures():
    from matplotlib.figure import Figure

    from lcc_utils.coresets import plot_score_distributions

    labels = np.repeat(np.arange(3), 20)
    rng = np.random.default_rng(0)
    counts = CoresetScores("forgetting", rng.integers(0, 5, 60).astype(float), np.arange(60),
                           labels, {"scoring_epochs": 3, "dataset": "tiny"})
    fig = plot_score_distributions(counts, ["a", "b", "c"])
    assert isinstance(fig, Figure)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["0", "1", "2", "3", "never learned"]  # epochs + 1 = 4
    margins = CoresetScores("margin", rng.random(60), np.arange(60), labels, {})
    assert isinstance(plot_score_distributions(margins, ["a", "b", "c"]), Figure)
