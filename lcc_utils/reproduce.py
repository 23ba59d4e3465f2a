"""``make reproduce``: re-derive the committed runs of a profile and say how far each metric moved.

The committed run folders are the study's claims. This driver re-executes them (all of a
profile's committed runs, or the stages named with ``--only``) into a **scratch runs root** (never
the committed one), through the same study driver and Dask cluster as ``make study``, then
compares every metric of each reproduced ``metrics.json`` with the committed one and writes a
report: ``report.csv`` (run, metric, kind, committed, reproduced, difference, tolerance, status),
``summary.json`` and ``report.png``.

Tolerances, per metric kind (first matching rule of :data:`TOLERANCES`, by metric name):

* ``timing`` (seconds, throughput, cost ratios measured by timing): machine load, not results;
  reported, never compared. ``location`` (``scores_file``: a cache path): not a result either.
* ``exact``: integers, strings, booleans and hashes (counts, split and data hashes, sizes).
  Same data and code give the same value on any machine.
* ``points`` (accuracies in percent, e.g. Table 1's means) and ``rate`` (accuracy, kappa, F1 ...
  in [0, 1]): absolute tolerances. **Why not zero:** CPU training is bit-identical on one machine
  (``training.CPU_TRAIN_THREADS``), but another processor's float kernels sum in another order,
  and SGD amplifies those last-bit differences into a different trajectory (issue 13 measured
  37.59 % -> 37.80 % for one committed run on another machine). A rerun on another CPU is then
  another draw of that noise, so a ``rate`` may move by up to :data:`RATE_SE` binomial standard
  errors at the run's evaluation size (``n_test`` of the same ``metrics.json``; at least
  :data:`RATE_FLOOR`), or by :data:`RATE_DEFAULT` where the size is not recorded. ``selection``
  (``best_val_*``: measured on small validation sets, n unknown) gets its own wider tolerance.
  These were checked against a measurement of the effect on this machine (the same runs with
  another summation order, ``LCC_CPU_THREADS=2``; docs/reproducibility.md).
* ``float``: any other real number, relative tolerance.

A reproduction computes every derived product again in a cache of its own (coreset scores,
splits, patch sets): only the decoded images and the file fingerprints, keyed by the data's
content, are shared with the project's cache.
* ``pvalue``: p-values of tests over 3 seeds swing widely with small changes; absolute.

``--exact`` sets every tolerance to zero: the check for a rerun on the machine that made the
committed runs, where everything but timings must be identical.

Usage: ``python -m lcc_utils.reproduce --profile smoke [--only 04] [--jobs 2] [--exact]
[--into DIR] [--report DIR]`` (``make reproduce PROFILE=smoke``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from .cluster import CLUSTERS
from .paths import atomic_write, cache_dir, project_root, resolve_data_dir
from .runs import (
    ADDED_METRICS,
    LOCATION_METRICS,
    TIMING_METRICS,
    notebook_path,
    notebook_stage,
    read_run_json,
    resolve_params,
    run_dir,
)
from .study import PROFILES, READS, dispatch, prepare_data, profile_runs_root, study_plan

#: Metric names measured by a clock, and those naming a local file: reported, never compared
#: (the same rule as a rerun of a finished run, :data:`lcc_utils.runs.NOT_COMPARED`).
TIMING, LOCATION = TIMING_METRICS, LOCATION_METRICS
#: (pattern on a real-valued metric's name, kind, tolerance); the first match decides. Integers,
#: strings, booleans and lists are ``exact`` unless named in :data:`TRAJECTORY`.
TOLERANCES: list[tuple[str, str, float]] = [
    (r"(^|_)(p|p_holm|pvalue|p_value|mcnemar_p)$", "pvalue", 0.25),
    # "_pp": percentage points (paper B's ablation differences and their CIs)
    (r"acc_mean|acc_std|diff_vs_random|diff_vs_fp32|ci_low|ci_high|(^|_)accuracy_cr|fp32_accuracy|best_accuracy"
     r"|_pp$", "points", 3.0),
    (r"^best_val_", "selection", 0.08),
    # validation accuracy gained over a run's last 30 % of steps, in points: two readings of a small
    # validation set (UC Merced: 168 images, 0.6 points each), so best_val_'s 0.08 in points
    (r"val_rise", "selection_points", 8.0),
    (r"acc|kappa|f1|precision|recall|(^|_)oa($|_)|agreement|share|rate|iou|margin|aum|loss|mean|std",
     "rate", 0.03),
    (r".", "float", 0.05),
]
#: ``rate`` tolerance where the evaluation size n is known: RATE_SE binomial standard errors
#: sqrt(p (1 - p) / n), at least RATE_FLOOR; RATE_DEFAULT (the rule above) where it is not.
RATE_SE, RATE_FLOOR, RATE_DEFAULT = 2.0, 0.01, 0.03


def rate_tolerance(value: float, n: int | None, n_classes: int | None = None, macro: bool = False) -> float:
    """Tolerance of a [0, 1] metric measured on ``n`` independent images (None: unknown).

    A ``macro`` average (macro F1, ...) is the mean of ``n_classes`` per-class values, each
    measured on about ``n / n_classes`` images: its binomial error is that of the smaller sample
    (the first cross-processor rerun of the smoke forgetting run: macro F1 0.098 -> 0.157 at
    n = 182 over 10 classes, test accuracy 0.203 -> 0.225). Without ``n_classes`` a macro average
    gets :data:`RATE_DEFAULT`.
    """
    if macro:
        n = n // n_classes if n and n_classes else None
    if not n:
        return RATE_DEFAULT
    p = min(max(abs(float(value)), 0.05), 0.95)
    return max(RATE_FLOOR, RATE_SE * math.sqrt(p * (1 - p) / n))


#: Integers that follow the training trajectory (the epoch whose validation was best, the epochs
#: an early stop left): a different float order can move them by a few validations.
TRAJECTORY = (r"best_epoch$|epochs_run$", 3)
#: ... and ``best_epoch`` by up to this share of the run's ``epochs_run`` where that is more: a
#: step-budget run on a small coreset has hundreds of 3-batch "epochs", and the best of a flat,
#: noisy validation curve can sit anywhere on its plateau (the first rerun on another processor:
#: 272 -> 306 of 334 epochs, test accuracy within its tolerance).
TRAJECTORY_SHARE = 0.2


def metric_kind(name: str, value: object) -> tuple[str, float | None]:
    """The kind of a metric and its tolerance (absolute; relative for ``float``; None: not compared)."""
    low = name.lower()
    if re.search(TIMING, low):
        return "timing", None
    if re.search(LOCATION, low):
        return "location", None
    if re.search(TRAJECTORY[0], low) and isinstance(value, int):
        return "trajectory", TRAJECTORY[1]
    if isinstance(value, bool) or not isinstance(value, float):
        return "exact", 0.0
    for pattern, kind, tol in TOLERANCES:
        if re.search(pattern, low):
            return kind, tol
    raise AssertionError("the last rule matches everything")


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested metrics as ``{"a.b": value}``; lists stay values (compared as a whole)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def n_classes_of(run_dir: str | os.PathLike) -> int | None:
    """Classes a run evaluated: the rows of its ``per_class.csv`` (None where it wrote none)."""
    p = Path(run_dir) / "per_class.csv"
    return len(pd.read_csv(p)) if p.is_file() else None


def processor() -> str:
    """This machine's processor and torch build, as far as CPU results depend on them.

    CPU training is bit-identical where this string is (``training.CPU_TRAIN_THREADS``), and
    another draw of the last-bit noise where it is not: the expected metrics of the notebook tests
    name the one they were written on, and are compared exactly only there.
    """
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}; torch {torch.__version__}; {torch.backends.cpu.get_cpu_capability()}"


def compare_metrics(committed: dict, reproduced: dict, exact: bool = False,
                    n_classes: int | None = None) -> pd.DataFrame:
    """One row per metric of either side: kind, values, difference, tolerance and status.

    ``n_classes``: the classes the run evaluated (:func:`n_classes_of`), for macro averages.

    Status: ``identical``, ``within`` (inside the tolerance), ``FAIL`` (outside it, or present on
    one side only), ``not compared`` (timings) or ``added since`` (a metric of
    :data:`lcc_utils.runs.ADDED_METRICS` that the committed run predates).
    """
    a, b = flatten(committed), flatten(reproduced)
    n_test = a.get("n_test") if isinstance(a.get("n_test"), int) else None
    epochs = a.get("epochs_run") if isinstance(a.get("epochs_run"), int) else None
    rows = []
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name), b.get(name)
        kind, tol = metric_kind(name, va if name in a else vb)
        if kind == "rate" and isinstance(va, (int, float)):
            tol = rate_tolerance(va, n_test, n_classes, macro="macro" in name.lower())
        if kind == "trajectory" and name.lower().endswith("best_epoch") and epochs:
            tol = max(tol, TRAJECTORY_SHARE * epochs)
        diff = None
        if name not in a and name in ADDED_METRICS:
            status = "added since"  # the committed run predates this metric
        elif name not in a or name not in b:
            status = "FAIL"
            kind = f"{kind} (missing)"
        elif tol is None:
            status = "not compared"
        elif va == vb or (isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb)):
            status, diff = "identical", 0.0 if kind != "exact" else None
        elif kind == "exact" or exact or not isinstance(vb, (int, float)) or isinstance(vb, bool) or (
                not isinstance(va, (int, float)) or isinstance(va, bool)):
            status = "FAIL"
            diff = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        else:
            diff = float(vb) - float(va)
            limit = tol * max(abs(float(va)), 1e-12) if kind == "float" else tol
            status = "within" if abs(diff) <= limit else "FAIL"
        rows.append({"metric": name, "kind": kind, "committed": va, "reproduced": vb, "difference": diff,
                     "tolerance": 0.0 if exact and tol is not None else tol,
                     "relative": kind == "float", "status": status})
    return pd.DataFrame(rows)


def _copy_run(src: Path, dst: Path) -> None:
    """Copy a committed run folder (its small files) so a later stage can read it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "*.lcc", "*.pt", "*.npy"))


