import json

import numpy as np
import pandas as pd
import pytest
import torch

from lcc_utils.data import BatchLoader
from lcc_utils.models import create_model
from lcc_utils.training import (
    RECIPES,
    Recipe,
    class_weights,
    evaluate,
    get_recipe,
    load_checkpoint,
    predict,
    resolve_device,
    seconds_per_step,
    seed_everything,
    train,
)

TINY = Recipe(name="tiny", optimizer="adamw", lr=5e-3, weight_decay=0.01, grad_clip=1.0,
              warmup_epochs=1, schedule="cosine", max_epochs=4, patience=None,
              monitor="val_accuracy", class_weighted=True, batch_size=16)


def make_data(n=72, k=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    images = rng.normal(0, 1, (n, size, size, 3)).astype(np.float32)
    images[..., 0] += labels[:, None, None] * 1.0  # class signal in band 0
    return images, labels.astype(np.int64)


def make_loaders(seed=0, train_idx=None):
    images, labels = make_data()
    tr = np.arange(0, 48) if train_idx is None else train_idx
    return {
        "train": BatchLoader(images, labels, tr, batch_size=16, augment=True, shuffle=True,
                             seed=seed),
        "val": BatchLoader(images, labels, np.arange(48, 60), batch_size=16),
        "test": BatchLoader(images, labels, np.arange(60, 72), batch_size=16),
    }


def tiny_model(seed=0):
    seed_everything(seed)
    return create_model("lightweight_cnn", num_classes=3, in_chans=3, depth=2, filters=(4, 8))


def test_recipes_registry_and_errors():
    assert set(RECIPES) == {"paper_a", "paper_b", "fair_cpu"}
    fair = get_recipe("fair_cpu")
    assert fair.patience is None and fair.warmup_fraction == 0.1 and fair.augment == "dihedral"
    a = get_recipe("paper_a")
    assert (a.optimizer, a.lr, a.weight_decay, a.grad_clip, a.warmup_epochs, a.max_epochs) == (
        "adamw", 5e-4, 0.01, 1.0, 3, 10)
    assert a.monitor == "val_accuracy" and a.class_weighted
    b = get_recipe("paper_b")
    assert (b.optimizer, b.lr, b.batch_size, b.l2, b.monitor, b.class_weighted) == (
        "adam", 1e-3, 32, 1e-3, "val_loss", False)
    with pytest.raises(ValueError, match="unknown recipe 'paper_c'; choose one of: fair_cpu, paper_a, paper_b"):
        get_recipe("paper_c")


def test_device_errors():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_class_weights_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    # N / (K * n_k): 4 / (2 * 3), 4 / (2 * 1)
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))
    with pytest.raises(ValueError, match=r"classes \[2\] have no training images"):
        class_weights(np.array([0, 1, 1]), 3)


def test_class_weights_follow_the_coreset(tmp_path):
    loaders = make_loaders(train_idx=np.array([0, 1, 2, 3, 6, 9, 12]))  # labels 0,1,2,0,0,0,0
    seen = {}
    model = tiny_model()
    orig = torch.nn.CrossEntropyLoss.__init__

    def spy(self, *a, **kw):
        seen["weight"] = kw.get("weight")
        orig(self, *a, **kw)

    torch.nn.CrossEntropyLoss.__init__ = spy
    try:
        train(model, loaders, TINY, epochs=1, device="cpu")
    finally:
        torch.nn.CrossEntropyLoss.__init__ = orig
    assert torch.allclose(seen["weight"], torch.tensor([7 / 15, 7 / 3, 7 / 3]))


