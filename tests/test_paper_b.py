"""Tests of lcc_utils.paper_b: tiny synthetic patch sets (fixed seed) and one real-data check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lcc_utils import paper_b
from lcc_utils.constants import PAPER_B_BANDS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _patchset(n: int = 60, size: int = 8, seed: int = 0, classes=("non_vegetation", "vegetation")):
    """Synthetic 6-band reflectance patches; vegetation has high NIR, low red."""
    from lcc_utils.sentinel2 import PatchSet

    rng = np.random.default_rng(seed)
    k = len(classes)
    y = np.arange(n) % k
    x = rng.uniform(0.05, 0.15, size=(n, size, size, 6)).astype(np.float32)
    nir, red = PAPER_B_BANDS.index("B08"), PAPER_B_BANDS.index("B04")
    x[..., nir] += (y / max(k - 1, 1) * 0.3)[:, None, None]
    x[..., red] *= (1 - 0.5 * y / max(k - 1, 1))[:, None, None]
    split = np.array(["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10)
                     + ["test"] * (n - n * 6 // 10 - n * 2 // 10))
    # two patches per source image (consecutive), as EuroSAT quadrants share theirs
    return PatchSet(x=x, y=y, classes=list(classes), bands=PAPER_B_BANDS,
                    crs=np.array(["EPSG:32631"] * n, dtype=object),
                    bounds=np.zeros((n, 4)), split=split, block=np.arange(n).astype(str),
                    meta={"file": [f"img{i // 2}.tif" for i in range(n)]})


def test_registry_and_variants():
    assert paper_b.get_model_name("resnet18") == "ResNet-18"
    with pytest.raises(ValueError, match="choose one of: lightweight_cnn"):
        paper_b.get_model_name("resnet")
    assert paper_b.get_ablation_variant("A3")["kernel_size"] == 5
    with pytest.raises(ValueError, match="A1, A2, A3, A4"):
        paper_b.get_ablation_variant("A5")


def test_loaders_use_train_stats_only():
    ps = _patchset()
    loaders = paper_b.patch_loaders(ps, batch_size=8)
    x, _, idx = next(iter(loaders["train"]))
    assert x.shape[1:] == (6, 8, 8)
    assert set(idx.numpy()) <= set(ps.indices("train"))
    # standardised with train statistics: the train split is ~zero-mean per band
    allx = np.concatenate([b[0].numpy() for b in paper_b.patch_loaders(ps, 64)["train"]])
    assert np.abs(allx.mean(axis=(0, 2, 3))).max() < 1e-4


def test_run_models_deterministic_and_tables(tmp_path):
    ps = _patchset()
    keys = ["lightweight_cnn", "ndvi_threshold", "random_forest", "svm"]
    res = paper_b.run_models(keys, ps, seeds=[0, 1], epochs=2, run_dir=tmp_path)
    again = paper_b.run_neural("lightweight_cnn", ps, seed=0, epochs=2)
    assert np.array_equal(res["lightweight_cnn"][0].probs, again.probs)  # same seed, same result
    assert not np.array_equal(res["lightweight_cnn"][1].probs, again.probs)  # another seed differs
    n_test = len(ps.indices("test"))
    for rs in res.values():
        assert len(rs) == 2
        for r in rs:
            assert len(r.y_pred) == n_test
            assert 0 <= r.metrics["oa"] <= 1
    # the synthetic classes are separable by NDVI: the index baseline must find it
    assert res["ndvi_threshold"][0].metrics["oa"] == 1.0
    cnn = res["lightweight_cnn"][0]
    assert cnn.cost["params"] < 150_000 and cnn.cost["flops"] > 0
    for s_ in (0, 1):  # one folder per network and seed, reopenable by notebook 08
        assert (tmp_path / "models" / f"lightweight_cnn-seed{s_}" / "checkpoints" / "best.pt").is_file()
        assert (tmp_path / "models" / f"lightweight_cnn-seed{s_}" / "normalization.json").is_file()
    s = paper_b.summary(res)
    assert list(s.index) == ["LightweightCNN", "NDVI threshold", "Random forest", "SVM (RBF)"]
    assert s.loc["NDVI threshold", "paper_oa_%"] == 78.0
    assert s.loc["NDVI threshold", "oa_std_pp"] == 0.0  # deterministic given the split
    assert (s["n_seeds"] == 2).all()
    mc = paper_b.mcnemar_table(res)  # patch level, per seed
    assert len(mc) == 2 * 6 and mc["p_value"].between(0, 1).all() and (mc["unit"] == "patch").all()
    tests = paper_b.model_tests(ps, res, n_boot=200)
    assert len(tests) == 6 and (tests["unit"] == "image").all()
    assert (tests["sign_p_holm"] >= tests["sign_p"]).all()  # Holm never lowers a p-value
    assert (tests["n_clusters"] == n_test // 2).all()  # two test patches per source image
    assert (tests["ci95_lo_pp"] <= tests["diff_pp"] + 1e-9).all()
    assert (tests["diff_pp"] <= tests["ci95_hi_pp"] + 1e-9).all()
    ne = paper_b.ndvi_errors(ps, res, n_boot=200)
    assert ne.groupby("model")["n"].sum().eq(n_test).all()
    assert {0.15, 0.25} <= set(ne["lo"]) | set(ne["hi"])  # paper B's range on bin edges
    flat = paper_b.flat_metrics(res)
    assert flat["n_test"] == n_test and "svm_oa" in flat and flat["lightweight_cnn_n_seeds"] == 2
    assert len(paper_b.per_class(res)) == 4 * 2 * 2
    preds = paper_b.predictions(ps, res)
    assert len(preds) == n_test and "pred_lightweight_cnn_seed1" in preds and preds["image"].nunique() == n_test // 2


def test_claims_table_answers_every_row_of_the_csv(tmp_path):
    import pandas as pd

    ps = _patchset()
    res = paper_b.run_models(["lightweight_cnn", "ndvi_threshold", "random_forest"], ps, seeds=[0, 1],
                             epochs=2)
    papers = tmp_path / "papers"
    papers.mkdir()
    rows = [("lightweight_cnn_oa", "91.2", ""), ("lightweight_cnn_params_max", "150000", ""),
            ("mcnemar_cnn_vs_resnet18", "p > 0.05", ""), ("error_ndvi_range", "0.15-0.25", ""),
            ("ndvi_threshold_oa", "78.0", ""), ("curve_epoch10_acc", "85", ""),
            ("ablation_A4_vs_A2_oa_gain_max", "0.3", ""), ("interoperator_kappa", "0.86", "")]
    pd.DataFrame(rows, columns=["quantity", "value", "note"]).to_csv(papers / "paper_b_results.csv", index=False)
    paper = paper_b.paper_results(papers)
    abl = {"run": "toy", "ablation_summary": pd.DataFrame({"variant": ["A2", "A4"], "params": [94370, 389794]}),
           "ablation_tests": pd.DataFrame([{"model_a": "A4", "model_b": "A2", "unit": "image", "n_seeds": 3,
                                            "diff_pp": 0.1, "ci95_lo_pp": -0.5, "ci95_hi_pp": 0.2,
                                            "sign_p": 0.5, "sign_p_holm": 1.0}])}
    claims = paper_b.claims_table(paper, ps, res, ablation=abl, n_boot=200)
    assert list(claims["claim"]) == [r[0] for r in rows]  # every row, in the CSV's order
    assert set(claims["supported"]) <= set(paper_b.VERDICTS)
    v = claims.set_index("claim")["supported"]
    assert v["lightweight_cnn_params_max"] == "yes"  # the CNN has < 150k parameters
    assert v["ndvi_threshold_oa"] == "no"  # separable toy data: OA 100 %, CI excludes 78
    assert v["mcnemar_cnn_vs_resnet18"] == "n/a"  # no ResNet-18 in this run
    assert v["ablation_A4_vs_A2_oa_gain_max"] == "yes"  # CI upper bound 0.2 < 0.3 at +313 % params
    assert v["interoperator_kappa"] == "not testable here"
    assert v["curve_epoch10_acc"] == "not testable here"  # 2 epochs: no curve claim can be read
    assert "test" in claims and claims.set_index("claim").loc["ndvi_threshold_oa", "test"].startswith("equivalence")
    assert v["error_ndvi_range"] == "not testable here"  # no toy patch has an NDVI in 0.15-0.25
    assert paper_b.claim_counts(claims)["claims_not_testable_here"] == 3
    bad = pd.DataFrame([("new_claim", "1", "")], columns=["quantity", "value", "note"])
    with pytest.raises(ValueError, match="'new_claim'.*has no test here"):
        paper_b.claims_table(bad, ps, res, n_boot=200)
    with pytest.raises(FileNotFoundError, match="paper_b_results.csv"):
        paper_b.paper_results(tmp_path)


def _evidence(results=None, tests=None, task="binary"):
    return paper_b.ClaimEvidence(ps=_patchset(), results=results or {}, intervals=None, tests=tests, ablation=None,
                                 task=task)


def _cnn_seeds(n_epochs, stopped_early, val_acc):
    """Fake CNN results (no training): per-seed histories of ``n_epochs`` with the given val accuracy."""
    out = []
    for s, acc in enumerate(val_acc):
        e = np.arange(1, n_epochs + 1)
        h = __import__("pandas").DataFrame({"epoch": e, "val_accuracy": np.asarray(acc(e), float),
                                            "val_loss": 0.3 + 0.1 / e})
        out.append(paper_b.ModelResult(key="lightweight_cnn", name="LightweightCNN", y_true=np.zeros(1, int),
                                       y_pred=np.zeros(1, int), test_indices=np.zeros(1, int), metrics={},
                                       cost={}, history=h, details={"stopped_early": stopped_early, "seed": s}))
    return {"lightweight_cnn": out}


def test_curve_claims_only_on_full_length_runs():
    near = [lambda e: np.minimum(0.5 + 0.05 * e, 0.91)] * 3  # climbs, then flat at 91 %
    early = _evidence(_cnn_seeds(16, True, near))
    a = paper_b.check_curve_near(early, "91", 25)
    assert a.supported == "not testable here" and "stopped early at epoch 16/16/16" in a.ours
    assert paper_b.check_val_loss_stable(early, "20").supported == "not testable here"
    assert paper_b.check_curve_above(_evidence(_cnn_seeds(29, False, near)), "85", 10).supported == "not testable here"
    full = _evidence(_cnn_seeds(30, False, near))
    assert paper_b.check_curve_near(full, "91", 25).supported == "yes"
    assert paper_b.check_curve_near(full, "95", 25).supported == "no"  # 4 points away on every epoch
    assert paper_b.check_curve_above(full, "85", 10).supported == "yes"  # 0.91 from epoch 9 on
    assert paper_b.check_curve_above(full, "95", 10).supported == "no"
    assert paper_b.check_val_loss_stable(full, "20").supported == "yes"  # 0.305 -> 0.303: within 10 %
    mixed = _evidence(_cnn_seeds(30, False, [near[0], lambda e: np.full(len(e), 0.80), near[0]]))
    assert paper_b.check_curve_near(mixed, "91", 25).supported == "undecided"  # one seed of three is off


def _pair_row(**kw):
    import pandas as pd

    row = {"model_a": "LightweightCNN", "model_b": "ResNet-18", "diff_pp": 0.6, "ci95_lo_pp": -4.4,
           "ci95_hi_pp": 5.4, "ci90_lo_pp": -3.7, "ci90_hi_pp": 4.7, "perm_p": 0.59, "perm_p_holm": 0.8,
           "significant_holm": False, "margin_pp": 2.0, "tost_p": 0.07, "tost_p_holm": 0.75, "equivalent": False,
           "sign_p": 0.31, "patch_level_mcnemar_p": 0.38, "n_clusters": 130}
    return pd.DataFrame([{**row, **kw}])


def test_no_difference_claim_needs_equivalence():
    both = {"lightweight_cnn": [], "resnet18": []}
    # the committed binary run's case: p > 0.05 and an interval of +-4 points -> undecided, not "yes"
    assert paper_b.check_no_difference(_evidence(both, _pair_row()), "p > 0.05").supported == "undecided"
    eq = _pair_row(ci90_lo_pp=-1.0, ci90_hi_pp=1.5, tost_p_holm=0.01, equivalent=True)
    assert paper_b.check_no_difference(_evidence(both, eq), "p > 0.05").supported == "yes"
    sig = _pair_row(diff_pp=5.6, perm_p_holm=0.005, significant_holm=True)
    a = paper_b.check_no_difference(_evidence(both, sig), "p > 0.05")
    assert a.supported == "no" and "permutation" in a.test and "+5.6 pp" in a.ours
    flipped = _pair_row(model_a="ResNet-18", model_b="LightweightCNN", diff_pp=-5.6, ci95_lo_pp=-8.6, ci95_hi_pp=-2.8)
    assert "+5.6 pp (95 % CI +2.8 to +8.6" in paper_b.check_no_difference(_evidence(both, flipped), "").ours
    assert paper_b.check_no_difference(_evidence({"lightweight_cnn": []}), "").supported == "n/a"


def test_published_value_needs_equivalence_not_only_an_interval_that_contains_it():
    assert paper_b._equivalent_to((84.5, 92.1), (85.2, 91.6), 91.2, 2.0) == "undecided"  # contains 91.2, too wide
    assert paper_b._equivalent_to((90.0, 92.5), (90.3, 92.2), 91.2, 2.0) == "yes"
    assert paper_b._equivalent_to((53.8, 69.4), (55.0, 68.0), 78.0, 2.0) == "no"


def test_ten_class_run_does_not_score_against_binary_claims(tmp_path):
    import pandas as pd

    ps = _patchset(classes=("a", "b", "c"))
    res = paper_b.run_models(["random_forest"], ps, seeds=[0])
    rows = [("lightweight_cnn_oa", "91.2", ""), ("resnet18_oa", "92.5", ""), ("curve_epoch25_acc", "91", ""),
            ("lightweight_cnn_params_max", "150000", ""), ("patch_size_px", "32", "")]
    paper = pd.DataFrame(rows, columns=["quantity", "value", "note"])
    claims = paper_b.claims_table(paper, ps, res, n_boot=200, task="multiclass").set_index("claim")
    assert (claims.loc[["lightweight_cnn_oa", "resnet18_oa", "curve_epoch25_acc"], "supported"]
            == paper_b.NOT_APPLICABLE).all()
    assert claims.loc["lightweight_cnn_params_max", "supported"] == "n/a"  # no CNN in this run
    assert claims.loc["patch_size_px", "supported"] == "differs"  # 8 px toy patches
    assert paper_b.claim_counts(claims.reset_index())["claims_not_applicable"] == 3
    assert set(claims["supported"]) <= set(paper_b.VERDICTS)


def test_reopen_trained_reopens_cnn(tmp_path):
    from lcc_utils import training
    from lcc_utils.trained import reopen_trained

    ps = _patchset()
    r = paper_b.run_neural("lightweight_cnn", ps, seed=0, epochs=1, run_dir=tmp_path)
    (tmp_path / "params.json").write_text('{"params": {}, "stage": "evaluation"}')
    net, info = reopen_trained(tmp_path, rebuild=False)  # the run folder: models/<network> inside
    assert info["params"]["model"] == "lightweight_cnn" and info["normalization"]["classes"] == list(ps.classes)
    with pytest.raises(FileNotFoundError, match="holds no network 'resnet18'; it has: lightweight_cnn"):
        reopen_trained(tmp_path, model="resnet18")
    probs, _, _ = training.predict(net, paper_b.patch_loaders(ps)["test"], "cpu")
    assert np.allclose(probs, r.probs, atol=1e-6)


def test_reopen_ablation_architecture(tmp_path):
    from lcc_utils import training
    from lcc_utils.trained import reopen_trained

    ps = _patchset()
    kw = paper_b.get_ablation_variant("A3")
    r = paper_b.run_neural("lightweight_cnn", ps, seed=1, epochs=1, run_dir=tmp_path,
                           model_kwargs=kw)
    net, info = reopen_trained(tmp_path / "models" / "lightweight_cnn", rebuild=False)
    assert info["params"]["kernel_size"] == 5 and len(info["normalization"]["mean"]) == 6
    probs, _, _ = training.predict(net, paper_b.patch_loaders(ps)["test"], "cpu")
    assert np.allclose(probs, r.probs, atol=1e-6)
    (tmp_path / "models" / "lightweight_cnn" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match="not committed"):
        reopen_trained(tmp_path / "models" / "lightweight_cnn", rebuild=False)


def test_multiclass_rejects_ndvi_threshold():
    ps = _patchset(classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="binary vegetation task only"):
        paper_b.run_baseline("ndvi_threshold", ps)
    with pytest.raises(ValueError, match="unknown paper B model"):
        paper_b.run_models(["cnn"], ps)


def test_ablation_table(tmp_path):
    ps = _patchset(n=40)
    table, res = paper_b.run_ablation(ps, variants=["A1", "A2"], seeds=[0, 1], epochs=1)
    assert len(table) == 4 and len(res) == 4
    ref = table[table.variant == "A2"]
    assert ref["mcnemar_p_vs_A2"].isna().all()
    tests = paper_b.ablation_tests(ps, res, n_boot=200)
    assert list(tests["model_a"]) == ["A1"] and tests["model_b"].iloc[0] == "A2"
    assert tests["sign_p_holm"].between(0, 1).all() and tests["n_seeds"].iloc[0] == 2
    assert table[table.variant == "A1"]["mcnemar_p_vs_A2"].between(0, 1).all()
    a1, a2 = (table[table.variant == v]["params"].iloc[0] for v in ("A1", "A2"))
    assert a1 < a2
    summ = paper_b.ablation_summary(table)
    assert summ.loc["A1", "n"] == 2 and "oa_std" in summ.columns
    flat = paper_b.ablation_metrics(summ)
    assert flat["A2_params"] == a2 and flat["A1_n_seeds"] == 2
    import matplotlib.pyplot as plt

    fig = paper_b.plot_ablation(table)
    assert len(fig.axes) == 2
    plt.close(fig)


@pytest.mark.integration
def test_real_eurosat_ms_baselines():
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (../shared/data)")
    from lcc_utils import data, sentinel2

    ds = data.load_dataset("eurosat_ms", data_dir=str(DATA), download=False)
    ps = sentinel2.eurosat_ms_patchset(ds, task="binary")
    res = paper_b.run_models(["ndvi_threshold", "random_forest"], ps, seeds=[0])
    # Our grouping is hard for one NDVI threshold (EuroSAT Highway / Residential / River
    # patches are half green; measured 0.67 OA): still clearly above the 0.5 of chance.
    assert res["ndvi_threshold"][0].metrics["oa"] > 0.6
    assert -0.3 < res["ndvi_threshold"][0].details["threshold"] < 0.6
    assert res["random_forest"][0].metrics["oa"] > 0.85
    # the test patches are quadrants of 64 px images: about a quarter as many independent images
    cl = paper_b.clusters_of(ps, ps.indices("test"), "image")
    assert len(set(cl)) * 4 == len(cl)


@pytest.mark.integration
def test_real_rebuild_without_checkpoint_is_identical(tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (../shared/data)")
    import torch

    from lcc_utils import data, sentinel2, training
    from lcc_utils.trained import reopen_trained

    ds = data.load_dataset("eurosat_ms", data_dir=str(DATA), download=False)
    ps = sentinel2.eurosat_ms_patchset(ds, task="binary")
    torch.set_num_threads(1)
    paper_b.run_neural("lightweight_cnn", ps, seed=0, epochs=1, run_dir=tmp_path,
                       folder=paper_b.model_folder("lightweight_cnn", 0))  # as notebook 06 names it
    mdir = tmp_path / "models" / "lightweight_cnn-seed0"
    before, _ = reopen_trained(mdir, rebuild=False)
    for f in (mdir / "checkpoints").iterdir():
        f.unlink()
    after, info = reopen_trained(mdir, data_dir=str(DATA))
    test = paper_b.patch_loaders(ps)["test"]
    p0, _, _ = training.predict(before, test, "cpu")
    p1, _, _ = training.predict(after, test, "cpu")
    assert len((mdir / "history.csv").read_text().strip().splitlines()) == 2  # header + the one epoch
    assert info["params"]["seed"] == 0
    assert np.array_equal(p0, p1)


def _quick_run(notebook: str, monkeypatch, entry: int = 0) -> Path:
    """The committed run of entry ``entry`` of ``notebook``'s quick profile, or skip."""
    from lcc_utils import runs, study

    monkeypatch.setenv("LCC_RUNS_DIR", str(Path(__file__).resolve().parents[1] / "runs"))
    params = [p for _, p in study.study_plan("quick", [notebook[:2]])]
    try:
        return runs.find_run(notebook, params[entry])
    except FileNotFoundError as e:
        pytest.skip(f"no committed quick run: {e}")


