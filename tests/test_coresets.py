import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from lcc_utils.coresets import (
    CORESETS,
    CoresetScores,
    aum_scores,
    ccs_select,
    forgetting_scores,
    get_coreset_method,
    load_coreset,
    load_scores,
    margin_scores,
    misclassified_counts,
    never_learned,
    save_coreset,
    save_scores,
    select_coreset,
)
from lcc_utils.paper_a import protocol_differences, table1
from lcc_utils.stats import holm


def test_registry_error_lists_choices():
    assert list(CORESETS) == ["random", "forgetting", "forgetting_events", "margin", "forgetting_easy",
                              "forgetting_events_easy", "margin_easy", "ccs"]
    with pytest.raises(ValueError, match="unknown coreset 'forgeting'; choose one of: random, forgetting, "
                                         "forgetting_events, margin"):
        get_coreset_method("forgeting")


def test_paper_wording_counts_misclassified_epochs_and_never_learned():
    c = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]], dtype=bool)
    assert misclassified_counts(c).tolist() == [2.0, 4.0, 1.0]
    assert never_learned(c).tolist() == [False, True, False]
    # Toneva's events differ: sample 0 is forgotten twice, sample 2 once
    assert forgetting_scores(c).tolist() == [2.0, 5.0, 1.0]


def test_aum_is_the_mean_true_class_margin():
    m = np.array([[1.0, -2.0], [3.0, 0.0]])
    assert aum_scores(m).tolist() == [2.0, -1.0]
    with pytest.raises(ValueError, match="true_margins"):
        aum_scores(np.array([1.0, np.nan]))


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


@pytest.mark.parametrize("method", list(CORESETS))
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
    # the easy-first reverses keep the other end
    assert select_coreset(scores, 0.3, labels, "forgetting_easy").tolist() == [0, 1, 2]
    assert select_coreset(scores, 0.3, labels, "forgetting_events_easy").tolist() == [0, 1, 2]
    assert select_coreset(scores, 0.3, labels, "margin_easy").tolist() == [7, 8, 9]


def test_ccs_drops_the_hardest_beta_and_covers_every_stratum():
    rng = np.random.default_rng(0)
    aum = np.concatenate([rng.uniform(-5, 0, 300), rng.uniform(0, 5, 700)])  # low AUM = hard
    labels = np.zeros(1000, dtype=int)
    sel = select_coreset(aum, 0.1, labels, "ccs", seed=0, beta=0.3, strata=10)
    assert len(sel) == 100 and len(np.unique(sel)) == 100
    hardest = np.argsort(aum)[:300]
    assert not set(sel) & set(hardest)  # the hardest 30 % are never kept
    kept = np.sort(aum)[300:]
    edges = np.linspace(kept.min(), kept.max(), 11)
    per_bin = np.histogram(aum[sel], bins=edges)[0]
    assert per_bin.min() >= 9 and per_bin.max() <= 11  # even coverage of the score range
    again = select_coreset(aum, 0.1, labels, "ccs", seed=0, beta=0.3, strata=10)
    assert np.array_equal(sel, again)


def test_ccs_small_strata_give_their_all_and_the_rest_is_redistributed():
    rng = np.random.default_rng(1)
    h = np.concatenate([np.full(3, 10.0), rng.uniform(0, 1, 97)])  # one tiny stratum at the top
    pos = ccs_select(h, 20, rng, beta=0.0, strata=2)
    assert len(pos) == 20 and set(range(3)) <= set(pos)


def test_ccs_bad_input_names_the_parameter():
    labels, scores = labels_and_scores()
    for bad in (-0.1, 1.0, 1.5, "0.3"):
        with pytest.raises(ValueError, match="beta="):
            select_coreset(scores, 0.1, labels, "ccs", beta=bad)
    with pytest.raises(ValueError, match="beta=0.95: dropping the hardest"):
        select_coreset(scores, 0.1, labels, "ccs", beta=0.95)
    with pytest.raises(ValueError, match="strata="):
        select_coreset(scores, 0.1, labels, "ccs", strata=0)


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


