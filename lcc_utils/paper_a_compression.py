"""Paper A's compression study glue: a trained run in, Tables 2 and 3 and run metrics out.

The engine (:mod:`lcc_utils.compression`) compresses any model; this module ties it to
paper A's study: :func:`prepare_compression` loads a training run and its exact test split,
:func:`collect_results` gathers every compression run, :func:`table2` / :func:`table3` lay
them out like the paper with its published numbers beside ours, and
:func:`results_summary` is a run's ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from lcc_utils import data, training
from lcc_utils.compression import ADAPTIVE_METHODS
from lcc_utils.constants import PAPER_A_PQ_BEST, PAPER_A_PRUNING_LEVEL_CR
from lcc_utils.paths import resolve_path, runs_root

__all__ = [
    "CompressionSetup",
    "best_at_ratio",
    "collect_results",
    "paper_reference",
    "prepare_compression",
    "results_summary",
    "table2",
    "table3",
]


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


def prepare_compression(run: str | os.PathLike, data_dir: str | None = None,
                        max_test_images: int = 0, batch_size: int = 64) -> CompressionSetup:
    """Load a trained run (rebuilding its checkpoint if missing) and its data split.

    The dataset, split seed and image size are the training run's, so the test split is
    exactly the one the run never saw. A run whose recorded data hash differs from the data
    found now is refused. ``max_test_images`` > 0 evaluates a seeded uniform random sample
    of that many test images (the split's test indices are grouped by class, so taking the
    first N would test one or two classes only); 0 keeps the whole test split.
    """
    if run in (None, ""):
        raise ValueError("run is empty: give a trained run folder such as runs/train/<name>")
    if not isinstance(max_test_images, int) or max_test_images < 0:
        raise ValueError(f"max_test_images must be an integer >= 0, got {max_test_images!r}")
    run_dir = resolve_path(run)
    if not (run_dir / "params.json").is_file():
        raise FileNotFoundError(f"run={run!s}: {run_dir} is not a training run folder "
                                "(no params.json)")
    info = json.loads((run_dir / "params.json").read_text())
    model, params = training.load_trained(run_dir, rebuild=True, data_dir=data_dir or None)
    ds = data.load_dataset(params["dataset"], data_dir=data_dir or None)
    recorded = info.get("data_hash")
    if recorded and recorded != ds.hash:
        raise ValueError(f"run={run!s} was trained on data with hash {recorded}, but "
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
