"""The study driver on Dask: stage order, identical results to a serial run, clusters, reproduce."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from lcc_utils import cluster, reproduce, runs, study

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- stage order
def test_reads_covers_every_lookup_of_an_earlier_stage():
    """Every earlier stage a notebook reads (a ``*_run`` parameter or a ``find_run``) is in READS."""
    for nb in study.notebooks():
        code = "\n".join(c.source for c in nbformat.read(str(nb), as_version=4).cells if c.cell_type == "code")
        reads = set(study.READS.get(nb.stem[:2], ()))
        refs = study.REFERENCES.get(nb.stem[:2], {})
        for name in runs.notebook_defaults(nb):
            if name in study.SAME_STAGE_REFERENCES:  # run-level edges, tested below
                continue
            if name.endswith("_run"):
                assert name in refs, f"{nb.stem}'s {name} is not in study.REFERENCES: check_references misses it"
                if name == "backbone_run":
                    # run-level: a UC Merced 03/04 run reads a EuroSAT 04 run; stage-level READS
                    # cannot say so without a cycle (04 reads 03). Known gap, issue 25's note.
                    continue
                assert refs[name] in reads, f"{nb.stem} reads {name} but READS lacks {refs[name]}"
        for num in re.findall(r'find_run\("(\d\d)', code):
            assert num in reads, f"{nb.stem} calls find_run({num}) but READS lacks it"
    # a stage may read a later-numbered one (06 reads 07's ablation): the plan orders them, and no
    # run comes before a run it waits for (stage-level READS and run-level backbones)
    plan = study.study_plan("quick")
    for i, run in enumerate(plan):
        later = [o for o in plan[i + 1:] if study.waits_for(run, o)]
        assert not later, f"the plan runs {run[0].stem} {run[1]} before {later[0][0].stem} {later[0][1]}"


def test_a_backbone_run_is_planned_before_the_runs_that_start_from_it():
    """The quick plan: the EuroSAT full-data 04 run precedes every 03/04 run naming it as backbone_run."""
    plan = study.study_plan("quick", ["03", "04"])
    backbone = next(i for i, (nb, p) in enumerate(plan) if nb.stem.startswith("04")
                    and p.get("dataset") == "eurosat" and p.get("fraction") == 1.0 and "model" not in p)
    users = [i for i, (_, p) in enumerate(plan) if p.get("backbone_run")]
    assert users and backbone < min(users)
    bb_run = plan[backbone]
    scoring = next(r for r in plan if r[0].stem.startswith("03") and r[1].get("backbone_run"))
    assert study.waits_for(scoring, bb_run)  # run-level: the 03 scoring run needs the backbone
    assert not study.waits_for(bb_run, scoring)  # the full-data run needs no scores: no cycle
    coreset = next(r for r in plan if r[0].stem.startswith("04") and r[1].get("coreset") == "margin")
    assert study.waits_for(coreset, scoring)  # a selector's 04 run waits for the 03 runs


@pytest.mark.parametrize("profile", study.PROFILES)
def test_every_reference_of_a_profile_names_a_run_its_earlier_grid_plans(profile):
    """05's train_run, 03/04's backbone_run, 06-08's *_run, 04's scores, 09's profile: all planned."""
    study.check_references(profile)


def _paper_05_without_device() -> list[dict]:
    """The paper profile's 05 runs as they were before issue 25: train_run without 04's device."""
    plan = study.profile_runs(runs.notebook_path("05_compression"), "paper")
    assert plan and all(p["train_run"].get("device") == "cuda" for p in plan)
    return [{**p, "train_run": {k: v for k, v in p["train_run"].items() if k != "device"}} for p in plan]


def test_a_reference_the_earlier_grid_does_not_plan_is_named_with_stage_and_profile():
    """The paper bug of issue 25: 05 would have looked for 04 runs made on device 'auto'."""
    with pytest.raises(study.ProfileReferenceError) as err:
        study.check_references("paper", {"05": _paper_05_without_device()})
    msg = str(err.value)
    assert msg.startswith("24 reference(s) of profile 'paper' name no planned run")
    assert "profile 'paper': 05_compression" in msg and "names train_run=" in msg
    assert "the 'paper' grid of 04_train plans no such run" in msg
    assert "differs in device ('auto' here, 'cuda' there)" in msg


