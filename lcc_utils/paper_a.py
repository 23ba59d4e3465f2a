"""Paper A's study: the glue between its notebooks and the engines, and its tables.

Where to find what (the engines know nothing of the study):

* notebook 03 (coreset scoring): :func:`scoring_record`;
* notebook 04 (training on a coreset): :class:`TrainingSetup`, :func:`prepare_training`,
  :func:`run_record`, and :func:`retrain_run` for a run whose checkpoint is gone;
* **Table 1** (test accuracy per backbone x dataset x coreset x fraction): :func:`table1`,
  :func:`protocol_differences`, :func:`plot_table1`, read from the ``runs/train`` folders;
* notebook 05 and **Tables 2-3** (compression): :class:`CompressionSetup`,
  :func:`prepare_compression`, :func:`table2`, :func:`table3`, :func:`paper_reference`,
  :func:`results_summary`, :func:`collect_results` (the engine is :mod:`lcc_utils.compression`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from lcc_utils import coresets, data, models, training
from lcc_utils.compression import ADAPTIVE_METHODS
from lcc_utils.constants import PAPER_A_PQ_BEST, PAPER_A_PRUNING_LEVEL_CR
from lcc_utils.coresets import CORESETS
from lcc_utils.paths import project_root, resolve_path, runs_root


# --------------------------------------------------------------------------- notebook 03
def scoring_record(
    scores: coresets.CoresetScores, scores_file: str | os.PathLike, selected: dict[float, np.ndarray]
) -> dict[str, Any]:
    """The metrics of a scoring run: score file (relative to the project), cost, sizes.

    Everything here is read from the score file, so a rerun of a cached scoring logs
    identical metrics.
    """
    path = Path(scores_file).resolve()
    try:
        shown = str(path.relative_to(project_root()))
    except ValueError:
        shown = str(path)
    rec: dict[str, Any] = {
        "scores_file": shown,
        "scoring_seconds": round(float(scores.meta.get("seconds", 0.0)), 2),
        "scoring_device": scores.meta.get("device"),
        "n_scored": int(len(scores.scores)),
        "score_mean": round(float(scores.scores.mean()), 6),
        "proxy_final_val_accuracy": scores.meta.get("proxy_final_val_accuracy"),
    }
    rec.update({f"coreset_{100 * f:g}pct": int(len(idx)) for f, idx in selected.items()})
    return rec




# --------------------------------------------------------------------------- notebook 04
@dataclass
class TrainingSetup:
    """Everything a paper A training run needs, built from the notebook's parameters.

    Attributes:
        ds: The dataset.
        split: Its train/val/test split (seeded by ``seed``).
        train_indices: Dataset indices actually trained on (the coreset).
        coreset_info: Scores file and scoring cost of the coreset.
        loaders: ``{"train", "val", "test"}`` batch loaders.
        model: The freshly initialised model (seeded).
        recipe: The training recipe, with the run's batch size.
        weights_description: Where the initial weights came from.
        epochs: The epoch budget.

    """

    ds: Any
    split: Any
    train_indices: np.ndarray
    coreset_info: dict[str, Any]
    loaders: dict[str, Any]
    model: nn.Module
    recipe: training.Recipe
    weights_description: str
    epochs: int


def prepare_training(
    *,
    dataset: str,
    data_dir: str,
    model: str,
    coreset: str,
    fraction: float,
    seed: int,
    epochs: int,
    image_size: int,
    batch_size: int,
    device: str,
    pretrained: bool,
    weights: str,
    recipe: str,
    scoring_model: str,
    scoring_epochs: int,
) -> TrainingSetup:
    """Build data, coreset, loaders and model of a training run from notebook 04's parameters.

    Takes exactly the names of 04's parameters cell and no defaults (the notebook's cell is
    the one source of defaults); a misspelled or unknown name is a ``TypeError`` naming it.
    Notebook 04 and :func:`retrain_run` both go through here, so a rebuilt model is trained on
    exactly the data a run used. The split is seeded with ``seed`` (each seed is a different
    80/20 split); the coreset is selected on the split's training part.
    """
    rec = training.get_recipe(recipe)
    if batch_size:
        rec = replace(rec, batch_size=int(batch_size))
    ds = data.load_dataset(dataset, data_dir=data_dir or None)
    split = data.get_split(ds, seed=seed)
    train_idx, info = coresets.coreset_indices(
        ds, split, coreset, fraction, seed=seed, scoring_model=scoring_model,
        scoring_epochs=scoring_epochs, image_size=image_size, device=device)
    loaders = data.make_loaders(ds, split, image_size=image_size, batch_size=rec.batch_size,
                                seed=seed, train_indices=train_idx)
    weights_path = resolve_path(weights) if weights not in (None, "") else None
    training.seed_everything(seed)
    net = models.create_model(model, num_classes=len(ds.classes), in_chans=ds.images.shape[-1],
                              pretrained=bool(pretrained), weights=weights_path,
                              image_size=image_size)
    return TrainingSetup(ds, split, train_idx, info, loaders, net, rec,
                         models.describe_weights(bool(pretrained), weights_path), int(epochs))


def run_record(result: training.TrainResult, test: Mapping[str, Any], setup: TrainingSetup) -> dict[str, Any]:
    """The ``metrics.json`` of a training run: test accuracy, kept epoch, size, cost, device.

    Args:
        result: What :func:`train` returned.
        test: ``metrics.classification_metrics`` on the test split.
        setup: The run's :class:`TrainingSetup`.

    Returns:
        A flat dict (stored seconds of a finished run, so reruns log identical metrics).

    """
    hist = result.history
    best_row = hist[hist["epoch"] == result.best_epoch].iloc[0]
    info = setup.coreset_info
    return {
        "test_accuracy": float(test["oa"]),
        "test_kappa": float(test["kappa"]),
        "test_macro_f1": float(test["macro_f1"]),
        "n_test": int(test["n"]),
        "best_epoch": int(result.best_epoch),
        "best_val_accuracy": float(best_row["val_accuracy"]),
        "epochs_run": int(len(hist)),
        "stopped_early": bool(result.stopped_early),
        "train_size": int(len(setup.train_indices)),
        "train_seconds": round(float(result.seconds), 2),
        "device": result.device,
        "weights": setup.weights_description,
        "scoring_seconds": round(float(info.get("scoring_seconds", 0.0)), 2),
        "scores_file": Path(info["scores_file"]).name if info.get("scores_file") else None,
    }


def retrain_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                device: str | None = None) -> None:
    """Train a notebook-04 run again from its ``params.json`` (its checkpoint was not committed).

    Deterministic on the CPU, so the same best model comes back (a different processor may
    drift slightly: a different kept epoch is reported as a warning).

    Args:
        run_dir: A ``runs/train/<slug>-<hash>`` folder.
        data_dir: Data root; default the run's ``data_dir`` when it exists here, else
            ``LCC_DATA_DIR`` / ``<root>/data`` (a clone on another machine).
        device: Default the run's own ``device`` parameter.

    """
    run_dir = Path(run_dir)
    params = dict(json.loads((run_dir / "params.json").read_text())["params"])
    stored_dir = params.get("data_dir") or ""
    if data_dir is not None:
        params["data_dir"] = str(data_dir)
    elif stored_dir and not Path(stored_dir).exists():
        params["data_dir"] = ""
    setup = prepare_training(**params)
    params["data_dir"] = stored_dir
    result = training.train(setup.model, setup.loaders, setup.recipe, epochs=setup.epochs,
                            device=device or params["device"], run_dir=run_dir,
                            seed=int(params["seed"]), params=params)
    mfile = run_dir / "metrics.json"
    if mfile.is_file():
        stored = json.loads(mfile.read_text())
        if "best_epoch" in stored and int(stored["best_epoch"]) != result.best_epoch:
            warnings.warn(f"rebuilt {run_dir}: best epoch {result.best_epoch} differs from the "
                          f"stored {stored['best_epoch']} (different device or library versions?)",
                          stacklevel=2)


# --------------------------------------------------------------------------- paper A Table 1
def table1(runs_df: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """Paper A's Table 1 layout: test accuracy (%) per model x dataset x fraction x coreset.

    Each cell is our mean +- std over seeds and the number of seeds. The paper's published
    Table 1 numbers are not in ``constants.py``, so the ``paper`` column is NaN: we never
    invent them.
    """
    need = {"model", "dataset", "fraction", "coreset", "seed", metric}
    missing = need - set(runs_df.columns)
    if missing:
        raise ValueError(f"runs_df lacks columns {sorted(missing)} (collect_runs('train'))")
    df = runs_df.copy()
    df["acc"] = 100.0 * df[metric].astype(float)
    # at 100 % every coreset is the full split: show it under every method's column
    g = df.groupby(["model", "dataset", "fraction", "coreset"])["acc"]
    stats = g.agg(["mean", "std", "count"]).reset_index()
    rows = []
    for (model, dataset, fraction), part in stats.groupby(["model", "dataset", "fraction"]):
        row: dict[str, Any] = {"model": model, "dataset": dataset, "fraction": fraction}
        for name in CORESETS:
            hit = part[part["coreset"] == name]
            if fraction == 1.0 and hit.empty:
                hit = part
            if hit.empty:
                row[name] = ""
                row[f"{name}_n"] = 0
                continue
            mean, std, cnt = hit["mean"].iloc[0], hit["std"].iloc[0], int(hit["count"].iloc[0])
            row[name] = f"{mean:.2f} ± {std:.2f}" if cnt > 1 else f"{mean:.2f}"  # one seed: no spread to show
            row[f"{name}_n"] = cnt
        row["paper"] = np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["note"] = "paper column: paper A's Table 1 values are not in the repository"
    return out


def protocol_differences(runs_df: pd.DataFrame) -> pd.DataFrame:
    """How our runs differ from paper A's protocol (224 px, 10 epochs, ImageNet weights, GPU)."""
    cols = {"image_size": "224", "epochs": "10", "pretrained": "True (ImageNet)",
            "device": "GPU", "seed": "not stated"}
    rows = []
    for col, paper in cols.items():
        if col in runs_df.columns:
            vals = sorted({str(v) for v in runs_df[col].dropna()})
            ours = ", ".join(vals) if col != "seed" else f"{len(vals)} seeds: {', '.join(vals)}"
        else:
            ours = "n/a"
        rows.append({"setting": col, "paper A": paper, "ours": ours})
    return pd.DataFrame(rows)