def test_training_learns_and_predict_shapes():
    loaders = make_loaders()
    model = tiny_model()
    res = train(model, loaders, TINY, epochs=4, device="cpu")
    assert list(res.history["epoch"]) == [1, 2, 3, 4]
    assert 1 <= res.best_epoch <= 4
    probs, labels, idx = predict(model, loaders["test"], "cpu")
    assert probs.shape == (12, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert list(idx) == list(range(60, 72))
    assert evaluate(model, loaders["test"], "cpu")["accuracy"] > 0.5


def test_same_seed_same_result():
    h1 = train(tiny_model(), make_loaders(), TINY, epochs=2, device="cpu").history
    h2 = train(tiny_model(), make_loaders(), TINY, epochs=2, device="cpu").history
    pd.testing.assert_frame_equal(h1.drop(columns="seconds"), h2.drop(columns="seconds"))


def test_resume_after_kill_gives_identical_metrics(tmp_path):
    ref = train(tiny_model(), make_loaders(), TINY, epochs=4, device="cpu",
                run_dir=tmp_path / "ref", record_correctness=True)

    def kill(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), make_loaders(), TINY, epochs=4, device="cpu",
              run_dir=tmp_path / "run", on_epoch_end=kill, record_correctness=True)
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    # restart with a differently initialised model: the checkpoint must win
    res = train(tiny_model(seed=123), make_loaders(), TINY, epochs=4, device="cpu",
                run_dir=tmp_path / "run", record_correctness=True)
    assert res.resumed
    cols = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    pd.testing.assert_frame_equal(res.history[cols], ref.history[cols], check_exact=True)
    assert res.best_epoch == ref.best_epoch
    assert np.array_equal(res.correctness, ref.correctness)
    for k, v in ref.best_state.items():
        assert torch.equal(v, res.best_state[k]), k
    # a finished run is returned as stored, without training
    again = train(tiny_model(seed=5), make_loaders(), TINY, epochs=4, device="cpu",
                  run_dir=tmp_path / "run", on_epoch_end=kill)
    assert again.best_epoch == ref.best_epoch and len(again.history) == 4


def test_checkpoint_of_another_run_is_refused(tmp_path):
    train(tiny_model(), make_loaders(), TINY, epochs=1, device="cpu", run_dir=tmp_path)
    with pytest.raises(ValueError, match="belongs to a different run"):
        train(tiny_model(), make_loaders(), TINY, epochs=1, device="cpu", run_dir=tmp_path, seed=1)


def test_early_stopping_on_plateau():
    frozen = Recipe(name="frozen", optimizer="adam", lr=0.0, max_epochs=10, patience=2,
                    monitor="val_loss", batch_size=16)
    res = train(tiny_model(), make_loaders(), frozen, device="cpu")
    # lr 0: epoch 1 sets the best val loss, epochs 2 and 3 do not improve -> stop after 3
    assert len(res.history) == 3 and res.stopped_early and res.best_epoch == 1


@pytest.mark.parametrize(("warmup", "patience", "stop_after"), [(3, 1, 4), (3, 3, 6), (0, 2, 3)])
def test_early_stopping_never_fires_inside_the_warm_up(warmup, patience, stop_after):
    """Paper A: "a warm-up of 3 epochs is followed by early stopping": patience counts after it."""
    frozen = Recipe(name="frozen", optimizer="adam", lr=0.0, warmup_epochs=warmup, max_epochs=10,
                    patience=patience, monitor="val_loss", batch_size=16)
    res = train(tiny_model(), make_loaders(), frozen, device="cpu")
    # lr 0: epoch 1 is the best and nothing improves; the earliest stop is warm-up + patience
    assert res.stopped_early and len(res.history) == stop_after
    assert res.extra["warmup_end_epoch"] == warmup and res.best_epoch == 1


