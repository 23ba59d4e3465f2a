"""The frozen-feature linear probe and the in-project pretrained backbone (issue 21)."""

import numpy as np
import pandas as pd
import pytest
import torch

from lcc_utils import models, paper_a, probe, runs, trained


def test_percentile_counts_ties_half():
    assert probe.percentile_in(0.5, [0.1, 0.2, 0.5, 0.9]) == pytest.approx(62.5)  # 2 below + half a tie
    assert probe.percentile_in(1.0, [0.1, 0.2]) == 100.0
    assert probe.percentile_in(0.0, [0.1, 0.2]) == 0.0
    with pytest.raises(ValueError, match="at least one draw"):
        probe.percentile_in(0.3, [])


def test_feature_model_returns_the_pooled_features():
    net = models.create_model("plain_cnn", num_classes=7, image_size=32)
    width = net.classifier.in_features
    feats = probe.feature_model(net)(torch.randn(2, 3, 32, 32))
    assert width == 256 and feats.shape == (2, width)  # the plain CNN's last width, not its 7 classes


def _separable(n_per_class=40, dim=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(len(y), dim)) + 3.0 * np.eye(classes, dim)[y]
    return x, y


def test_probe_ranks_an_informative_coreset_above_random_draws():
    """Mislabel-free informative images vs a coreset of outliers: the percentiles say which is which."""
    x, y = _separable()
    rng = np.random.default_rng(1)
    pos = rng.permutation(len(y))
    train, test = np.sort(pos[:80]), np.sort(pos[80:])
    # a "selector" that keeps the images nearest their class centre, one that keeps the farthest
    centre = 3.0 * np.eye(3, 8)[y]
    dist = np.linalg.norm(x - centre, axis=1)
    near = np.concatenate([train[y[train] == c][np.argsort(dist[train[y[train] == c]])[:3]] for c in range(3)])
    x_far = x.copy()
    far = np.concatenate([train[y[train] == c][:3] for c in range(3)])
    x_far[far] = rng.normal(size=(len(far), 8)) * 6.0  # pure noise features: an uninformative coreset

    def draw(f, i):
        r = np.random.default_rng(100 + i)
        return np.concatenate([r.choice(train[y[train] == c], 3, replace=False) for c in range(3)])

    table = probe.probe_coresets(x_far, y, train, test, {"near": {0.1: near}, "noise": {0.1: far}}, draw, draws=20)
    assert (table["method"] == "random_draw").sum() == 20
    summary = probe.probe_summary(table).set_index("method")
    assert summary.loc["near", "percentile"] > summary.loc["noise", "percentile"]
    assert summary.loc["noise", "accuracy"] < summary.loc["near", "accuracy"]
    assert summary.loc["near", "draws"] == 20 and 0.0 <= summary.loc["near", "random_sd"] < 0.5
    with pytest.raises(ValueError, match="outside the training split"):
        probe.probe_coresets(x, y, train, test, {"bad": {0.1: test[:9]}}, draw, draws=2)


def test_an_added_parameter_at_its_old_value_keeps_the_folder():
    """Runs committed before ``backbone_run`` existed keep their folder; a backbone makes a new one."""
    base = {"dataset": "ucmerced", "model": "plain_cnn", "seed": 0}
    assert runs.params_hash({**base, "backbone_run": {}}) == runs.params_hash(base)
    assert runs.params_hash({**base, "backbone_run": {"dataset": "eurosat"}}) != runs.params_hash(base)


def test_val_rise_reads_the_last_30_percent_of_the_steps():
    h = pd.DataFrame({"step": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
                      "val_accuracy": [.1, .2, .3, .4, .5, .6, .70, .72, .73, .75]})
    assert paper_a.val_rise(h) == pytest.approx(5.0)  # 0.75 at step 1000 - 0.70 at step 700
    assert paper_a.val_rise(h.iloc[-2:]) == pytest.approx(2.0)  # validated only inside the window