def test_scores_and_the_tables_profile_are_references_too():
    """A 04 coreset run whose scores no 03 run computes; a 09 table over another profile."""
    with pytest.raises(study.ProfileReferenceError, match=r"profile 'smoke': 04_train .* reads coreset scores"):
        study.check_references("smoke", {"03": []})
    with pytest.raises(study.ProfileReferenceError,
                       match=r"profile 'smoke': 09_paper_a_tables names profile='quick'"):
        study.check_references("smoke", {"09": [{"profile": "quick"}]})
    with pytest.raises(study.ProfileReferenceError,
                       match=r"profile 'quick': 03_coreset_scoring .* names backbone_run=.*grid of 04_train"):
        study.check_references("quick", {"04": [{"dataset": "ucmerced"}]})


def test_the_study_checks_references_before_it_runs_anything(monkeypatch, tmp_path):
    def broken(profile):
        raise study.ProfileReferenceError(f"profile {profile!r}: broken")
    monkeypatch.setenv("LCC_PUBLISH_FIGURES", "0")  # run_study sets it: restored after the test
    monkeypatch.setattr(study, "check_references", broken)
    monkeypatch.setattr(study, "dispatch", lambda *a, **k: pytest.fail("dispatched despite a broken reference"))
    with pytest.raises(study.ProfileReferenceError, match="profile 'paper': broken"):
        study.run_study("paper", str(tmp_path))


def _toy(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import json, time\nfrom lcc_utils import runs"),
        nbformat.v4.new_code_cell("value = 1  # a number\ndata_dir = ''  # where", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"run = runs.start_run(runs.notebook_params(globals()))\n{body}"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_dask_runs_a_stage_after_the_stage_it_reads(tmp_path, tmp_cache, monkeypatch):
    """Stage 05 reads every stage-04 run: on two Dask workers it starts only after both finished.

    Its kernel has lcc's allocator settings, not the ``MALLOC_TRIM_THRESHOLD_=65536`` a Dask
    nanny puts in its worker's environment.
    """
    for k in runs.KERNEL_ENV:
        monkeypatch.delenv(k, raising=False)
    slow = _toy(tmp_path / "04_toy.ipynb", "time.sleep(2)\nrun.log_metrics({'v': value, 't': time.time()})")
    late = _toy(tmp_path / "05_late.ipynb",
                "import glob, os\nfs = sorted(glob.glob(str(runs.runs_root() / 'toy' / '*' / 'metrics.json')))\n"
                "run.log_metrics({'seen': len(fs), 't0': time.time(), 'trim': os.environ['MALLOC_TRIM_THRESHOLD_'],"
                " 'last_t': max(json.load(open(f))['t'] for f in fs)})")
    plan = [(slow, {"value": 1}), (slow, {"value": 2}), (late, {})]
    monkeypatch.setitem(study.READS, "05", ("04",))
    table = study.dispatch(plan, str(tmp_path), jobs=2)
    assert table["executed"].all() and list(table["notebook"]) == ["04_toy", "04_toy", "05_late"]
    m = json.loads((Path(table["run_dir"][2]) / "metrics.json").read_text())
    assert m["seen"] == 2 and m["t0"] >= m["last_t"]
    assert m["trim"] == runs.KERNEL_ENV["MALLOC_TRIM_THRESHOLD_"]


def test_a_failed_run_is_named_and_the_others_still_run(tmp_path, tmp_cache):
    ok = _toy(tmp_path / "04_ok.ipynb", "run.log_metrics({'v': value})")
    bad = _toy(tmp_path / "04_bad.ipynb", "raise RuntimeError('boom in the notebook')")
    with pytest.raises(RuntimeError, match=r"1 of 2 run\(s\) failed: 04_bad"):
        study.dispatch([(bad, {}), (ok, {"value": 3})], str(tmp_path), jobs=2)
    assert json.loads(next((Path(runs.runs_root()) / "ok").glob("*/metrics.json")).read_text()) == {"v": 3}


def _metrics(root: Path) -> dict[str, dict]:
    out = {}
    for m in sorted(root.glob("*/*/metrics.json")):
        d = json.loads(m.read_text())
        out[f"{m.parent.parent.name}/{m.parent.name}"] = {
            k: v for k, v in d.items() if reproduce.metric_kind(k, v)[0] != "timing"}
    return out


def test_smoke_training_on_dask_is_identical_to_serial(shared_data, tmp_path, monkeypatch):
    """The smoke profile's 04 runs: two Dask workers give the serial run's metrics, bit for bit."""
    plan = study.study_plan("smoke", ["04"])
    assert len(plan) >= 2
    results = {}
    for mode, jobs in (("serial", 1), ("dask", 2)):
        monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / mode))
        table = study.dispatch(plan, str(shared_data), jobs=jobs)
        assert table["executed"].all()
        results[mode] = _metrics(tmp_path / mode)
    assert len(results["serial"]) == len(plan)
    assert results["dask"] == results["serial"]