def reproduce(profile: str, only: list[str] | None = None, jobs: int = 1, cluster: str = "local",
              address: str | None = None, exact: bool = False, into: str | os.PathLike | None = None,
              data_dir: str | None = None, match: str | None = None) -> tuple[pd.DataFrame, dict, Path]:
    """Re-execute the committed runs of ``profile`` into a scratch root and compare their metrics.

    Returns the report table, its summary and the scratch root. Runs of the profile that are not
    committed are listed in the summary (``not_committed``), not run. Stages that a selected stage
    reads but that are not selected are copied from the committed runs into the scratch root.
    ``match`` (a regular expression) keeps only the runs whose ``<stage>/<folder>`` it matches.
    """
    committed_root = profile_runs_root(profile)
    scratch = Path(into) if into else project_root() / "cache" / "reproduce" / (
        f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}")
    scratch = scratch.resolve()
    if scratch == committed_root.resolve():
        raise ValueError(f"into={scratch} is the committed runs root; reproduce into a scratch folder")
    plan = study_plan(profile, only)
    if match:
        plan = [(nb, p) for nb, p in plan if re.search(match, f"{notebook_stage(nb)}/"
                                                       f"{run_dir(notebook_stage(nb), resolve_params(nb, p)).name}")]
    present, missing = [], []
    for nb, params in plan:
        folder = committed_root / notebook_stage(nb) / run_dir(notebook_stage(nb), resolve_params(nb, params)).name
        (present if (folder / "metrics.json").is_file() else missing).append((nb, params, folder))
    if not present:
        raise FileNotFoundError(f"no committed run of profile {profile!r} under {committed_root}"
                                + (f" for stages {only}" if only else "") + "; nothing to reproduce")
    # Earlier stages the selected ones read, taken as committed.
    selected = {nb.stem[:2] for nb, _, _ in present}
    upstream = {s for st in selected for s in READS.get(st, ()) if s not in selected}
    copied = []
    for nb, params in study_plan(profile, sorted(upstream)) if upstream else []:  # [] would mean "all"
        stage = notebook_stage(nb)
        src = committed_root / stage / run_dir(stage, resolve_params(nb, params)).name
        dst = scratch / stage / src.name
        if (src / "metrics.json").is_file() and not dst.exists():
            _copy_run(src, dst)
            copied.append(str(dst.relative_to(scratch)))
    # A run that starts from another run of its own stage (04's backbone_run) reads that run as
    # committed when the selection leaves it out (its model is then retrained from its params).
    chosen = {f.name for _, _, f in present}
    for nb, params, _ in present:
        ref = resolve_params(nb, params).get("backbone_run")
        if not ref:
            continue
        bb_nb = notebook_path("04_train")
        src = committed_root / "train" / run_dir("train", resolve_params(bb_nb, dict(ref))).name
        dst = scratch / "train" / src.name
        if src.name not in chosen and (src / "metrics.json").is_file() and not dst.exists():
            _copy_run(src, dst)
            copied.append(str(dst.relative_to(scratch)))
    # A reproduction re-derives everything a run derives: it gets a cache of its own, so no coreset
    # score, split or patch set computed earlier (e.g. under another LCC_CPU_THREADS, which the
    # cache keys do not record) is served to it. Only the decoded images and the fingerprint
    # index are shared: both are keyed by the data's content and hold nothing computed.
    cache = scratch / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for shared in ("decoded", "fingerprints"):
        src, dst = cache_dir() / shared, cache / shared
        if src.is_dir() and not dst.exists():
            dst.symlink_to(src, target_is_directory=True)
    # The kernels (and the Dask workers, which inherit this environment) write into the scratch
    # root and its cache, and publish nothing.
    os.environ["LCC_CACHE_DIR"] = str(cache)
    os.environ["LCC_RUNS_DIR"] = str(scratch)
    os.environ.pop("LCC_PUBLISH_FIGURES", None)
    os.environ["LCC_FIGURES_DIR"] = str(scratch / "figures")
    root = resolve_data_dir(data_dir)
    t0 = time.perf_counter()
    done = dispatch([(nb, p) for nb, p, _ in present], str(root), jobs, cluster, address)
    wall = time.perf_counter() - t0
    tables = []
    for (nb, _params, folder), (_, row) in zip(present, done.iterrows(), strict=True):
        new = Path(row["run_dir"])
        t = compare_metrics(read_run_json(folder, "metrics.json"), read_run_json(new, "metrics.json"),
                            exact=exact, n_classes=n_classes_of(new))
        t.insert(0, "run", f"{notebook_stage(nb)}/{folder.name}")
        tables.append(t)
    report = pd.concat(tables, ignore_index=True)
    counts = report["status"].value_counts().to_dict()
    summary = {
        "profile": profile, "only": only, "match": match, "exact": exact,
        "cpu_threads": int(os.environ.get("LCC_CPU_THREADS", "1")), "processor": processor(),
        "runs_reproduced": len(present),
        "runs_reexecuted": int(done["executed"].sum()), "wall_seconds": round(wall, 1),
        "jobs": jobs, "cluster": address or cluster,
        "not_committed": [f"{notebook_stage(nb)}/{f.name} {json.dumps(p, sort_keys=True)}" for nb, p, f in missing],
        "copied_upstream": copied, "metrics": {k: int(v) for k, v in sorted(counts.items())},
        "failed": [f"{r} {m}" for r, m in report.loc[report["status"] == "FAIL", ["run", "metric"]].itertuples(
            index=False)],
        "passed": "FAIL" not in counts,
        "tolerances": {**{kind: tol for _, kind, tol in TOLERANCES},
                       "trajectory": f"{TRAJECTORY[1]}; best_epoch max({TRAJECTORY[1]}, "
                                     f"{TRAJECTORY_SHARE} * epochs_run)",
                       "exact": 0.0, "rate": f"max({RATE_FLOOR}, {RATE_SE} * sqrt(p(1-p)/n_test)), "
                                             f"{RATE_DEFAULT} without n_test"},
    }
    return report, summary, scratch