@pytest.fixture(scope="module")
def transfer_root(tmp_path_factory):
    """Tiny EuroSAT (the backbone's data) and a UC Merced with 13 images a class (enough to split)."""
    from make_fixtures import make_eurosat, make_ucmerced

    root = tmp_path_factory.mktemp("transfer")
    make_eurosat(root)
    make_ucmerced(root, per_class=13)
    return root


def _eurosat_backbone(root):
    """A tiny finished EuroSAT 04 run to start UC Merced runs from."""
    params = {"dataset": "eurosat", "data_dir": str(root), "model": "plain_cnn", "fraction": 1.0,
              "epochs": 1, "steps": 0, "image_size": 16, "batch_size": 16, "device": "cpu"}
    d, _ = runs.execute_notebook(runs.notebook_path("04"), params)
    return d, {k: v for k, v in params.items() if k != "data_dir"}


def _ucmerced_params(root, **kw):
    p = runs.resolve_params(runs.notebook_path("04"), {
        "dataset": "ucmerced", "data_dir": str(root), "model": "plain_cnn", "fraction": 0.5,
        "coreset": "random", "steps": 2, "image_size": 16, "batch_size": 8, "device": "cpu", **kw})
    return p


def test_a_backbone_run_starts_the_model_from_its_weights_with_a_new_head(transfer_root, tmp_cache):
    folder, ref = _eurosat_backbone(transfer_root)
    setup = paper_a.prepare_training(**_ucmerced_params(transfer_root, backbone_run=ref))
    state, _ = trained.reopen_trained(folder)
    own = setup.model.state_dict()
    body = [k for k in own if not k.startswith("classifier.")]
    assert body and all(torch.equal(own[k], state.state_dict()[k]) for k in body)
    assert own["classifier.weight"].shape[0] == len(setup.ds.classes) != state.classifier.weight.shape[0]
    assert setup.weights_description.startswith("in-project pretrained: 04 run runs/train/")
    assert '"dataset": "eurosat"' in setup.weights_description and "/tmp" not in setup.weights_description
    assert len(setup.provenance["backbone_state_sha256"]) == 16


def test_a_backbone_that_does_not_fit_is_a_named_error(transfer_root, tmp_cache):
    _, ref = _eurosat_backbone(transfer_root)
    for override, message in (({"dataset": "eurosat"}, "trained on eurosat itself: its training split holds"),
                              ({"model": "plain_cnn_small"}, "is a plain_cnn run; this run trains plain_cnn_small"),
                              ({"pretrained": True}, "leave pretrained False and weights empty")):
        with pytest.raises(ValueError, match=message):
            paper_a.prepare_training(**_ucmerced_params(transfer_root, backbone_run=ref, **override))


def test_a_backbone_run_that_does_not_exist_says_how_to_make_it(transfer_root, tmp_cache):
    with pytest.raises(FileNotFoundError, match="no finished 04_train run"):
        paper_a.prepare_training(**_ucmerced_params(transfer_root, backbone_run={"dataset": "eurosat", "seed": 9}))


def test_linear_probe_of_a_scoring_split(transfer_root, tmp_cache):
    from lcc_utils import coresets, data

    _, ref = _eurosat_backbone(transfer_root)
    bb = paper_a.backbone(ref, model="plain_cnn", dataset="ucmerced", data_dir=transfer_root)
    ds = data.load_dataset("ucmerced", data_dir=transfer_root)
    split = data.get_split(ds, seed=0)
    labels = np.asarray(ds.labels)[split.train]
    margin = {0.5: np.asarray(split.train)[coresets.select_coreset(None, 0.5, labels, "random", seed=7)]}
    table = paper_a.linear_probe(ds, split, bb, {"other": margin}, seed=0, draws=5)
    assert set(table["method"]) == {"random_draw", "random", "other"}
    assert (table["method"] == "random_draw").sum() == 5 and table["accuracy"].between(0, 1).all()
    rec = paper_a.probe_record(table)
    assert {"probe_random_mean_50pct", "probe_other_percentile_50pct", "probe_random_percentile_50pct"} <= set(rec)
    assert paper_a.linear_probe(ds, split, None, {"other": margin}, seed=0).empty