# ----------------------------------------------------------------------------- clusters
def test_cluster_choices_and_bad_input():
    with pytest.raises(ValueError, match="unknown cluster 'kubernetes'; choose one of: local, slurm, pbs"):
        cluster.make_cluster("kubernetes")
    with pytest.raises(ValueError, match="jobs=0"):
        cluster.make_cluster("local", jobs=0)
    with pytest.raises(ValueError, match="jobs=0"):
        study.dispatch([], "", jobs=0)


def test_slurm_workers_are_single_threaded_jobs(tmp_path):
    """The SLURM path builds a job script of one single-threaded worker (nothing is submitted)."""
    pytest.importorskip("dask_jobqueue")
    import dask
    from dask_jobqueue import SLURMCluster

    # its scheduler runs here: scratch space in the test's folder, not dask-scratch-space/ in /tmp
    with dask.config.set({"temporary-directory": str(tmp_path),
                          "jobqueue.slurm.memory": "4GB", "jobqueue.slurm.walltime": "02:00:00",
                         "jobqueue.slurm.job-extra-directives": ["--gres=gpu:1"]}):
        c = SLURMCluster(cores=1, processes=1)
        try:
            script = c.job_script()
        finally:
            c.close()
    assert "#SBATCH --cpus-per-task=1" in script and "--gres=gpu:1" in script
    assert "--nthreads 1" in script and "#SBATCH -n 1\n" in script


def test_profile_runs_roots_do_not_mix(monkeypatch):
    monkeypatch.delenv("LCC_RUNS_DIR")
    assert study.profile_runs_root("quick") == ROOT / "runs"
    assert study.profile_runs_root("smoke") == ROOT / "runs" / "smoke"
    with pytest.raises(ValueError, match="unknown profile 'quik'"):
        study.profile_runs_root("quik")


# ----------------------------------------------------------------------------- reproduce
def test_compare_metrics_kinds_and_tolerances():
    committed = {"test_accuracy": 0.80, "test_kappa": 0.70, "n_test": 5400, "split_hash": "ab",
                 "train_seconds": 100.0, "cr": 9.0, "best_epoch": 10, "nested": {"oa": 0.9}}
    new = {"test_accuracy": 0.81, "test_kappa": 0.75, "n_test": 5400, "split_hash": "ab",
           "train_seconds": 250.0, "cr": 9.0, "best_epoch": 12, "nested": {"oa": 0.9}, "extra": 1}
    t = reproduce.compare_metrics(committed, new).set_index("metric")
    assert t.loc["test_accuracy", "status"] == "within" and t.loc["test_accuracy", "kind"] == "rate"
    assert t.loc["test_accuracy", "difference"] == pytest.approx(0.01)
    assert t.loc["test_kappa", "status"] == "FAIL"  # 0.05 > 2 SE at n = 5400 (0.0125)
    assert t.loc["test_accuracy", "tolerance"] == pytest.approx(2 * (0.8 * 0.2 / 5400) ** 0.5)
    assert t.loc["n_test", "status"] == "identical" and t.loc["split_hash", "kind"] == "exact"
    assert t.loc["train_seconds", "status"] == "not compared"
    assert t.loc["best_epoch", "status"] == "within" and t.loc["nested.oa", "status"] == "identical"
    assert t.loc["extra", "status"] == "FAIL"  # present on one side only
    exact = reproduce.compare_metrics(committed, new, exact=True).set_index("metric")
    assert exact.loc["test_accuracy", "status"] == "FAIL" and exact.loc["cr", "status"] == "identical"
    changed = reproduce.compare_metrics({"split_hash": "ab", "images": 910}, {"split_hash": "ac", "images": 911})
    assert set(changed["status"]) == {"FAIL"}