def test_step_budget_is_exact_and_validation_is_thinned():
    loaders = make_loaders()  # 48 training images, batch 16: 3 steps per epoch
    res = train(tiny_model(), loaders, TINY, steps=10, val_every=2, device="cpu")
    assert res.extra["steps"] == 10 and res.extra["epochs_planned"] == 4
    assert res.history["epoch"].tolist() == [2, 4] and res.history["step"].tolist() == [6, 10]
    assert res.history["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # schedule spans the budget
    # same budget whatever the subset: a 24-image coreset gets 10 steps too
    small = make_loaders(train_idx=np.arange(0, 24))
    assert train(tiny_model(), small, TINY, steps=10, device="cpu").extra["steps"] == 10
    for bad in ({"steps": 0}, {"steps": True}, {"val_every": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            train(tiny_model(), loaders, TINY, device="cpu", **bad)


def test_correctness_matrix_shape():
    loaders = make_loaders()
    res = train(tiny_model(), loaders, TINY, epochs=3, device="cpu", record_correctness=True)
    assert res.correctness.shape == (3, 48) and res.correctness.dtype == bool
    assert list(res.correctness_indices) == list(range(48))


def test_load_checkpoint_and_missing(tmp_path):
    seed_everything(0)
    model = create_model("lightweight_cnn", num_classes=3, in_chans=3)
    res = train(model, make_loaders(), TINY, epochs=1, device="cpu", run_dir=tmp_path)
    (tmp_path / "params.json").write_text(
        json.dumps({"params": {"model": "lightweight_cnn", "image_size": 8}}))
    loaded, params = load_checkpoint(tmp_path)
    assert params["model"] == "lightweight_cnn" and not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, res.best_state[k]), k
    empty = tmp_path / "fresh_clone_run"
    empty.mkdir()
    (empty / "params.json").write_text(json.dumps({"params": {"model": "resnet18"}, "stage": "train"}))
    with pytest.raises(FileNotFoundError, match="best.pt is missing"):
        load_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="no params.json"):
        load_checkpoint(tmp_path / "nope")
    from lcc_utils.trained import reopen_trained

    with pytest.raises(FileNotFoundError, match="rebuild=True"):
        reopen_trained(empty, rebuild=False)


@pytest.mark.parametrize("stem", ["03_coreset_scoring", "04_train", "05_compression", "06_evaluation",
                                  "07_ablation", "08_mapping", "09_paper_a_tables"])
def test_profiles_and_ci_params_match_the_notebook_parameters(stem):
    from pathlib import Path

    from lcc_utils import runs

    root = Path(__file__).resolve().parents[1]
    nb = root / "notebooks" / f"{stem}.ipynb"
    profiles = json.loads((root / "profiles" / f"{stem}.json").read_text())
    from lcc_utils import study

    assert set(profiles) == set(study.PROFILES)
    ci = json.loads((root / "tests" / "notebook_params" / f"{stem}.json").read_text())

    assert "data_dir" not in json.dumps(profiles)
    runs.resolve_params(nb, ci)  # unknown names raise
    for profile in profiles:
        for params in study.profile_runs(nb, profile):
            runs.resolve_params(nb, params)


@pytest.mark.integration
def test_reopen_trained_rebuilds_a_run_without_checkpoints(shared_data, tmp_path):
    """A fresh clone has params.json + metrics.json only: rebuilding gives the same model."""
    import shutil

    from lcc_utils import metrics
    from lcc_utils.paper_a import prepare_training, run_record
    from lcc_utils.trained import reopen_trained

    params = {"dataset": "eurosat_ms", "data_dir": str(shared_data), "model": "lightweight_cnn",
              "coreset": "margin", "fraction": 0.1, "seed": 0, "epochs": 2, "steps": 0,
              "image_size": 16, "batch_size": 32, "device": "cpu", "pretrained": False,
              "weights": "", "recipe": "paper_a", "scoring_model": "lightweight_cnn",
              "scoring_epochs": 2, "scoring_image_size": 16, "backbone_run": {}}
    setup = prepare_training(**params)
    run = tmp_path / "run"
    res = train(setup.model, setup.loaders, setup.recipe, epochs=2, device="cpu", run_dir=run,
                seed=0, params=params)
    probs, y, _ = predict(setup.model, setup.loaders["test"], "cpu")
    rec = run_record(res, metrics.classification_metrics(y, probs.argmax(1), setup.ds.classes),
                     setup)
    (run / "params.json").write_text(json.dumps({"params": params, "stage": "train"}))
    (run / "metrics.json").write_text(json.dumps(rec))
    shutil.rmtree(run / "checkpoints")
    model, info = reopen_trained(run)
    assert info["params"]["model"] == "lightweight_cnn"
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.best_state[k]), k
    probs2, _, _ = predict(model, setup.loaders["test"], "cpu")
    assert np.array_equal(probs2, probs)


def test_paper_b_l2_penalty_is_in_the_loss():
    """Keras-style L2: the reported training loss includes 1e-3 * sum(w**2) of the kernels."""
    from dataclasses import replace

    from lcc_utils.training import _l2_penalty

    model = tiny_model()
    expected = sum(float((p.detach()**2).sum()) for p in model.parameters() if p.ndim > 1)
    assert float(_l2_penalty(model).detach()) == pytest.approx(expected, rel=1e-6)
    frozen = replace(get_recipe("paper_b"), lr=0.0, batch_size=16, max_epochs=1)
    plain = replace(frozen, l2=0.0)
    with_l2 = train(tiny_model(), make_loaders(), frozen, device="cpu").history["train_loss"][0]
    without = train(tiny_model(), make_loaders(), plain, device="cpu").history["train_loss"][0]
    assert with_l2 - without == pytest.approx(1e-3 * expected, rel=1e-4)