def plot_table1(runs_df: pd.DataFrame, model: str | None = None, metric: str = "test_accuracy") -> Figure:
    """Test accuracy vs coreset fraction, one panel per dataset, one line per coreset method.

    Points are the mean over seeds, bars the standard deviation; the 100 % run (the whole
    training split) is drawn as a dashed reference line.
    """
    import matplotlib.pyplot as plt

    df = runs_df if model is None else runs_df[runs_df["model"] == model]
    datasets = sorted(df["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = df[df["dataset"] == dataset]
        full = part[part["fraction"] == 1.0][metric].astype(float) * 100
        for name in CORESETS:
            sub = part[(part["coreset"] == name) & (part["fraction"] < 1.0)]
            if sub.empty:
                continue
            g = sub.groupby("fraction")[metric].agg(["mean", "std"]) * 100
            ax.errorbar(g.index * 100, g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=name)
        if len(full):
            ax.axhline(full.mean(), ls="--", color="grey", label="100 % (full split)")
        ax.set(title=f"{dataset}" + (f" · {model}" if model else ""), xlabel="coreset size (% of training split)",
               ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def runs_hash(runs_df: pd.DataFrame) -> str:
    """Content hash of a set of collected runs (folders and their metrics): the data of a table."""
    import hashlib

    cols = [c for c in ("run_dir", "test_accuracy") if c in runs_df.columns]
    text = runs_df[cols].sort_values(cols[:1]).to_csv(index=False) if cols else ""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table1_metrics(runs_df: pd.DataFrame, expected: int) -> dict[str, Any]:
    """The ``metrics.json`` of notebook 09: run counts and every cell's mean test accuracy (%)."""
    out: dict[str, Any] = {"runs_found": int(len(runs_df)), "runs_expected": int(expected)}
    if len(runs_df):
        g = runs_df.groupby(["model", "dataset", "coreset", "fraction"])["test_accuracy"].agg(["mean", "count"])
        for (model, dataset, coreset, fraction), row in g.iterrows():
            key = f"{dataset}_{model}_{coreset}_{fraction:g}"
            out[f"{key}_acc_mean"] = round(100 * float(row["mean"]), 4)
            out[f"{key}_n"] = int(row["count"])
    return out


# --------------------------------------------------------------------------- notebook 05: Tables 2-3
def _setting(row: Mapping[str, Any]) -> str:
    m = row["method"]
    if m == "fixed_prune":
        return f"level {row['level']:g}"
    if m == "fixed_quant":
        return f"{int(row['bits'])} bit"
    if m in ADAPTIVE_METHODS:
        return f"{row['importance']}, CR>={row['budget']:g}"
    return "fp32"


def paper_reference(results: pd.DataFrame) -> pd.DataFrame:
    """Paper A's published CR / accuracy beside each variant, only where the paper has one.

    Fixed pruning at the paper's levels gets its CR (1.3 / 1.7 / 3.4 / 7.9); every P->Q row
    gets the paper's best P->Q result (CR 9.0 at 98.10 %). Nothing else is published in a
    form we can match, so other cells stay empty (never invented).
    """
    paper_cr, paper_acc = [], []
    for _, row in results.iterrows():
        cr = acc = float("nan")
        if row["method"] == "fixed_prune":
            cr = PAPER_A_PRUNING_LEVEL_CR.get(float(row["level"]), float("nan"))
        elif row["method"] == "pq":
            cr, acc = PAPER_A_PQ_BEST["cr"], PAPER_A_PQ_BEST["accuracy"]
        paper_cr.append(cr)
        paper_acc.append(acc)
    out = results.copy()
    out["paper_cr"], out["paper_accuracy"] = paper_cr, paper_acc
    return out


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Paper A's Table 2 layout: method x training fraction, accuracy and CR.

    One row per method and setting; per training fraction (coreset size) our accuracy (%),
    computed CR and on-disk CR; then the paper's numbers. ``results`` is
    :func:`evaluate_variants`'s table with a ``fraction`` column (one or more training runs).
    """
    df = paper_reference(results)
    df["setting"] = [_setting(r) for _, r in df.iterrows()]
    if "fraction" not in df:
        raise ValueError("results need a 'fraction' column (the training run's coreset size)")
    wide = df.pivot_table(index=["method", "setting"], columns="fraction",
                          values=["accuracy", "cr", "cr_disk"], sort=False)
    wide = wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    paper = df.groupby(["method", "setting"], sort=False)[["paper_cr", "paper_accuracy"]].first()
    paper.columns = pd.MultiIndex.from_tuples([("paper", c) for c in paper.columns])
    return wide.join(paper)


def table3(results: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Paper A's Table 3 layout: model (variant), accuracy (%), #params (non-zero), CR."""
    df = paper_reference(results)
    return pd.DataFrame({
        "model": [f"{model_name} {r['variant']}" if r["variant"] != "fp32" else model_name
                  for _, r in df.iterrows()],
        "accuracy": df["accuracy"], "params": df["params"],
        "nonzero_params": df["nonzero_params"], "cr": df["cr"], "cr_disk": df["cr_disk"],
        "paper_cr": df["paper_cr"], "paper_accuracy": df["paper_accuracy"],
    })


def best_at_ratio(results: pd.DataFrame, min_cr: float = 9.0) -> pd.Series | None:
    """The most accurate variant whose computed CR is at least ``min_cr`` (None if none)."""
    ok = results[results["cr"] >= min_cr]
    return None if ok.empty else ok.sort_values(["accuracy", "cr"], ascending=False).iloc[0]


def results_summary(results: pd.DataFrame, min_cr: float = 9.0) -> dict[str, Any]:
    """Metrics of a compression run, written to ``metrics.json``.

    fp32 accuracy, best accuracy at CR >= ``min_cr``, the largest computed-vs-disk CR gap
    and whether every artefact reproduced its simulated model.
    """
    base = results[results["method"] == "none"]
    best = best_at_ratio(results, min_cr)
    comp = results[results["method"] != "none"]
    return {
        "fp32_accuracy": float(base["accuracy"].iloc[0]) if not base.empty else float("nan"),
        f"best_accuracy_cr{min_cr:g}": float("nan") if best is None else float(best["accuracy"]),
        f"best_variant_cr{min_cr:g}": "" if best is None else str(best["variant"]),
        f"best_cr_cr{min_cr:g}": float("nan") if best is None else float(best["cr"]),
        "max_cr_gap": float(comp["cr_gap"].abs().max()) if not comp.empty else 0.0,
        "all_artefacts_match": bool(comp["artefact_match"].all()),
        "n_variants": int(len(comp)),
        "n_test": int(results["n_test"].iloc[0]),
    }


@dataclasses.dataclass
class CompressionSetup:
    """What notebook 05 compresses: a trained run's best model and its test data.

    Attributes:
        model: the run's best model (eval mode, CPU).
        train_params: the training run's parameters (``params.json``).
        ds: the run's dataset; ``split`` its split (same seed as the training run).
        loaders: ``{"train", "val", "test"}`` loaders at the run's image size.
        model_name: the run's model key (``convnext_tiny``...).
        fraction: the run's training fraction (coreset size), Table 2's column.

    """

    model: nn.Module
    train_params: dict[str, Any]
    ds: Any
    split: Any
    loaders: dict[str, Any]
    model_name: str
    fraction: float


def prepare_compression(run_dir: str | os.PathLike, model: nn.Module, data_dir: str | None = None,
                        max_test_images: int = 0, batch_size: int = 64) -> CompressionSetup:
    """The data split of a trained run, with its model (from :func:`lcc_utils.trained.reopen_trained`).

    The dataset, split seed and image size are the training run's, so the test split is
    exactly the one the run never saw. A run whose recorded data hash differs from the data
    found now is refused. ``max_test_images`` > 0 evaluates a seeded uniform random sample
    of that many test images (the split's test indices are grouped by class, so taking the
    first N would test one or two classes only); 0 keeps the whole test split.
    """
    if not isinstance(max_test_images, int) or max_test_images < 0:
        raise ValueError(f"max_test_images must be an integer >= 0, got {max_test_images!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "params.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder (no params.json)")
    info = json.loads((run_dir / "params.json").read_text())
    params = dict(info["params"])
    ds = data.load_dataset(params["dataset"], data_dir=data_dir or None)
    recorded = info.get("data_hash")
    if recorded and recorded != ds.hash:
        raise ValueError(f"{run_dir.name} was trained on data with hash {recorded}, but "
                         f"{params['dataset']} under the data root has hash {ds.hash}")
    seed = int(params.get("seed", 0))
    split = data.get_split(ds, seed=seed)
    loaders = data.make_loaders(ds, split, image_size=params.get("image_size"),
                                batch_size=batch_size, seed=seed)
    if max_test_images and max_test_images < len(split.test):
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(np.asarray(split.test), max_test_images, replace=False))
        mean, std = data.normalization(ds, split)
        loaders["test"] = data.BatchLoader(ds.images, ds.labels, subset, batch_size,
                                           image_size=params.get("image_size"), mean=mean,
                                           std=std)
    return CompressionSetup(model.cpu().eval(), params, ds, split, loaders,
                            str(params["model"]), float(params.get("fraction", 1.0)))


def collect_results(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every finished compression run's ``results.csv``, with its dataset, model and fraction.

    Feed it to :func:`table2` for the study-wide Table 2 (one column group per fraction).
    """
    root = Path(root) if root else runs_root() / "compression"
    frames = []
    for res in sorted(root.glob("*/results.csv")):
        if not (res.parent / "metrics.json").is_file():
            continue
        df = pd.read_csv(res)
        df["compression_run"] = res.parent.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