def test_another_processors_smoke_rerun_passes_macro_averages_and_percentage_points():
    """The first smoke reproduction on an Intel Xeon (committed on AMD EPYC): three FAILs that were
    tolerance rules, not results (docs/reproducibility.md)."""
    committed = {"test_accuracy": 0.2033, "test_macro_f1": 0.0978, "n_test": 182}
    intel = {"test_accuracy": 0.2253, "test_macro_f1": 0.1565, "n_test": 182}
    rep = reproduce.compare_metrics(committed, intel, n_classes=10).set_index("metric")
    assert set(rep["status"]) == {"within", "identical"}
    # ten per-class F1s on about 18 images each: the binomial error of 18 images, not of 182
    assert rep.loc["test_macro_f1", "tolerance"] == pytest.approx(2 * (0.0978 * 0.9022 / 18) ** 0.5)
    assert reproduce.compare_metrics(committed, intel).set_index("metric").loc["test_macro_f1", "status"] == "FAIL"
    # paper B's ablation differences are percentage points, not relative floats
    pp = reproduce.compare_metrics({"A4_vs_A2_diff_pp": 1.25, "A4_vs_A2_ci95_lo_pp": -2.60},
                                   {"A4_vs_A2_diff_pp": 1.154, "A4_vs_A2_ci95_lo_pp": -2.79}).set_index("metric")
    assert set(pp["kind"]) == {"points"} and set(pp["status"]) == {"within"}
    assert reproduce.compare_metrics({"A4_vs_A2_diff_pp": 1.25}, {"A4_vs_A2_diff_pp": 5.0}).loc[0, "status"] == "FAIL"


def test_expected_metrics_are_exact_where_written_and_kind_tolerant_elsewhere():
    from metric_check import compare_metrics as check

    expected = {"tolerance": {"abs": 0.01, "rel": 0.0}, "written_on": "cpu A",
                "same_machine_only": {"pattern": "cr9", "why": "chaotic"},
                "metrics": {"test_accuracy": 0.2033, "n_test": 182, "best_accuracy_cr9": 10.99, "model": "plain_cnn",
                            "best_epoch": 4}}
    moved = {"test_accuracy": 0.2253, "n_test": 182, "best_accuracy_cr9": 20.88, "model": "plain_cnn", "best_epoch": 5}
    # the machine that wrote the file: 0.022 is a change of result, and so is another best epoch
    on_a = check(expected, moved, here="cpu A")
    assert [p.split(":")[0] for p in on_a] == ["test_accuracy", "best_accuracy_cr9", "best_epoch"]
    # another processor: within 2 SE at n = 182, and the CR-9 number is not compared there
    assert check(expected, moved, here="cpu B") == []
    assert check({**expected, "written_on": None}, moved, here="cpu A") == []
    # ... but a real change still fails there, and strings and counts stay exact
    far = check(expected, {**moved, "test_accuracy": 0.40, "model": "resnet18", "best_epoch": 9}, here="cpu B")
    assert [p.split(":")[0] for p in far] == ["test_accuracy", "model", "best_epoch"]
    assert "another processor's rate tolerance 0.0" in far[0]


def test_rate_tolerance_scales_with_the_evaluation_size():
    assert reproduce.rate_tolerance(0.24, 182) == pytest.approx(2 * (0.24 * 0.76 / 182) ** 0.5)  # 0.063
    assert reproduce.rate_tolerance(0.99, 100_000) == reproduce.RATE_FLOOR
    assert reproduce.rate_tolerance(0.5, None) == reproduce.RATE_DEFAULT


def test_step_budget_runs_get_trajectory_and_validation_rise_tolerances_for_another_processor():
    """The first cross-processor rerun of UC Merced step-budget runs (docs/reproducibility.md)."""
    committed = {"best_epoch": 272, "epochs_run": 334, "val_rise_last30_points": 9.5238, "n_test": 420,
                 "test_accuracy": 0.6048}
    again = {"best_epoch": 306, "epochs_run": 334, "val_rise_last30_points": 5.9524, "n_test": 420,
             "test_accuracy": 0.5833}
    rep = reproduce.compare_metrics(committed, again).set_index("metric")
    assert set(rep["status"]) == {"within", "identical"}
    assert rep.loc["best_epoch", "tolerance"] == pytest.approx(66.8)
    assert rep.loc["val_rise_last30_points", "kind"] == "selection_points"
    # a few-epoch run keeps +-3 epochs, and a validation rise off by more than 8 points fails
    short = reproduce.compare_metrics({"best_epoch": 4, "epochs_run": 10}, {"best_epoch": 8, "epochs_run": 10})
    assert short.set_index("metric").loc["best_epoch", "status"] == "FAIL"
    far = reproduce.compare_metrics({"val_rise_last30_points": 9.5}, {"val_rise_last30_points": 0.5})
    assert far.loc[0, "status"] == "FAIL"