def test_plot_learning_curves_marks_the_kept_epoch():
    from lcc_utils import training

    hist = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.6], "val_loss": [1.1, 0.9, 0.95],
                         "train_accuracy": [0.4, 0.5, 0.6], "val_accuracy": [0.5, 0.6, 0.55]})
    fig = training.plot_learning_curves(hist, best_epoch=2, title="t")
    loss_ax, acc_ax = fig.axes
    assert [ln.get_label() for ln in acc_ax.lines] == ["train (augmented)", "validation", "best epoch 2"]
    assert list(loss_ax.lines[1].get_ydata()) == [1.1, 0.9, 0.95]


def test_paper_a_budget_rule_equal_steps_for_coresets_epochs_for_full_data():
    from lcc_utils.paper_a import training_budget

    five = training_budget(0.05, epochs=15, steps=300, train_size=972, batch_size=64)
    ten = training_budget(0.1, epochs=15, steps=300, train_size=1944, batch_size=64)
    assert five["steps"] == ten["steps"] == 300  # the same budget whatever the fraction
    assert (five["epochs"], ten["epochs"]) == (19, 10) and (five["val_every"], ten["val_every"]) == (2, 1)
    assert training_budget(1.0, epochs=15, steps=300, train_size=19440, batch_size=64) == {
        "epochs": 15, "steps": None, "val_every": 1}
    assert training_budget(0.1, epochs=15, steps=0, train_size=1944, batch_size=64)["steps"] is None
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="steps="):
            training_budget(0.1, epochs=15, steps=bad, train_size=1944, batch_size=64)


def test_prepare_training_loads_weights_by_band_name(synthetic_root, tmp_cache, tmp_path):
    """Notebook 04's door: the dataset's bands reach load_weights, and the run records the mapping.

    (The synthetic EuroSAT MS tree is too small to split, so an RGB run takes a BGR checkpoint.)
    """
    from lcc_utils.paper_a import prepare_training

    torch.manual_seed(0)
    src = create_model("lightweight_cnn", num_classes=10, in_chans=3).state_dict()
    path = tmp_path / "bgr.pt"  # an OpenCV-style checkpoint: channels blue, green, red
    torch.save({"state_dict": src, "bands": ["B", "G", "R"]}, path)
    params = dict(dataset="eurosat", model="lightweight_cnn", coreset="random", fraction=1.0,
                  seed=0, image_size=16, batch_size=16, device="cpu", recipe="paper_a", epochs=1,
                  data_dir=str(synthetic_root), pretrained=False, weights=str(path),
                  scoring_model="lightweight_cnn", scoring_epochs=2, steps=0, scoring_image_size=16, backbone_run={})
    setup = prepare_training(**params)
    assert torch.equal(setup.model.features[0].weight, src["features.0.weight"][:, [2, 1, 0]])
    assert setup.weights_description.endswith(
        "bands:B,G,R (3, from checkpoint); first conv: reordered R,G,B of 3 by name")


def test_final_progress_line_shows_what_finished(monkeypatch, capsys):
    """The kept line of a run nobody watches: every epoch that ran, and an early stop said as such."""
    monkeypatch.setenv("LCC_PROGRESS", "final")
    train(tiny_model(), make_loaders(), TINY, epochs=2, device="cpu")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"train {TINY.name}: 100% 2/2 [") and "best=" in line, line
    frozen = Recipe(name="frozen", optimizer="adam", lr=0.0, max_epochs=30, patience=2,
                    monitor="val_loss", batch_size=16)
    res = train(tiny_model(), make_loaders(), frozen, device="cpu")
    n = len(res.history)
    assert res.stopped_early and n < 30
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"100% {n}/{n} [" in line and f"stopped=early at {n}/30 (patience 2)" in line, line


def test_seconds_per_step_times_only_the_steps_after_its_warm_up():
    """A step is counted once: ``n_steps`` timed steps after ``warmup`` untimed ones (0 allowed)."""
    seen = []
    model = tiny_model()
    model.register_forward_hook(lambda *_: seen.append(1))
    for warmup in (0, 2):
        seen.clear()
        assert seconds_per_step(model, make_loaders()["train"], TINY, n_steps=3, device="cpu", warmup=warmup) > 0
        assert len(seen) == 3 + warmup
    with pytest.raises(ValueError, match="warmup=-1"):
        seconds_per_step(model, make_loaders()["train"], TINY, n_steps=3, device="cpu", warmup=-1)