def plot_report(report: pd.DataFrame, title: str = ""):
    """Stacked bars per stage: metrics identical / within tolerance / failed / not compared."""
    import matplotlib.pyplot as plt

    order = ["identical", "within", "FAIL", "not compared", "added since"]
    colors = {"identical": "#1b7837", "within": "#a6dba0", "FAIL": "#d73027", "not compared": "#bdbdbd",
              "added since": "#92c5de"}
    t = report.assign(stage=report["run"].str.split("/").str[0])
    counts = t.groupby(["stage", "status"]).size().unstack(fill_value=0).reindex(columns=order, fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(counts) + 1.4))
    left = pd.Series(0, index=counts.index)
    for status in order:
        ax.barh(counts.index, counts[status], left=left, color=colors[status], label=status)
        left += counts[status]
    ax.set_xlabel("metrics (all runs of the stage)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title(title, fontsize=9, pad=22)
    fig.tight_layout()
    return fig


def write_report(report: pd.DataFrame, summary: dict, folder: Path) -> list[Path]:
    """``report.csv``, ``summary.json`` and ``report.png`` in ``folder`` (atomically)."""
    from .plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "report.csv", report.to_csv(index=False))
    atomic_write(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    m = summary["metrics"]
    fig = plot_report(report, f"reproduce {summary['profile']}: {summary['runs_reproduced']} runs, "
                              f"{m.get('identical', 0)} identical, {m.get('within', 0)} within tolerance, "
                              f"{m.get('FAIL', 0)} failed")
    return [folder / "report.csv", folder / "summary.json", *save_figure(fig, folder / "report", ("png",))]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``make reproduce``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "smoke"), choices=PROFILES)
    ap.add_argument("--only", nargs="*", help="notebook stems or numbers to reproduce (default: all)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "1")))
    ap.add_argument("--cluster", default=os.environ.get("LCC_CLUSTER", "local"), choices=CLUSTERS)
    ap.add_argument("--scheduler", default=os.environ.get("LCC_SCHEDULER") or None)
    ap.add_argument("--match", default=None, help="only runs whose <stage>/<folder> matches this regex")
    ap.add_argument("--exact", action="store_true", help="every tolerance zero (same machine)")
    ap.add_argument("--into", default=None, help="scratch runs root (default: cache/reproduce/<profile>-<time>)")
    ap.add_argument("--report", default=None, help="report folder (default: <scratch>/report)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    prepare_data(args.data_dir)
    report, summary, scratch = reproduce(args.profile, args.only, args.jobs, args.cluster, args.scheduler,
                                         args.exact, args.into, args.data_dir, args.match)
    out = Path(args.report) if args.report else scratch / "report"
    write_report(report, summary, out)
    shown = report[report["status"] != "not compared"]
    print(shown.groupby(["kind", "status"]).size().to_string())
    if summary["failed"]:
        print("FAILED:\n  " + "\n  ".join(summary["failed"][:50]))
    print(f"reproduce: {summary['runs_reproduced']} run(s), {summary['metrics']}; report in {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