def test_metric_kinds_of_committed_metrics():
    kinds = {k: reproduce.metric_kind(k, v)[0] for k, v in {
        "eurosat_plain_cnn_ccs_0.05_acc_mean": 77.9, "eurosat_plain_cnn_ccs_0.05_diff_vs_random": -0.35,
        "cost_ratio": 0.078, "scoring_seconds": 117.5, "never_learned_share": 0.015, "p_holm": 0.03,
        "best_val_accuracy": 0.7,
        "best_cr_cr9": 9.31, "images": 910, "all_artefacts_match": True,
        "best_cr9_diff_vs_fp32": -0.35, "best_cr9_mcnemar_p_holm": 0.26,
        "t2_eurosat_resnet18_random_1_fp32_acc_mean": 95.7,
        "scores_file": "cache/coreset_scores/eurosat-b81c3a80-x.npz"}.items()}
    assert kinds == {"eurosat_plain_cnn_ccs_0.05_acc_mean": "points",
                     "eurosat_plain_cnn_ccs_0.05_diff_vs_random": "points", "cost_ratio": "timing",
                     "scoring_seconds": "timing", "never_learned_share": "rate", "p_holm": "pvalue",
                     "best_val_accuracy": "selection",
                     "best_cr_cr9": "float", "images": "exact", "all_artefacts_match": "exact",
                     "best_cr9_diff_vs_fp32": "points", "best_cr9_mcnemar_p_holm": "pvalue",
                     "t2_eurosat_resnet18_random_1_fp32_acc_mean": "points",
                     "scores_file": "location"}


def test_reproduce_refuses_the_committed_root_and_an_empty_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="is the committed runs root"):
        reproduce.reproduce("smoke", ["01"], into=tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="no committed run of profile 'smoke'"):
        reproduce.reproduce("smoke", ["01"], into=tmp_path / "scratch")


def test_reproduce_reexecutes_into_scratch_and_copies_only_upstream(tmp_path, monkeypatch):
    """Committed toy runs: reproduce re-executes them (never skips), all identical; ONLY=05 copies 04."""
    first = _toy(tmp_path / "04_toy.ipynb", "run.log_metrics({'acc': 0.25 * value, 'n': 3, 'seconds': time.time()})")
    late = _toy(tmp_path / "05_late.ipynb", "import glob\n"
                "run.log_metrics({'seen': len(glob.glob(str(runs.runs_root() / 'toy' / '*' / 'metrics.json')))})")
    monkeypatch.setattr(study, "notebooks", lambda: [first, late])
    monkeypatch.setitem(study.READS, "05", ("04",))
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "committed"))
    study.dispatch(study.study_plan("smoke"), str(tmp_path), jobs=1)
    report, summary, scratch = reproduce.reproduce("smoke", into=tmp_path / "scratch1", exact=True)
    assert summary["runs_reproduced"] == summary["runs_reexecuted"] == 2 and summary["passed"]
    assert summary["copied_upstream"] == [] and summary["failed"] == []
    assert set(report.loc[report["metric"] != "seconds", "status"]) == {"identical"}
    monkeypatch.setenv("LCC_RUNS_DIR", str(tmp_path / "committed"))
    _, summary, scratch = reproduce.reproduce("smoke", ["05"], into=tmp_path / "scratch2", exact=True)
    assert summary["runs_reexecuted"] == 1 and len(summary["copied_upstream"]) == 1 and summary["passed"]
    assert (scratch / summary["copied_upstream"][0] / "metrics.json").is_file()


def test_report_figure_and_files(tmp_path):
    report = pd.DataFrame({"run": ["train/a", "train/a", "data/b"], "metric": ["acc", "t_seconds", "n"],
                           "status": ["within", "not compared", "identical"]})
    summary = {"profile": "smoke", "runs_reproduced": 2, "metrics": {"within": 1, "identical": 1}}
    files = reproduce.write_report(report, summary, tmp_path / "rep")
    assert [f.name for f in files] == ["report.csv", "summary.json", "report.png"]
    assert all(f.stat().st_size > 0 for f in files)


# ----------------------------------------------------------------------------- paper-smoke
#: Per backbone, the runs the test executes of the paper-smoke grids: 03's scoring, 04's random
#: (05's train_run) and margin (scored by the backbone as its own proxy) coresets, 05; then 09.
PAPER_SMOKE_CORESETS = ("random", "margin")
PAPER_A_BACKBONES = ("convnext_tiny", "swin_tiny", "efficientnetv2_s", "regnety_032")