def test_table1_pairs_seeds_and_puts_paper_numbers_beside_ours():
    rows = []
    diffs = {"random": (0, 0, 0), "forgetting": (2, 3, 4), "margin": (-1, 1, -3)}
    for method, d in diffs.items():
        for seed in range(3):
            rows.append({"model": "plain_cnn", "dataset": "eurosat", "fraction": 0.1,
                         "coreset": method, "seed": seed,
                         "test_accuracy": (80 + 5 * seed + d[seed]) / 100,
                         "image_size": 32, "epochs": 15, "pretrained": False, "device": "cpu"})
    rows.append({"model": "plain_cnn", "dataset": "eurosat", "fraction": 1.0, "coreset": "random",
                 "seed": 0, "test_accuracy": 0.96, "image_size": 32, "epochs": 15,
                 "pretrained": False, "device": "cpu"})
    df = pd.DataFrame(rows)
    paper = pd.DataFrame([
        {"model": m, "coreset": c, "dataset": "eurosat", "fraction": 0.10, "accuracy": a}
        for m, c, a in (("convnext_tiny", "random", 95.0), ("convnext_tiny", "forgetting", 96.0),
                        ("swin_tiny", "random", 93.0), ("swin_tiny", "forgetting", 92.0))])
    t = table1(df, paper).set_index(["fraction", "coreset"])
    f = t.loc[(0.1, "forgetting")]
    assert f["n_seeds"] == 3 and f["mean"] == pytest.approx(88.0)  # 80 + 5 + 3
    assert f["diff_vs_random"] == pytest.approx(3.0) and f["wins"] == "3/3"
    # paired t-interval: diffs 2, 3, 4 -> sd 1, se 1/sqrt(3), t(0.975, 2) = 4.303
    assert f["ci_low"] == pytest.approx(3 - 4.303 / 3**0.5, abs=1e-3)
    assert f["ci_high"] == pytest.approx(3 + 4.303 / 3**0.5, abs=1e-3)
    m = t.loc[(0.1, "margin")]
    assert m["wins"] == "1/3" and m["ci_low"] < 0 < m["ci_high"]
    assert m["p_holm"] >= m["p"]  # Holm never makes a p-value smaller
    assert f["paper_convnext_tiny"] == 96.0 and f["paper_wins"] == "1/2"
    assert np.isnan(t.loc[(0.1, "random"), "diff_vs_random"])
    assert t.loc[(1.0, "random"), "mean"] == pytest.approx(96.0)
    assert not t["near_chance"].any() and t["chance"].iloc[0] == pytest.approx(10.0)
    proto = protocol_differences(df)
    assert proto.set_index("setting").loc["image_size", "ours"] == "32"
    with pytest.raises(ValueError, match="lacks columns"):
        table1(df.drop(columns="seed"))


def test_table1_corrects_a_regime_still_training_over_its_planned_family():
    """The quick profile plans 8 comparisons per UC Merced regime (4 selectors x 2 fractions); with one
    landed its Holm p is 8 x p, not p, and the table says how many of the family are tested."""
    from lcc_utils import runs, study
    from lcc_utils.paper_a import planned_comparisons

    nb = runs.notebook_path("04_train")
    planned = planned_comparisons(study.profile_runs(nb, "quick"), runs.notebook_defaults(nb))
    assert planned[("plain_cnn", "ucmerced", "scratch, 3000 steps")] == 8
    assert planned[("plain_cnn", "eurosat", "scratch, 3000 steps")] == 8
    assert planned[("plain_cnn", "eurosat", "scratch, 12000 steps")] == 8  # the selectors at 4x the arm's budget
    assert planned[("plain_cnn", "eurosat", "scratch, 6000 steps")] == 0  # random only: the doubling rule's test
    assert planned[("plain_cnn", "eurosat", "scratch, 24000 steps")] == 0  # random only: the rise pilot at 8x
    assert planned[("plain_cnn", "ucmerced", "pretrained, 1000 steps")] == 8
    assert planned[("plain_cnn", "eurosat", "scratch, 300 steps")] == 14  # 7 selectors x 2 fractions
    assert planned[("plain_cnn", "ucmerced", "scratch, 1000 steps")] == 0  # random only: no comparison
    rows = [{"model": "plain_cnn", "dataset": "ucmerced", "fraction": 0.05, "coreset": c, "seed": s, "steps": 3000,
             "test_accuracy": (50 + 3 * s + (4 + 2 * (s % 2) if c == "forgetting" else 0)) / 100}
            for c in ("random", "forgetting") for s in range(3)]
    alone = table1(pd.DataFrame(rows)).set_index("coreset").loc["forgetting"]
    t = table1(pd.DataFrame(rows), planned=planned).set_index("coreset").loc["forgetting"]
    assert alone["p_holm"] == pytest.approx(alone["p"]) and alone["holm_family"] == 1
    assert t["p_holm"] == pytest.approx(min(1.0, 8 * t["p"])) and t["p"] < 0.05 < t["p_holm"]
    assert (t["holm_family"], t["tested"]) == (8, 1)