def test_committed_evaluation_run_answers_every_claim_at_the_right_unit(monkeypatch):
    import json

    import pandas as pd

    papers = DATA.parent / "papers"
    if not (papers / paper_b.PAPER_B_RESULTS_CSV).is_file():
        pytest.skip(f"paper B's results CSV not found in {papers}")
    d = _quick_run("06_evaluation", monkeypatch, 0)  # the binary task
    claims = pd.read_csv(d / "claims.csv", keep_default_na=False)  # "n/a" is a verdict, not NaN
    paper = paper_b.paper_results(papers)
    assert list(claims["claim"]) == list(paper["quantity"])  # every row of the CSV, in order
    assert claims["supported"].isin(paper_b.VERDICTS).all()
    m = json.loads((d / "metrics.json").read_text())
    assert m["lightweight_cnn_n_seeds"] >= 3 and m["resnet18_n_seeds"] >= 3
    tests = pd.read_csv(d / "model_tests.csv")
    assert (tests["unit"] == "image").all() and len(tests) == 10
    assert (tests["n_clusters"] == m["n_test"] // 4).all()  # four quadrants per source image
    assert (tests["sign_p_holm"] >= tests["sign_p"] - 1e-12).all()
    ne = pd.read_csv(d / "ndvi_errors.csv")
    assert {0.15, 0.25} <= set(ne["lo"]) and {"ci95_lo", "ci95_hi", "n_clusters"} <= set(ne.columns)


def test_committed_map_is_made_by_a_committed_evaluation_run_and_validated(monkeypatch):
    import json

    d = _quick_run("08_mapping", monkeypatch, 0)
    m = json.loads((d / "metrics.json").read_text())
    params = json.loads((d / "params.json").read_text())["params"]
    model = Path(__file__).resolve().parents[1] / m["model_source"]  # runs/evaluation/<run>/models/<net>
    assert (model / "params.json").is_file(), m["model_source"]
    assert (model.parent.parent / "metrics.json").is_file()  # a finished, committed 06 run
    assert params["evaluation_run"] and params["network"].endswith("-seed0")
    assert 0.0 <= m["scl_oa"] <= 1.0 and m["scl_reference_pixels"] > 0
    assert m["cog_class_overviews"] >= 1