def test_paper_smoke_has_the_paper_grids_shapes():
    """Four backbones on both datasets, recipe paper_a, each its own proxy, 05 per backbone, 09 over it."""
    plan = study.study_plan("paper-smoke")
    by = {}
    for nb, p in plan:
        by.setdefault(nb.stem[:2], []).append(runs.resolve_params(nb, p))
    assert {(p["scoring_model"], p["target_model"], p["dataset"]) for p in by["03"]} == {
        (b, b, d) for b in PAPER_A_BACKBONES for d in ("eurosat", "ucmerced")}
    assert {(p["model"], p["dataset"]) for p in by["04"]} == {
        (b, d) for b in PAPER_A_BACKBONES for d in ("eurosat", "ucmerced")}
    assert all(p["recipe"] == "paper_a" and not p["pretrained"] and p["device"] == "cpu" for p in by["04"])
    assert all(p["scoring_model"] == p["model"] for p in by["04"] if p["fraction"] < 1)
    assert {p["train_run"]["model"] for p in by["05"]} == set(PAPER_A_BACKBONES)
    assert [p["profile"] for p in by["09"]] == ["paper-smoke"]
    assert not {"02", "06", "07", "08"} & set(by)  # paper B is not part of it


@pytest.mark.paper_smoke
@pytest.mark.notebooks
@pytest.mark.parametrize("backbone", PAPER_A_BACKBONES)
def test_paper_smoke_runs_03_04_05_09_on_each_backbone(backbone, tmp_path, tmp_cache, monkeypatch):
    """The paper grids' code path of one backbone (timm model, recipe paper_a, the backbone as its
    own proxy, 05's compression, 09's tables) at toy scale on synthetic EuroSAT, before any GPU hour.

    One dataset and two coresets of the profile's runs per backbone (about 5 min per backbone on
    one busy core; ``-k paper_smoke`` runs all four): all of the profile's runs, both datasets,
    four coresets and full data, are 57 notebook runs.
    """
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_fixtures import make_eurosat

    make_eurosat(tmp_path / "data", per_class=32)  # 5 % of the training split >= 10 classes
    # 05 reads paper A's Table 2 beside the data root (its budgets are given here: any CRs do)
    (tmp_path / "papers").mkdir()
    pd.DataFrame({"model": "convnext_tiny", "dataset": "ucmerced", "coreset": "random", "fraction": 1.0,
                  "method": ["adaptive_pruning", "adaptive_q", "adaptive_p_to_q"], "accuracy": 90.0,
                  "cr": [1.6, 4.6, 9.0]}).to_csv(tmp_path / "papers" / "paper_a_table2.csv", index=False)
    root = tmp_path / "runs" / "paper-smoke"
    monkeypatch.setenv("LCC_RUNS_DIR", str(root))
    # the data the later stages hash to find a run's folder (runs.find_run) is the synthetic set
    monkeypatch.setenv("LCC_DATA_DIR", str(tmp_path / "data"))
    study.check_references("paper-smoke")

    def wanted(nb: Path, p: dict) -> bool:
        ref = p.get("train_run", p)
        return nb.stem[:2] == "09" or ref.get("dataset") == "eurosat" and backbone in (
            ref.get("model"), ref.get("scoring_model")) and (
            nb.stem[:2] == "03" or ref.get("coreset") in PAPER_SMOKE_CORESETS and ref.get("fraction") == 0.1)

    plan = [(nb, p) for nb, p in study.study_plan("paper-smoke", ["03", "04", "05", "09"]) if wanted(nb, p)]
    assert [nb.stem[:2] for nb, _ in plan] == ["03", "04", "04", "05", "09"]
    table = study.dispatch(plan, str(tmp_path / "data"), jobs=1)
    assert table["executed"].all()
    scored = json.loads(next((root / "coresets").glob("*/metrics.json")).read_text())
    trained = runs.collect_runs("train").set_index("coreset")
    assert set(trained["model"]) == {backbone} and (trained["recipe"] == "paper_a").all()
    assert set(trained.index) == set(PAPER_SMOKE_CORESETS)
    assert trained.loc["margin", "train_size"] == scored["margin_10pct"]  # 04 trains on 03's coreset
    assert trained["test_accuracy"].between(0, 1).all()
    assert len(list((root / "compression").glob("*/metrics.json"))) == 1
    m09 = json.loads(next((root / "paper_a_tables").glob("*/metrics.json")).read_text())
    assert (m09["runs_found"], m09["runs_expected"]) == (2, 40)
    assert (m09["compression_runs_found"], m09["compression_runs_expected"]) == (1, 8)