def test_table1_counts_the_pairs_that_fine_tuned_one_backbone():
    """Pretrained runs record their backbone's weights hash; a rebuilt backbone (another machine) differs."""
    rows = []
    for method, shas in {"random": "aaaa", "forgetting": ["aaaa", "aaaa", "bbbb"]}.items():
        for seed in range(3):
            rows.append({"model": "plain_cnn", "dataset": "ucmerced", "fraction": 0.05, "coreset": method,
                         "seed": seed, "test_accuracy": 0.5 + 0.01 * seed, "image_size": 32, "steps": 1000,
                         "backbone_run": {"dataset": "eurosat", "fraction": 1.0},
                         "backbone_state_sha256": shas if isinstance(shas, str) else shas[seed]})
    df = pd.DataFrame(rows)
    t = table1(df).set_index("coreset")
    assert t.loc["forgetting", "pairs_same_backbone"] == "2/3"
    assert "pairs_same_backbone" not in table1(df.drop(columns="backbone_state_sha256"))


def test_pretraining_gain_pairs_seeds_and_tests_a_second_look_at_half_the_error_rate():
    from lcc_utils.paper_a import pretraining_gain

    rng = np.random.default_rng(0)
    gains = {0.05: [8.0, 5.0, 11.0, 6.0, 9.0], 0.1: [-3.0, 9.0, 4.0, 12.0, 7.0, 6.0, 2.0, 10.0, 5.0, 8.0]}
    rows = []
    for fraction, g in gains.items():
        for seed, d in enumerate(g):
            base = 50 + 10 * rng.random()  # seeds differ; the pair shares its split and coreset
            for bb, acc in (({"dataset": "eurosat", "fraction": 1.0}, base + d), ({}, base)):
                rows.append({"model": "plain_cnn", "dataset": "ucmerced", "coreset": "random", "fraction": fraction,
                             "seed": seed, "steps": 1000, "backbone_run": bb, "weights": "",
                             "test_accuracy": acc / 100})
    # a pretrained run without its scratch twin is not paired
    rows.append({**rows[0], "seed": 99, "test_accuracy": 0.99})
    out = pretraining_gain(pd.DataFrame(rows)).set_index("fraction")
    first, second = out.loc[0.05], out.loc[0.1]
    assert first["n_seeds"] == 5 and first["look"] == 1 and first["ci_level"] == pytest.approx(95.0)
    assert first["gain"] == pytest.approx(7.8) and first["wins"] == "5/5" and first["shown"]
    # 10 seeds: a second look, tested at 0.025 with a 97.5 % interval (wider than a 95 % one)
    d = np.array(gains[0.1])
    half = student_t.ppf(0.9875, 9) * d.std(ddof=1) / np.sqrt(10)
    assert second["look"] == 2 and second["alpha"] == pytest.approx(0.025)
    assert second["ci_low"] == pytest.approx(d.mean() - half) and second["ci_high"] == pytest.approx(d.mean() + half)
    assert second["wins"] == "9/10" and second["shown"] == (d.mean() - half > 0)
    assert out["budget"].eq("1000 steps").all()
    assert list(out["status"]) == ["tested", "tested"]


def test_pretraining_gain_leaves_a_second_look_pending_until_its_planned_pairs_are_in():
    from lcc_utils.paper_a import pretraining_gain

    rows = []
    for seed, d in enumerate([9.0, 8.0, 10.0, 7.0, 9.0, 8.0, 11.0, 9.0, 12.0, 10.0, 9.0, -40.0]):
        for bb, acc in (({"dataset": "eurosat", "fraction": 1.0}, 60 + d), ({}, 60.0)):
            rows.append({"model": "plain_cnn", "dataset": "ucmerced", "coreset": "random", "fraction": 0.1,
                         "seed": seed, "steps": 1000, "backbone_run": bb, "weights": "", "test_accuracy": acc / 100})
    df = pd.DataFrame(rows)
    # 8 of the 10 planned pairs: a clear gain, yet no interval, p or "shown" (it is not yet the planned test)
    eight = pretraining_gain(df[df["seed"] < 8]).iloc[0]
    assert eight["status"] == "pending (8 of 10 planned pairs)" and eight["n_seeds"] == 8
    assert eight["gain"] == pytest.approx(8.875) and np.isnan(eight["ci_low"]) and np.isnan(eight["p"])
    assert not eight["shown"]
    # 12 pairs: tested on the planned first 10 only (seed 11's -40 would sink it)
    full = pretraining_gain(df).iloc[0]
    assert full["status"] == "tested" and full["n_seeds"] == 10 and full["gain"] == pytest.approx(9.3)
    assert full["shown"] and full["wins"] == "10/10"


def test_budget_doubling_pairs_seeds_and_calls_a_budget_converged_only_below_the_margin():
    from lcc_utils.paper_a import budget_doubling

    gains = {0.05: [0.2, 0.4, 0.3], 0.1: [0.5, 2.5, 1.2]}  # points bought by twice the steps
    rows = []
    for fraction, g in gains.items():
        for seed, d in enumerate(g):
            base = 85.0 + seed  # seeds differ; the pair shares its split and coreset
            for steps, acc in ((3000, base), (6000, base + d)):
                rows.append({"model": "plain_cnn", "dataset": "eurosat", "coreset": "random", "fraction": fraction,
                             "seed": seed, "steps": steps, "backbone_run": {}, "weights": "",
                             "test_accuracy": acc / 100})
    # 300 steps has no 600-step twin, and a full-data run is never a coreset budget: neither is paired
    rows.append({**rows[0], "steps": 300, "test_accuracy": 0.7})
    rows.append({**rows[0], "fraction": 1.0, "steps": 0, "epochs": 15})
    out = budget_doubling(pd.DataFrame(rows)).set_index("fraction")
    assert len(out) == 2 and (out["steps"] == 3000).all() and (out["doubled_steps"] == 6000).all()
    small, large = out.loc[0.05], out.loc[0.1]
    assert small["gain"] == pytest.approx(0.3) and small["wins"] == "3/3" and small["status"] == "tested"
    # 0.3 +- 0.1 points: the one-sided upper bound (t(0.95, 2) = 2.92) sits far below 1 point
    assert small["upper_one_sided_95"] == pytest.approx(0.3 + student_t.ppf(0.95, 2) * 0.1 / np.sqrt(3))
    assert small["converged"] and small["p_below_margin"] < 0.05
    # a mean gain above the margin is not converged, whatever its interval
    assert large["gain"] == pytest.approx(1.4) and not large["converged"] and large["p_below_margin"] > 0.5
    # two of three planned pairs: a reading, not a test
    two = budget_doubling(pd.DataFrame([r for r in rows if r["seed"] < 2])).set_index("fraction").loc[0.05]
    assert two["status"] == "pending (2 of 3 planned pairs)" and two["gain"] == pytest.approx(0.3)
    assert np.isnan(two["ci_low"]) and np.isnan(two["p_below_margin"]) and not two["converged"]
    # a chain of budgets is tested link by link: 6000 -> 12000 is its own check, pending at 2 pairs
    chain = [{**r, "steps": 12000, "test_accuracy": r["test_accuracy"] + 0.001} for r in rows
             if r["steps"] == 6000 and r["fraction"] == 0.05 and r["seed"] < 2]
    links = budget_doubling(pd.DataFrame(rows + chain))
    link = links[links["steps"] == 6000].iloc[0]
    assert len(links) == 3 and link["doubled_steps"] == 12000 and link["gain"] == pytest.approx(0.1)
    assert link["status"] == "pending (2 of 3 planned pairs)" and link["mean_steps"] == pytest.approx(85.8)


def test_convergence_needs_every_seed_below_one_point_and_three_seeds(tmp_path):
    from lcc_utils.paper_a import convergence_table

    # validation at 70 % of the steps, then at the end: the rise over the last 30 % in points
    rises = {("random", 0): 0.5, ("random", 1): 0.9, ("random", 2): 1.3, ("margin", 0): 0.2,
             ("margin", 1): 0.4, ("margin", 2): 0.6, ("ccs", 0): 0.1}
    rows = []
    for (coreset, seed), rise in rises.items():
        folder = tmp_path / f"{coreset}-{seed}"
        folder.mkdir()
        pd.DataFrame({"step": [6000, 8400, 12000], "val_accuracy": [0.80, 0.88, 0.88 + rise / 100]}).to_csv(
            folder / "history.csv", index=False)
        rows.append({"dataset": "eurosat", "model": "plain_cnn", "coreset": coreset, "fraction": 0.05,
                     "seed": seed, "steps": 12000, "weights": "random init", "run_dir": str(folder),
                     "coreset_train_accuracy": 1.0})
    out = convergence_table(pd.DataFrame(rows)).set_index("coreset")
    assert (out["regime"] == "scratch, 12000 steps").all()
    # random's median rise (0.9) is below 1 point, but one of its runs rose 1.3: not converged
    assert out.loc["random", "val_rise_median"] == pytest.approx(0.9)
    assert out.loc["random", "val_rise_max"] == pytest.approx(1.3) and out.loc["random", "converged"] is False
    assert out.loc["margin", "converged"] is True
    # one seed below 1 point is no verdict
    assert out.loc["ccs", "n_seeds"] == 1 and out.loc["ccs", "converged"] is None
    # a run without its history has no rise, and its cell no verdict
    (tmp_path / "margin-2" / "history.csv").unlink()
    assert convergence_table(pd.DataFrame(rows)).set_index("coreset").loc["margin", "converged"] is None


def test_rise_window_names_the_share_of_steps_it_spans_when_no_validation_falls_on_the_cut(tmp_path):
    """EuroSAT at 10 % validates at 60.5 % and 70.5 % of the steps, not at 70 %: the recorded rise
    (from the last validation at or before the cut) spans 39.5 % of the run, the inner one 29.5 %."""
    from lcc_utils.paper_a import convergence_table, rise_span, val_rise

    h = pd.DataFrame({"step": [2418, 7254, 8463, 12000], "val_accuracy": [0.70, 0.90, 0.925, 0.93]})
    assert val_rise(h) == pytest.approx(3.0) and rise_span(h) == pytest.approx(0.3955, abs=1e-3)
    assert val_rise(h, anchor="after") == pytest.approx(0.5)
    assert rise_span(h, anchor="after") == pytest.approx(0.2948, abs=1e-3)
    on_cut = pd.DataFrame({"step": [8400, 12000], "val_accuracy": [0.88, 0.89]})
    assert val_rise(on_cut) == val_rise(on_cut, anchor="after") and rise_span(on_cut) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="anchor"):
        val_rise(h, anchor="nearest")
    rows = []
    for seed in range(3):
        folder = tmp_path / f"random-{seed}"
        folder.mkdir()
        h.to_csv(folder / "history.csv", index=False)
        rows.append({"dataset": "eurosat", "model": "plain_cnn", "coreset": "random", "fraction": 0.1,
                     "seed": seed, "steps": 12000, "weights": "random init", "run_dir": str(folder)})
    out = convergence_table(pd.DataFrame(rows)).iloc[0]
    # the verdict depends on the window here, and the table shows both
    assert (out["converged"], out["converged_inner"]) == (False, True)
    assert out["window_max"] == pytest.approx(0.3955, abs=1e-3)
    assert out["window_inner_min"] == pytest.approx(0.2948, abs=1e-3)


def test_holm_adjusts_in_order_and_skips_nan():
    adj = holm([0.01, 0.04, np.nan, 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06)
    assert adj[1] == pytest.approx(0.06) and np.isnan(adj[2])


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
    from lcc_utils.coresets import SCORES, coreset_indices, get_scores, score_dataset

    monkeypatch.setenv("LCC_CACHE_DIR", str(tmp_path))
    ds, split = tiny_dataset()
    out = score_dataset(ds, split, scoring_model="lightweight_cnn", scoring_epochs=3,
                        image_size=None, device="cpu", batch_size=16)
    assert set(out) == set(SCORES)
    f, m = out["forgetting_events"], out["margin"]
    assert f.scores.shape == (60,) and f.scores.max() <= 4  # epochs + 1 for never learned
    assert out["misclassified"].scores.max() <= 3
    assert np.all((m.scores >= 0) & (m.scores <= 1))
    share = f.meta["never_learned_share"]
    assert 0 <= share <= 1 and share == pytest.approx((out["misclassified"].scores == 3).mean())
    assert set(f.meta["never_learned_per_class"]) == {"a", "b", "c"}
    assert f.meta["seconds"] > 0 and f.meta["scoring_epochs"] == 3
    again = score_dataset(ds, split, scoring_model="lightweight_cnn", scoring_epochs=3,
                          image_size=None, device="cpu", batch_size=16)
    assert np.array_equal(again["margin"].scores, m.scores)  # same seed, same scores
    assert np.array_equal(again["aum"].scores, out["aum"].scores)
    target = {"model": "lightweight_cnn", "image_size": None, "epochs": 4, "batch_size": 16,
              "recipe": "paper_a"}
    sc, path, computed = get_scores(ds, split, "margin", "lightweight_cnn", 2, None, 0, "cpu",
                                    target=target)
    assert computed and path.exists()
    assert sc.meta["target_seconds_estimate"] > 0 and sc.meta["cost_ratio"] > 0
    assert path.with_name(path.name.replace("margin", "forgetting_events")).exists()
    _, _, computed = get_scores(ds, split, "forgetting", "lightweight_cnn", 2, None, 0, "cpu")
    assert not computed
    idx, info = coreset_indices(ds, split, "ccs", 0.1, seed=0, scoring_model="lightweight_cnn",
                                scoring_epochs=2, image_size=None, device="cpu")
    assert len(idx) == 6 and np.isin(idx, split.train).all() and not info["scores_computed"]


def test_a_proxy_too_short_for_forgetting_is_refused():
    from lcc_utils.coresets import score_dataset

    ds, split = tiny_dataset()
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError, match="scoring_epochs="):
            score_dataset(ds, split, scoring_model="lightweight_cnn", scoring_epochs=bad,
                          image_size=None, device="cpu")


def test_score_plots_return_figures():
    from matplotlib.figure import Figure

    from lcc_utils.coresets import plot_score_distributions

    labels = np.repeat(np.arange(3), 20)
    rng = np.random.default_rng(0)
    counts = CoresetScores("forgetting_events", rng.integers(0, 5, 60).astype(float), np.arange(60),
                           labels, {"scoring_epochs": 3, "dataset": "tiny"})
    fig = plot_score_distributions(counts, ["a", "b", "c"])
    assert isinstance(fig, Figure)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["0", "1", "2", "3", "never learned"]  # epochs + 1 = 4
    margins = CoresetScores("margin", rng.random(60), np.arange(60), labels, {})
    assert isinstance(plot_score_distributions(margins, ["a", "b", "c"]), Figure)
