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
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from lcc_utils import coresets, data, inference, models, runs, stats, training
from lcc_utils.compression import ADAPTIVE_METHODS
from lcc_utils.compression.variants import with_spec_ratios
from lcc_utils.constants import (
    EUROSAT_CLASSES,
    PAPER_A_PQ_BEST,
    PAPER_A_PRUNING_LEVEL_CR,
    UCMERCED_CLASSES,
)
from lcc_utils.paths import atomic_write, project_root, resolve_path, runs_root


# --------------------------------------------------------------------------- notebook 03
def scoring_target(
    *, target_model: str, target_image_size: int, target_epochs: int, batch_size: int, recipe: str
) -> dict[str, Any]:
    """The target spec whose full training a proxy's cost is compared with (04's parameters)."""
    return {"model": target_model, "image_size": int(target_image_size),
            "epochs": int(target_epochs), "batch_size": int(batch_size), "recipe": recipe}


def scoring_record(
    scores: Mapping[str, coresets.CoresetScores], scores_file: str | os.PathLike,
    selected: Mapping[str, Mapping[float, np.ndarray]],
) -> dict[str, Any]:
    """The metrics of a scoring run: score file, cost (also relative to the target), never learned.

    Everything here is read from the score files' metadata, so a rerun of a cached scoring
    logs identical metrics. ``never_learned_share`` must stay below
    :data:`coresets.MAX_NEVER_LEARNED` and ``cost_ratio`` below
    :data:`coresets.MAX_COST_RATIO` (the notebook checks both and says so).
    """
    shown = runs.shown_path(scores_file)  # cache/coreset_scores/<file>, wherever the cache is
    meta = next(iter(scores.values())).meta
    rec: dict[str, Any] = {
        "scores_file": shown,
        "scoring_seconds": round(float(meta.get("seconds", 0.0)), 2),
        "scoring_device": meta.get("device"),
        "n_scored": int(meta.get("n", 0)),
        "proxy_final_val_accuracy": meta.get("proxy_final_val_accuracy"),
        "proxy_final_train_accuracy": meta.get("proxy_final_train_accuracy"),
        "never_learned_share": meta.get("never_learned_share"),
        "target_seconds_estimate": round(float(meta.get("target_seconds_estimate", float("nan"))), 2),
        "cost_ratio": round(float(meta.get("cost_ratio", float("nan"))), 4),
    }
    rec.update({f"{kind}_mean": round(float(sc.scores.mean()), 6) for kind, sc in scores.items()})
    for method, fractions in selected.items():
        rec.update({f"{method}_{100 * f:g}pct": int(len(idx)) for f, idx in fractions.items()})
    return rec




def linear_probe(ds: Any, split: Any, backbone: Any, selected: Mapping[str, Mapping[float, np.ndarray]],
                 seed: int, device: str = "auto", draws: int | None = None) -> pd.DataFrame:
    """Notebook 03's frozen-feature probe of the coresets (:mod:`lcc_utils.probe`).

    Features of every image through the in-project ``backbone`` (a
    :class:`Backbone`) at the size it was trained at; each selector's coresets
    (``selected``, dataset indices, plus ``random``: the draw notebook 04 trains for ``seed``)
    and :data:`probe.PROBE_DRAWS` other random draws per fraction (class-balanced like 04's,
    seeded ``1000 x (seed + 1) + i``, so no draw repeats 04's) are probed on the test split.
    Without a backbone (``None``) the table is empty: random features say nothing.
    """
    from lcc_utils import probe

    if backbone is None:
        return pd.DataFrame(columns=["method", "fraction", "draw", "n", "accuracy", "percentile"])
    mean, std = data.normalization(ds, split)
    net, _ = training.load_checkpoint(backbone.checkpoint.parent.parent)
    everything = np.arange(len(ds), dtype=np.int64)
    loader = data.BatchLoader(ds.images, ds.labels, everything, batch_size=256,
                              image_size=int(backbone.params["image_size"]), mean=mean, std=std)
    feats, idx = probe.backbone_features(net, loader, device)
    if not np.array_equal(idx, everything):
        raise RuntimeError("linear_probe: features are not aligned with the dataset")
    train = np.asarray(split.train, dtype=np.int64)
    train_labels = np.asarray(ds.labels)[train]

    def draw(fraction: float, i: int, s: int | None = None) -> np.ndarray:
        s = 1000 * (seed + 1) + i if s is None else s
        return train[coresets.select_coreset(None, fraction, train_labels, "random", seed=s)]

    fractions = sorted({f for fr in selected.values() for f in fr})
    chosen = {"random": {f: draw(f, 0, s=seed) for f in fractions}, **selected}
    return probe.probe_coresets(feats, np.asarray(ds.labels), train, np.asarray(split.test), chosen, draw,
                                draws=probe.PROBE_DRAWS if draws is None else draws)


def probe_record(table: pd.DataFrame) -> dict[str, Any]:
    """Probe metrics of a scoring run: per fraction, the random draws' mean and sd, each selector's percentile."""
    from lcc_utils import probe

    rec: dict[str, Any] = {}
    if table.empty:
        return rec
    for r in probe.probe_summary(table).itertuples():
        tag = f"{100 * r.fraction:g}pct"
        rec[f"probe_random_mean_{tag}"] = round(float(r.random_mean), 6)
        rec[f"probe_random_sd_{tag}"] = round(float(r.random_sd), 6)
        rec[f"probe_{r.method}_accuracy_{tag}"] = round(float(r.accuracy), 6)
        rec[f"probe_{r.method}_percentile_{tag}"] = round(float(r.percentile), 2)
    return rec


def probe_over_seeds(folders: list[Path]) -> pd.DataFrame:
    """The linear probes of several scoring runs (notebook 03 with a backbone), per dataset x fraction x method.

    Per seed, a selector's percentile among that seed's random draws; over seeds, the mean
    percentile (50 is what a random draw scores on average), its range, and the draws' mean
    and within-seed sd (the spread of random selection). Folders without a probe are skipped.
    """
    from lcc_utils import probe

    parts = []
    for f in folders:
        f = Path(f)
        if not (f / "linear_probe.csv").is_file():
            continue
        params = runs.read_run_json(f, "params.json")["params"]
        summary = probe.probe_summary(pd.read_csv(f / "linear_probe.csv"))
        parts.append(summary.assign(dataset=params["dataset"], seed=params["seed"]))
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    g = df.groupby(["dataset", "fraction", "method"], sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), accuracy_mean=("accuracy", "mean"),
                percentile_mean=("percentile", "mean"), percentile_min=("percentile", "min"),
                percentile_max=("percentile", "max"), random_draw_mean=("random_mean", "mean"),
                random_draw_sd=("random_sd", "mean"), draws_per_seed=("draws", "min"))
    for col in ("accuracy_mean", "random_draw_mean", "random_draw_sd"):
        out[col] = 100.0 * out[col]
    return out.reset_index()


# --------------------------------------------------------------------------- notebook 04
@dataclass(frozen=True)
class Backbone:
    """An in-project pretrained backbone: the kept model of a finished notebook-04 run.

    Our stand-in for ImageNet weights, which cannot be downloaded here (issue 21): a model
    trained on all of EuroSAT starts a UC Merced run, its classifier replaced.

    Attributes:
        folder: The 04 run folder (``runs/train/...``).
        checkpoint: Its ``best.pt`` (in the run folder, or rebuilt into the cache).
        params: The 04 run's parameters (how it is named: never by its folder hash).
        tag: Short identity for cache keys (the run's parameter hash).
        description: Provenance recorded in a run's ``metrics.json`` (the same on every machine).
        state_sha256: Hash of the weights (``params.json`` only: bit-identical on one machine,
            not across processors).

    """

    folder: Path
    checkpoint: Path
    params: dict[str, Any]
    tag: str
    description: str
    state_sha256: str


def backbone(backbone_run: Mapping[str, Any], *, model: str, dataset: str,
             data_dir: str | os.PathLike | None = None) -> Backbone | None:
    """Resolve notebook 03/04's ``backbone_run`` (``{}``: no backbone, None).

    ``backbone_run`` names a finished notebook-04 run by its parameters, as 05's ``train_run``
    does (04's defaults fill the rest). Its architecture must be ``model``; its dataset must
    differ from ``dataset``: a backbone trained on one seed's training split of the same dataset
    has seen other seeds' test images. A fresh clone retrains it first (its checkpoint is not
    committed; the plain CNN on all of EuroSAT takes about 15-30 min on one core).
    """
    if not backbone_run:
        return None
    if not isinstance(backbone_run, Mapping):
        raise ValueError(f"backbone_run={backbone_run!r} must name a notebook-04 run by its parameters, "
                         "e.g. -y '{\"backbone_run\": {\"dataset\": \"eurosat\", \"fraction\": 1.0}}'")
    # the backbone's data are looked for under this run's data root (a location, not hashed)
    folder = runs.find_run("04_train", {**backbone_run, **({"data_dir": str(data_dir)} if data_dir else {})})
    params = dict(runs.read_run_json(folder, "params.json")["params"])
    if params["model"] != model:
        raise ValueError(f"backbone_run={dict(backbone_run)} is a {params['model']} run; this run trains "
                         f"{model}: the architectures must match")
    if params["dataset"] == dataset:
        raise ValueError(f"backbone_run={dict(backbone_run)} was trained on {dataset} itself: its training "
                         "split holds other seeds' test images; pretrain on another dataset")
    staged = runs.rerun_dir(folder)
    source = training.checkpoint_source(
        folder, staged, lambda: retrain_run(folder, data_dir=data_dir, out=staged))
    ckpt = source / training.CHECKPOINT_DIR / "best.pt"
    state = training.read_checkpoint(ckpt)["model"]
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    metrics = runs.read_run_json(folder, "metrics.json")
    shown = {k: params[k] for k in ("dataset", "model", "coreset", "fraction", "seed", "image_size")}
    description = (f"in-project pretrained: 04 run {runs.shown_path(folder)} {json.dumps(shown, sort_keys=True)}, "
                   f"test accuracy {metrics['test_accuracy']:.4f}")
    return Backbone(folder, ckpt, params, f"bb{runs.params_hash(params)}", description,
                    digest.hexdigest()[:16])



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
        budget: ``train``'s budget keywords: ``epochs``, ``steps`` (None: whole epochs) and
            ``val_every``.
        backbone_sha256: Hash of an in-project backbone's weights ("" without one).

    """

    ds: Any
    split: Any
    train_indices: np.ndarray
    coreset_info: dict[str, Any]
    loaders: dict[str, Any]
    model: nn.Module
    recipe: training.Recipe
    weights_description: str
    budget: dict[str, Any]
    backbone_sha256: str = ""

    @property
    def provenance(self) -> dict[str, Any]:
        """What ``params.json`` records beside the parameters (04's ``start_run`` extras)."""
        extra = {"weights_description": self.weights_description, "coreset_info": self.coreset_info}
        if self.backbone_sha256:  # bit-identical on one machine only, so provenance, not a metric
            extra["backbone_state_sha256"] = self.backbone_sha256
        return extra


#: Validations per step-budgeted run (a 5 % coreset has ~15 batches per epoch: validating each
#: epoch would cost more than training).
VALIDATIONS_PER_RUN = 10


def training_budget(fraction: float, epochs: int, steps: int, train_size: int,
                    batch_size: int) -> dict[str, Any]:
    """The budget rule of paper A's coreset comparison.

    A coreset run (``fraction`` < 1) with ``steps`` > 0 trains exactly ``steps`` optimizer
    steps, whatever the method and whatever the fraction: equal budgets across methods make
    the comparison fair, and equal budgets across fractions (rather than equal epochs, which
    would give a 5 % coreset 20x fewer updates than the full set) mean a smaller coreset is
    not also a shorter training. A full-data run, or ``steps`` = 0, trains ``epochs`` epochs.
    Validation runs every ``ceil(epochs / 10)`` epochs and after the last step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} must be an integer >= 0 (0: train `epochs` epochs)")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    if fraction < 1.0 and steps > 0:
        planned = math.ceil(steps / max(1, math.ceil(train_size / batch_size)))
        return {"epochs": planned, "steps": steps,
                "val_every": max(1, math.ceil(planned / VALIDATIONS_PER_RUN))}
    return {"epochs": epochs, "steps": None, "val_every": 1}


def prepare_training(
    *,
    dataset: str,
    data_dir: str,
    model: str,
    coreset: str,
    fraction: float,
    seed: int,
    epochs: int,
    steps: int,
    image_size: int,
    batch_size: int,
    device: str,
    pretrained: bool,
    weights: str,
    backbone_run: dict,
    recipe: str,
    scoring_model: str,
    scoring_epochs: int,
    scoring_image_size: int,
) -> TrainingSetup:
    """Build data, coreset, loaders and model of a training run from notebook 04's parameters.

    Takes exactly the names of 04's parameters cell and no defaults (the notebook's cell is
    the one source of defaults); a misspelled or unknown name is a ``TypeError`` naming it.
    Notebook 04 and :func:`retrain_run` both go through here, so a rebuilt model is trained on
    exactly the data a run used. The split is seeded with ``seed`` (each seed is a different
    80/20 split); the coreset is selected on the split's training part. A proxy that is the
    target backbone itself (the ``paper`` profile) starts from the same weights as the target
    (``pretrained``, or the in-project ``backbone_run``); a different proxy starts from random
    weights.

    ``backbone_run`` names a finished 04 run on another dataset whose kept model starts this one,
    its classifier replaced (:func:`backbone`): the stand-in for ImageNet
    weights (issue 21). It excludes ``pretrained`` and ``weights``.
    """
    # a device this machine lacks stops here, naming the parameter, before any data or folder
    # (torch would say only "Found no NVIDIA driver on your system", deep in the loaders)
    inference.resolve_device(device)
    if backbone_run and (pretrained or weights):
        raise ValueError(f"backbone_run={backbone_run!r} starts the model from an in-project run: leave "
                         "pretrained False and weights empty")
    bb = backbone(backbone_run, model=model, dataset=dataset, data_dir=data_dir or None)
    rec = training.get_recipe(recipe)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        # 0 once fell back to the recipe's 64 while params.json recorded 0
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    rec = replace(rec, batch_size=int(batch_size))
    ds = data.load_dataset(dataset, data_dir=data_dir or None)
    split = data.get_split(ds, seed=seed)
    target = scoring_target(target_model=model, target_image_size=image_size,
                            target_epochs=epochs, batch_size=rec.batch_size, recipe=rec.name)
    train_idx, info = coresets.coreset_indices(
        ds, split, coreset, fraction, seed=seed, scoring_model=scoring_model,
        scoring_epochs=scoring_epochs, image_size=scoring_image_size, device=device,
        target=target, pretrained=bool(pretrained) and scoring_model == model,
        weights=bb if scoring_model == model else None)
    loaders = data.make_loaders(ds, split, image_size=image_size, batch_size=rec.batch_size,
                                seed=seed, train_indices=train_idx, augment=rec.augment, device=device)
    weights_path = bb.checkpoint if bb else resolve_path(weights) if weights not in (None, "") else None
    training.seed_everything(seed)
    # ds.bands: a weights file that names its bands has its first-conv kernels selected by name
    net = models.create_model(model, num_classes=len(ds.classes), in_chans=ds.images.shape[-1],
                              pretrained=bool(pretrained), weights=weights_path,
                              image_size=image_size, bands=ds.bands)
    budget = training_budget(float(fraction), epochs, steps, len(train_idx), rec.batch_size)
    described = (bb.description if bb else
                 models.describe_weights(bool(pretrained), weights_path, bands=ds.bands))
    return TrainingSetup(ds, split, train_idx, info, loaders, net, rec, described, budget,
                         bb.state_sha256 if bb else "")


#: The convergence window of issue 21: a run is still rising when its validation accuracy gains
#: a point or more over the last 30 % of its optimizer steps.
RISE_WINDOW = 0.3
#: Seeds a cell needs before :func:`convergence_table` gives a verdict (issue 21: ">= 3 seeds").
CONVERGENCE_MIN_SEEDS = 3


#: Where the rise's window starts when no validation falls on the cut (1 - window) x steps:
#: ``"before"`` (the recorded metric) takes the last validation at or before the cut, so the
#: window spans *at least* 30 % of the steps; ``"after"`` takes the first one at or after it, so
#: it spans *at most* 30 %. A run validates every ceil(epochs / VALIDATIONS_PER_RUN) epochs, so
#: the two differ by up to about a tenth of the run: e.g. 38-39.5 % against 27.7-29.5 % for
#: EuroSAT at 10 % (a hard choice the issue leaves open; docs/paper_a_regimes.md gives both).
RISE_ANCHORS = ("before", "after")


def _rise_start(h: pd.DataFrame, window: float, anchor: str) -> pd.Series:
    if anchor not in RISE_ANCHORS:
        raise ValueError(f"anchor={anchor!r}: choose one of {', '.join(RISE_ANCHORS)}")
    cut = (1.0 - window) * float(h["step"].max())
    side = h[h["step"] <= cut] if anchor == "before" else h[h["step"] >= cut]
    if side.empty:
        return h.iloc[0]
    return side.iloc[-1] if anchor == "before" else side.iloc[0]


def val_rise(history: pd.DataFrame, window: float = RISE_WINDOW, anchor: str = "before") -> float:
    """Points of validation accuracy gained over the last ``window`` of a run's steps.

    The last validation minus the validation that starts the window: with ``anchor="before"``
    (the metric every run records) the last one at or before step ``(1 - window) x steps``, with
    ``"after"`` the first one at or after it (see :data:`RISE_ANCHORS`; a run validated only
    inside the window compares with its first validation). The budget rule of issue 21: a step
    budget has converged when random's rise is under 1 point. With a one-cycle schedule a late
    rise is partly the learning rate annealing to zero, so this reads "did the last 30 % of the
    budget still buy accuracy", not "is the loss flat".
    """
    h = history.dropna(subset=["val_accuracy"]).sort_values("step")
    if h.empty:
        return float("nan")
    start = _rise_start(h, window, anchor)
    return round(100.0 * float(h["val_accuracy"].iloc[-1] - start["val_accuracy"]), 4)


def rise_span(history: pd.DataFrame, window: float = RISE_WINDOW, anchor: str = "before") -> float:
    """The share of the run's steps that :func:`val_rise` actually spans.

    0.3 only where a validation falls on the cut; otherwise more (``"before"``) or less
    (``"after"``), by up to the gap between two validations.
    """
    h = history.dropna(subset=["val_accuracy"]).sort_values("step")
    if h.empty:
        return float("nan")
    last = float(h["step"].max())
    return round(1.0 - float(_rise_start(h, window, anchor)["step"]) / last, 4) if last > 0 else float("nan")


def coreset_fit(setup: TrainingSetup, device: str = "auto") -> float:
    """Accuracy of the kept model on its own coreset, un-augmented: how well the budget fitted it.

    A hard-first coreset that the budget cannot fit (issue 21: about 0.57 after 300 steps,
    against 0.80 for random) tests the budget as much as the selector.
    """
    test = setup.loaders["test"]
    loader = data.BatchLoader(setup.ds.images, setup.ds.labels, setup.train_indices,
                              batch_size=test.batch_size, image_size=test.image_size,
                              mean=test.mean.flatten().tolist() if test.mean is not None else None,
                              std=test.std.flatten().tolist() if test.std is not None else None)
    probs, y, _ = training.predict(setup.model, loader, device)
    return float((probs.argmax(1) == y).mean())


def run_record(result: training.TrainResult, test: Mapping[str, Any], setup: TrainingSetup,
               coreset_accuracy: float | None = None) -> dict[str, Any]:
    """The ``metrics.json`` of a training run: test accuracy, kept epoch, size, cost, device.

    Args:
        result: What :func:`train` returned.
        test: ``metrics.classification_metrics`` on the test split.
        setup: The run's :class:`TrainingSetup`.
        coreset_accuracy: :func:`coreset_fit` of the kept model (recorded when given).

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
        "epochs_run": int(hist["epoch"].max()),
        "optimizer_steps": int(result.extra.get("steps", 0)),
        "warmup_end_epoch": int(result.extra.get("warmup_end_epoch", 0)),
        "patience": setup.recipe.patience,
        "stopped_early": bool(result.stopped_early),
        "train_size": int(len(setup.train_indices)),
        "train_seconds": round(float(result.seconds), 2),
        "device": result.device,
        "weights": setup.weights_description,
        "scoring_seconds": round(float(info.get("scoring_seconds", 0.0)), 2),
        "scores_file": Path(info["scores_file"]).name if info.get("scores_file") else None,
        "val_rise_last30_points": val_rise(hist),
        **({"coreset_train_accuracy": round(coreset_accuracy, 6)} if coreset_accuracy is not None else {}),
    }


def retrain_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                device: str | None = None, out: str | os.PathLike | None = None) -> Path:
    """Train a notebook-04 run again from its ``params.json`` (its checkpoint was not committed).

    Deterministic on the CPU, so the same best model comes back (a different processor may
    drift slightly: a different kept epoch is reported as a warning). The run folder itself is
    only read: the checkpoints, ``history.csv`` and a copy of ``params.json`` go to ``out``.

    Args:
        run_dir: A ``runs/train/<slug>-<hash>`` folder.
        data_dir: Data root; default the run's ``data_dir`` when it exists here, else
            ``LCC_DATA_DIR`` / ``<root>/data`` (a clone on another machine).
        device: Default the run's own ``device`` parameter.
        out: Where the rebuilt run goes; default its staging folder in the cache,
            :func:`lcc_utils.runs.rerun_dir` (where :func:`lcc_utils.trained.reopen_trained` looks).

    Returns:
        ``out``, a trained folder (``params.json`` + ``checkpoints/best.pt``).

    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else runs.rerun_dir(run_dir)
    info = runs.read_run_json(run_dir, "params.json")
    atomic_write(out / "params.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    # 04's defaults fill parameters added after the run was made (runs.ADDED_PARAMS)
    params = runs.resolve_params(runs.notebook_path("04_train"), dict(info["params"]))
    stored_dir = params.get("data_dir") or ""
    if data_dir is not None:
        params["data_dir"] = str(data_dir)
    elif stored_dir and not Path(stored_dir).exists():
        params["data_dir"] = ""
    if device is not None:  # e.g. a GPU run rebuilt on a CPU machine: its loaders too
        params["device"] = device
    setup = prepare_training(**params)
    params["data_dir"] = stored_dir
    result = training.train(setup.model, setup.loaders, setup.recipe, **setup.budget,
                            device=params["device"], run_dir=out,
                            seed=int(params["seed"]), params=params)
    mfile = run_dir / "metrics.json"
    if mfile.is_file():
        stored = runs.read_run_json(run_dir, "metrics.json")
        if "best_epoch" in stored and int(stored["best_epoch"]) != result.best_epoch:
            warnings.warn(f"rebuilt {run_dir}: best epoch {result.best_epoch} differs from the "
                          f"stored {stored['best_epoch']} (different device or library versions?)",
                          stacklevel=2)
    return out


# --------------------------------------------------------------------------- paper A Table 1
#: Paper A's Table 1 as published, beside the papers' text (read, never retyped).
PAPER_A_TABLE1_CSV = "paper_a_table1.csv"
#: Classes per dataset (the chance level of Table 1).
NUM_CLASSES = {"eurosat": len(EUROSAT_CLASSES), "eurosat_ms": len(EUROSAT_CLASSES),
               "ucmerced": len(UCMERCED_CLASSES)}
#: Our coreset names whose paper A counterpart has the same name and definition family.
PAPER_A_METHODS = ("random", "forgetting", "margin")


def paper_table1(papers_dir: str | os.PathLike) -> pd.DataFrame:
    """Paper A's published Table 1 (model, coreset, dataset, fraction, accuracy) from its CSV."""
    return _read_paper_csv(papers_dir, PAPER_A_TABLE1_CSV, "Table 1",
                           {"model", "coreset", "dataset", "fraction", "accuracy"})


def _read_paper_csv(papers_dir: str | os.PathLike, name: str, table: str, need: set[str]) -> pd.DataFrame:
    """One of paper A's published tables from its CSV; a missing file or column is an error naming it."""
    path = Path(papers_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"paper A's {table} not found: {path} (the papers folder beside "
                                "the data root, ../shared/papers)")
    df = pd.read_csv(path)
    if not need <= set(df.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)}, found {list(df.columns)}")
    return df


def regime(params: Mapping[str, Any]) -> str:
    """The training regime of a notebook-04 run: how its weights start, and its budget.

    ``"scratch, 300 steps"`` (the quick protocol's coreset runs), ``"pretrained, 1500 steps"``
    (an in-project ``backbone_run``), ``"imagenet, 10 epochs"`` (the paper profile), and for
    full-data runs or ``steps`` = 0 the epochs. Selectors are compared with random only within
    one regime: a claim is stated for the regime it was tested in (issue 21).
    """
    bb = params.get("backbone_run")
    # ``weights`` is the 04 parameter (a file path or "") or, in collect_runs' rows, the metric
    # that describes it ("random init", "imagenet (timm hub)", "file:...")
    weights = params.get("weights")
    weights = weights if isinstance(weights, str) else ""
    init = ("pretrained" if isinstance(bb, Mapping) and bb else
            "imagenet" if params.get("pretrained") is True or weights.startswith("imagenet") else
            "scratch" if weights in ("", "random init") else "weights file")
    steps = params.get("steps")
    steps = int(steps) if steps is not None and steps == steps else 0
    if float(params.get("fraction", 1.0)) < 1.0 and steps > 0:
        return f"{init}, {steps} steps"
    return f"{init}, {int(params.get('epochs', 0))} epochs"


def with_regime(runs_df: pd.DataFrame) -> pd.DataFrame:
    """``runs_df`` with a ``regime`` column (:func:`regime`) and ``backbone_run`` as text."""
    df = runs_df.copy()
    df["regime"] = [regime(r) for r in df.to_dict("records")]
    if "backbone_run" in df:
        df["backbone_run"] = [json.dumps(v, sort_keys=True) if isinstance(v, Mapping) and v else ""
                              for v in df["backbone_run"]]
    return df


def planned_comparisons(planned: Sequence[Mapping[str, Any]],
                        defaults: Mapping[str, Any]) -> dict[tuple[str, str, str], int]:
    """Selector-vs-random comparisons per model x dataset x regime once every planned run has landed.

    ``planned``: notebook 04's parameter sets of a profile (:func:`lcc_utils.study.profile_runs`),
    ``defaults`` its parameters cell (:func:`lcc_utils.runs.notebook_defaults`) filling what a set
    leaves out. A comparison is a (fraction < 1, coreset other than random) cell whose fraction
    also has random runs: the Holm family :func:`table1` corrects over.
    """
    if not planned:
        return {}
    df = with_regime(pd.DataFrame([{**defaults, **p} for p in planned]))
    df = df[df["fraction"].astype(float) < 1.0]
    out: dict[tuple[str, str, str], int] = {}
    for key, part in df.groupby(["model", "dataset", "regime"], sort=True):
        with_random = set(part.loc[part["coreset"] == "random", "fraction"])
        cells = {(f, c) for f, c in zip(part["fraction"], part["coreset"], strict=True)
                 if c != "random" and f in with_random}
        out[key] = len(cells)
    return out


def table1(runs_df: pd.DataFrame, paper: pd.DataFrame | None = None,
           metric: str = "test_accuracy", num_classes: Mapping[str, int] = NUM_CLASSES,
           planned: Mapping[tuple[str, str, str], int] | None = None) -> pd.DataFrame:
    """Paper A's Table 1, ours beside the paper's: one row per model x dataset x fraction x coreset.

    Columns: ``n_seeds``, ``mean`` and ``std`` of test accuracy (%) over seeds; for coresets
    other than random at fractions < 1, the **paired** difference to random over the seeds
    both ran (each seed is one split, init and tie-break shared by every method), its 95 %
    t-interval, the paired t-test p-value Holm-adjusted over every comparison of the same
    model and dataset, and ``wins`` (seeds where the method beat random). ``chance`` is
    100 / classes and ``near_chance`` flags cells whose mean is below twice chance: read
    nothing into those. ``paper_<model>`` hold paper A's published accuracy for the
    same dataset, fraction and method (paper A's three methods only; its backbones are
    ImageNet-pretrained at 224 px, ours may differ: the ``model`` column says which), and
    ``paper_wins`` how many of its four backbones beat random in that cell.

    Runs of different regimes (:func:`regime`: from scratch or pretrained, the step budget)
    are separate rows and are never paired with each other; Holm runs over the comparisons of
    one model, dataset and regime. ``planned`` (:func:`planned_comparisons`) sizes each family as
    it will be when every planned run has landed: while some comparisons are still training, the
    ones present are corrected as the complete family will correct them (:func:`stats.holm`'s
    ``family_size``), never less. ``holm_family`` is that size, ``tested`` how many of its
    comparisons have a p-value yet (two or more pairs).

    ``pairs_same_backbone`` (pretrained cells, when the runs record ``backbone_state_sha256``):
    of the seeds paired with random, how many fine-tuned the same backbone weights. A backbone is
    a checkpoint rebuilt from its committed 04 run wherever the cache lacks it, bit-identical on
    one machine only: a pair on two rebuilds still shares split, coreset draw and seed, and its
    difference also carries the (small) difference between the two backbones.
    """
    need = {"model", "dataset", "fraction", "coreset", "seed", metric}
    missing = need - set(runs_df.columns)
    if missing:
        raise ValueError(f"runs_df lacks columns {sorted(missing)} (collect_runs('train'))")
    df = with_regime(runs_df)
    df["acc"] = 100.0 * df[metric].astype(float)
    has_bb = "backbone_state_sha256" in df and df["backbone_state_sha256"].notna().any()
    rows = []
    for (model, dataset, reg, fraction), part in df.groupby(["model", "dataset", "regime", "fraction"], sort=True):
        rand = part[part["coreset"] == "random"].set_index("seed")["acc"]
        bb = part.set_index(["coreset", "seed"])["backbone_state_sha256"] if has_bb else None
        names = [c for c in coresets.CORESETS if c in set(part["coreset"])]
        for name in names:
            cell = part[part["coreset"] == name].set_index("seed")["acc"]
            row: dict[str, Any] = {"model": model, "dataset": dataset, "regime": reg, "fraction": fraction,
                                   "coreset": name, "n_seeds": int(len(cell)),
                                   "mean": float(cell.mean()),
                                   "std": float(cell.std(ddof=1)) if len(cell) > 1 else float("nan")}
            shared = sorted(set(cell.index) & set(rand.index))
            if name != "random" and fraction < 1.0 and shared:
                d = cell.loc[shared].to_numpy() - rand.loc[shared].to_numpy()
                mean, lo, hi, p = stats.paired_difference(d)
                row.update(diff_vs_random=mean, ci_low=lo, ci_high=hi, p=p,
                           wins=f"{int((d > 0).sum())}/{len(d)}")
                if bb is not None and bb.loc[name].notna().any():
                    same = sum(bb.loc[(name, s)] == bb.loc[("random", s)] for s in shared)
                    row["pairs_same_backbone"] = f"{same}/{len(shared)}"
            k = (num_classes or {}).get(dataset)
            if k:
                row.update(chance=100.0 / k, near_chance=bool(row["mean"] < 200.0 / k))
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    for col in ("diff_vs_random", "ci_low", "ci_high", "p", "wins"):
        if col not in out:
            out[col] = np.nan
    out["p_holm"] = np.nan
    out["holm_family"] = 0
    out["tested"] = 0
    for key, idx in out.groupby(["model", "dataset", "regime"]).groups.items():
        p = out.loc[idx, "p"].to_numpy(dtype=float)
        tested = int((~np.isnan(p)).sum())
        family = max(tested, int((planned or {}).get(key, 0)))
        out.loc[idx, "p_holm"] = stats.holm(p, family_size=family)
        out.loc[idx, "holm_family"] = family
        out.loc[idx, "tested"] = tested
    if paper is not None:
        out = _with_paper(out, paper)
    return out


def _with_paper(out: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Paper A's accuracy per backbone and its win count beside each of our cells."""
    pap = paper.copy()
    pap["fraction"] = pap["fraction"].astype(float).round(4)
    wide = pap.pivot_table(index=["dataset", "fraction", "coreset"], columns="model",
                           values="accuracy")
    backbones = list(wide.columns)
    wins = {}
    for (dataset, fraction, coreset), row in wide.iterrows():
        if coreset == "random" or fraction >= 1.0:
            continue
        rnd = wide.loc[(dataset, fraction, "random")]
        wins[(dataset, fraction, coreset)] = f"{int((row > rnd).sum())}/{len(backbones)}"
    out = out.copy()
    key = list(zip(out["dataset"], out["fraction"].astype(float).round(4), out["coreset"], strict=True))
    for b in backbones:
        out[f"paper_{b}"] = [wide[b].get(k, np.nan) if k[2] in PAPER_A_METHODS else np.nan
                             for k in key]
    out["paper_wins"] = [wins.get(k, "") if k[2] in PAPER_A_METHODS else "" for k in key]
    return out


def protocol_differences(runs_df: pd.DataFrame) -> pd.DataFrame:
    """How our runs differ from paper A's protocol (224 px, 10 epochs, ImageNet weights, GPU)."""
    cols = {"model": "4 timm backbones", "image_size": "224", "epochs": "10 (early stopping after a 3-epoch warm-up)",
            "steps": "not stated (epochs)", "recipe": "AdamW 5e-4, TrivialAugmentWide",
            "pretrained": "True (ImageNet)", "device": "GPU", "seed": "not stated (one run per cell)"}
    rows = []
    for col, paper in cols.items():
        if col in runs_df.columns:
            vals = sorted({str(v) for v in runs_df[col].dropna()})
            ours = ", ".join(vals) if col != "seed" else f"{len(vals)} seeds: {', '.join(vals)}"
        else:
            ours = "n/a"
        rows.append({"setting": col, "paper A": paper, "ours": ours})
    return pd.DataFrame(rows)


def plot_table1(table: pd.DataFrame, model: str | None = None) -> Figure:
    """Each coreset method's paired difference to random (points, 95 % CI bars), per fraction.

    One panel per dataset x fraction; paper A's differences for its own methods (one
    marker per backbone) are drawn beside ours in grey. Zero (= random) is the dashed line.
    """
    import matplotlib.pyplot as plt

    t = table if model is None else table[table["model"] == model]
    t = t[(t["fraction"] < 1.0) & (t["coreset"] != "random")]
    panels = sorted({(d, f) for d, f in zip(t["dataset"], t["fraction"], strict=True)})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.6 * max(1, len(panels)), 3.8),
                             squeeze=False, sharey=True, sharex=True)  # one x scale: panels compare
    paper_cols = [c for c in t.columns if c.startswith("paper_") and c != "paper_wins"]
    for ax, (dataset, fraction) in zip(axes[0], panels, strict=False):
        part = t[(t["dataset"] == dataset) & (t["fraction"] == fraction)].reset_index(drop=True)
        y = np.arange(len(part))
        err = np.vstack([part["diff_vs_random"] - part["ci_low"], part["ci_high"] - part["diff_vs_random"]])
        ax.errorbar(part["diff_vs_random"], y, xerr=np.nan_to_num(err), fmt="o", capsize=3,
                    label="ours: mean paired difference, 95 % CI")
        rand = table[(table["dataset"] == dataset) & (table["fraction"] == fraction)
                     & (table["coreset"] == "random")]
        for j, col in enumerate(paper_cols):
            if rand.empty or col not in rand:
                continue
            base = rand[col].iloc[0]
            ax.scatter(part[col] - base, y + 0.2, marker="x", color="grey", s=18,
                       label="paper A, one mark per backbone" if j == 0 else None)
        ax.axvline(0, ls="--", color="black", lw=1)
        ax.set_yticks(y, labels=part["coreset"])
        ax.set(title=f"{dataset}, {100 * fraction:g} % of the training split",
               xlabel="test accuracy minus random (points)")
        ax.grid(alpha=0.3)
    axes[0][0].invert_yaxis()
    if not panels:  # only random (or full-data) runs: nothing to set beside random
        axes[0][0].text(0.5, 0.5, "no coreset run beside a random one at the same fraction:\nnothing to compare",
                        ha="center", va="center", transform=axes[0][0].transAxes)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def convergence_table(runs_df: pd.DataFrame, min_seeds: int = CONVERGENCE_MIN_SEEDS) -> pd.DataFrame:
    """Is each regime's budget converged? Per dataset x regime x fraction x coreset, over seeds.

    ``val_rise`` (:func:`val_rise`, points gained over the last 30 % of the steps) is recomputed
    from every run's ``history.csv``, so runs made before it was recorded are covered too;
    ``coreset_fit`` (the kept model on its own coreset) is read where the run recorded it.
    ``window_max`` is the largest share of the steps the rise actually spans over the cell's
    runs (validations come every 10 % of the epochs, so it is 0.3 only where one falls on the
    cut); ``val_rise_inner_max``, ``window_inner_min`` and ``converged_inner`` give the same rule
    on the window that starts at the first validation at or after the cut (at most 30 %), so a
    reader sees whether a verdict depends on that choice (:data:`RISE_ANCHORS`).

    ``converged`` is issue 21's rule read as its done-when words it, "every run" rising < 1 point:
    True only when the cell's largest rise is below 1 point, and only once it has
    ``min_seeds`` seeds (None before: one seed below 1 point is not a verdict). A median below
    1 point with one seed above is not converged; the median is kept beside it for reading. The
    rise is the difference of two validation accuracies (EuroSAT: 2,160 images, a standard error
    near 0.7 points each at 89 %), so a single run's figure is noisy at the 1-point scale.
    """
    rows = []
    for r in with_regime(runs_df).to_dict("records"):
        folder = Path(str(r["run_dir"]))  # collect_runs: relative to the project, else absolute
        hist = (folder if folder.is_absolute() else project_root() / folder) / "history.csv"
        # no history.csv: an empty one, whose rise and span are NaN
        h = pd.read_csv(hist) if hist.is_file() else pd.DataFrame(columns=["step", "val_accuracy"])
        rows.append({"dataset": r["dataset"], "model": r["model"], "regime": r["regime"],
                     "fraction": r["fraction"], "coreset": r["coreset"], "seed": r["seed"],
                     "val_rise": val_rise(h), "window": rise_span(h),
                     "val_rise_inner": val_rise(h, anchor="after"), "window_inner": rise_span(h, anchor="after"),
                     "coreset_fit": r.get("coreset_train_accuracy", float("nan"))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    g = df.groupby(["dataset", "model", "regime", "fraction", "coreset"], sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), val_rise_median=("val_rise", "median"),
                val_rise_min=("val_rise", "min"), val_rise_max=("val_rise", "max"),
                coreset_fit_mean=("coreset_fit", "mean"), window_max=("window", "max"),
                val_rise_inner_max=("val_rise_inner", "max"),
                window_inner_min=("window_inner", "min")).reset_index()
    measured = g["val_rise"].count().to_numpy()  # a run without history.csv has no rise: no verdict
    for col, rise in (("converged", "val_rise_max"), ("converged_inner", "val_rise_inner_max")):
        out[col] = [bool(m < 1.0) if n >= min_seeds and k == n else None
                    for m, n, k in zip(out[rise], out["n_seeds"], measured, strict=True)]
    return out


#: Seeds of the pretraining gain's first look (issue 21 asked for at least 5 paired seeds).
GAIN_FIRST_LOOK_SEEDS = 5
#: Paired seeds planned for the second look, fixed before any of its runs: the look is tested
#: once, when all of them are in, never at whatever number of pairs has landed so far.
GAIN_SECOND_LOOK_SEEDS = 10


def pretraining_gain(runs_df: pd.DataFrame, metric: str = "test_accuracy",
                     first_look_seeds: int = GAIN_FIRST_LOOK_SEEDS,
                     second_look_seeds: int = GAIN_SECOND_LOOK_SEEDS) -> pd.DataFrame:
    """Pretrained minus from-scratch accuracy of the same coresets at the same budget, paired by seed.

    Whether the in-project stand-in for ImageNet weights is "pretrained" in a useful sense
    (issue 21): for each dataset, model, coreset, fraction and budget that both a pretrained
    and a scratch regime ran, the mean paired difference (points) over the seeds both ran
    (the same split and the same coreset per seed), its t-interval and p-value.

    **Two looks.** The gain was first tested on ``first_look_seeds`` seeds; where it was not
    shown (UC Merced at 10 %: CI -2.7 to 14.3 points) the study added seeds, a second look at
    data already seen. Testing both looks at 5 % would inflate the false-positive rate, so the
    error rate is split over the two looks (Bonferroni): a cell with more seeds than the first
    look is a second look, tested at ``alpha`` 0.025 with a 97.5 % interval; the first look keeps
    0.05 and 95 %. ``shown`` is whether the interval lies above zero at the cell's own level.

    The second look was planned at ``second_look_seeds`` pairs and is tested exactly once, on
    the first ``second_look_seeds`` shared seeds, when all of them are in. Testing it as pairs
    land would make every landing another look (and another chance of a false positive), so a
    cell with more pairs than the first look but fewer than planned is ``status`` "pending":
    its mean gain and wins are shown as a reading, with no interval, p-value or ``shown``.
    """
    df = with_regime(runs_df)
    df["init"] = df["regime"].str.split(", ").str[0]
    df["budget"] = df["regime"].str.split(", ").str[1]
    df["acc"] = 100.0 * df[metric].astype(float)
    rows = []
    for (model, dataset, coreset, fraction, budget), part in df.groupby(
            ["model", "dataset", "coreset", "fraction", "budget"], sort=True):
        pre = part[part["init"] == "pretrained"].set_index("seed")["acc"]
        scr = part[part["init"] == "scratch"].set_index("seed")["acc"]
        shared = sorted(set(pre.index) & set(scr.index))
        if not shared:
            continue
        look = 1 if len(shared) <= first_look_seeds else 2
        pending = look == 2 and len(shared) < second_look_seeds
        if look == 2:
            shared = shared[:second_look_seeds]  # the planned pairs; later seeds are not a third look
        d = pre.loc[shared].to_numpy() - scr.loc[shared].to_numpy()
        alpha = 0.05 / look
        mean, lo, hi, p = stats.paired_difference(d, level=1 - alpha)
        if pending:
            lo = hi = p = float("nan")
        rows.append({"model": model, "dataset": dataset, "coreset": coreset, "fraction": fraction,
                     "budget": budget, "n_seeds": len(shared), "pretrained_mean": float(pre.loc[shared].mean()),
                     "scratch_mean": float(scr.loc[shared].mean()), "gain": mean, "look": look,
                     "status": f"pending ({len(shared)} of {second_look_seeds} planned pairs)" if pending else "tested",
                     "alpha": alpha, "ci_level": 100 * (1 - alpha), "ci_low": lo, "ci_high": hi, "p": p,
                     "shown": bool(lo > 0) if pd.notna(lo) else False, "wins": f"{int((d > 0).sum())}/{len(d)}"})
    return pd.DataFrame(rows)


#: The doubling rule (docs/paper_a_regimes.md): a budget counts as converged when twice the
#: steps buys less than this many test-accuracy points, shown by a one-sided paired test.
DOUBLING_MARGIN_POINTS = 1.0
#: Paired seeds planned for each doubling check: tested once, when all of them are in.
DOUBLING_PLANNED_SEEDS = 3


def budget_doubling(runs_df: pd.DataFrame, metric: str = "test_accuracy",
                    margin: float = DOUBLING_MARGIN_POINTS,
                    planned_seeds: int = DOUBLING_PLANNED_SEEDS) -> pd.DataFrame:
    """What twice the steps buys the same coresets: the doubling rule, paired by seed.

    Issue 21 asked for a step budget at which random "has stopped improving", measured as a
    validation rise of < 1 point over the last 30 % of the steps. Under the one-cycle schedule
    that window always holds the anneal to zero, and random's rise stayed above 1 point in every
    run at 3000 and 6000 steps (docs/paper_a_regimes.md; :func:`convergence_table` keeps it).
    The doubling rule asks the question on the test set instead: for each model, dataset,
    start, coreset and fraction run at ``N`` and at ``2N`` steps, the paired difference
    (``2N`` minus ``N``, points) over the seeds both ran (same split, same coreset), its
    two-sided 95 % t-interval, and a one-sided test that the gain is below ``margin`` (H0: gain
    >= margin). ``converged`` is that test at 0.05, i.e. the one-sided 95 % upper bound below the
    margin: "not shown" is not read as "still improving", nor the reverse.

    The check is planned at ``planned_seeds`` pairs and tested exactly once, when they are all in
    (later seeds are not a second look); with fewer it is ``status`` "pending": its mean gain is
    shown as a reading, without interval, p-value or verdict.
    """
    df = with_regime(runs_df)
    df = df[df["fraction"].astype(float) < 1.0].copy()
    if df.empty or "steps" not in df:
        return pd.DataFrame()
    df["init"] = df["regime"].str.split(", ").str[0]
    df["steps"] = df["steps"].astype(int)
    df["acc"] = 100.0 * df[metric].astype(float)
    rows = []
    for (model, dataset, init, coreset, fraction), part in df.groupby(
            ["model", "dataset", "init", "coreset", "fraction"], sort=True):
        by_steps = {int(n): g.set_index("seed")["acc"] for n, g in part.groupby("steps")}
        for n in sorted(by_steps):
            if n <= 0 or 2 * n not in by_steps:
                continue
            short, long_ = by_steps[n], by_steps[2 * n]
            shared = sorted(set(short.index) & set(long_.index))[:planned_seeds]
            if not shared:
                continue
            d = long_.loc[shared].to_numpy() - short.loc[shared].to_numpy()
            pending = len(shared) < planned_seeds
            mean, lo, hi, _ = stats.paired_difference(d)
            upper = p = float("nan")
            if pending:  # a reading: no interval, p-value or verdict before the planned pairs are in
                lo = hi = float("nan")
            else:
                upper = stats.paired_difference(d, level=0.90)[2]  # = the one-sided 95 % upper bound
                p = stats.below_margin_test(d, margin)
            rows.append({"model": model, "dataset": dataset, "init": init, "coreset": coreset,
                         "fraction": fraction, "steps": n, "doubled_steps": 2 * n, "n_seeds": len(shared),
                         "mean_steps": float(short.loc[shared].mean()),
                         "mean_doubled": float(long_.loc[shared].mean()), "gain": mean,
                         "ci_low": lo, "ci_high": hi, "upper_one_sided_95": upper, "margin": margin,
                         "p_below_margin": p, "converged": bool(p < 0.05) if pd.notna(p) else False,
                         "status": (f"pending ({len(shared)} of {planned_seeds} planned pairs)" if pending
                                    else "tested"),
                         "wins": f"{int((d > 0).sum())}/{len(d)}"})
    return pd.DataFrame(rows)


def _regime_panel(ax: Any, cell: pd.DataFrame, regimes: list[str], colours: Mapping[str, Any],
                  paper_cols: list[str]) -> None:
    """One panel of :func:`plot_regime_map`: a group of rows per regime, then paper A's marks."""
    labels: list[str] = []
    for reg in regimes:
        for r in cell[(cell["regime"] == reg) & (cell["coreset"] != "random")].itertuples():
            y = len(labels)
            labels.append(f"{r.coreset} ({r.n_seeds} seed{'' if r.n_seeds == 1 else 's'})")
            if pd.isna(r.diff_vs_random):
                continue
            err = [[r.diff_vs_random - r.ci_low], [r.ci_high - r.diff_vs_random]]
            ax.errorbar(r.diff_vs_random, y, xerr=np.nan_to_num(err), fmt="o", ms=4, capsize=2,
                        color=colours[reg], label=reg)
            if pd.notna(r.p_holm) and r.p_holm < 0.05:
                ax.text(r.ci_high, y, " *", va="center", color=colours[reg])
    rand = cell[cell["coreset"] == "random"]
    for coreset in [c for c in PAPER_A_METHODS if c != "random"]:
        row = cell[cell["coreset"] == coreset]
        if not paper_cols or rand.empty or row.empty:
            continue
        vals = [row[c].iloc[0] - rand[c].iloc[0] for c in paper_cols]
        ax.scatter(vals, [len(labels)] * len(vals), marker="x", color="grey", s=20, label="paper A (4 backbones)")
        labels.append(f"paper A: {coreset}")
    ax.axvline(0, ls="--", color="black", lw=1)
    if not labels:  # only random has finished here (the study lands runs over several sessions)
        ax.text(0.5, 0.5, "no selector run finished yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=7)
    ax.invert_yaxis()
    ax.grid(alpha=0.3)


def plot_regime_map(table: pd.DataFrame, model: str | None = None) -> Figure:
    """Selector minus random per dataset x regime x fraction: where paper A's claim holds.

    One panel per dataset (rows) and fraction (columns). Within a panel, one group of rows per
    regime (colour), each selector's mean paired difference to random with its 95 % CI and
    ``*`` where the Holm-adjusted p is below 0.05; the last rows are paper A's own differences
    (one grey mark per backbone, ImageNet-pretrained at 224 px). Zero (= random) is dashed.
    """
    import matplotlib.pyplot as plt

    t = table if model is None else table[table["model"] == model]
    t = t[t["fraction"] < 1.0]
    datasets, fractions, regimes = sorted(set(t["dataset"])), sorted(set(t["fraction"])), sorted(set(t["regime"]))
    colours = dict(zip(regimes, plt.get_cmap("tab10").colors, strict=False))
    paper_cols = [c for c in t.columns if c.startswith("paper_") and c != "paper_wins"]
    n_rows, n_cols = max(1, len(datasets)), max(1, len(fractions))
    per_panel = int(t.groupby(["dataset", "fraction"]).size().max()) if len(t) else 1
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, sharex=True,
                             figsize=(5.4 * n_cols, (0.22 * per_panel + 1.2) * n_rows))
    for i, dataset in enumerate(datasets):
        for j, fraction in enumerate(fractions):
            _regime_panel(axes[i][j], t[(t["dataset"] == dataset) & (t["fraction"] == fraction)], regimes,
                          colours, paper_cols)
            axes[i][j].set_title(f"{dataset}, {100 * fraction:g} % of the training split", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("test accuracy minus random (points, 95 % CI)")
    legend = {n: h for ax in axes.flat for h, n in zip(*ax.get_legend_handles_labels(), strict=True)}
    if legend:  # nothing to compare (one method, or no paired seeds): no legend
        fig.legend(legend.values(), legend.keys(), fontsize=8, loc="lower center", ncol=min(4, len(legend)),
                   frameon=False, title="*: Holm p < 0.05 over the regime's planned comparisons", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def runs_hash(runs_df: pd.DataFrame, compression: pd.DataFrame | None = None) -> str:
    """Content hash of a set of collected runs (folders and their metrics): the data of a table.

    ``compression`` (:func:`collect_results`) adds the compression runs' variants and accuracies.
    """
    import hashlib

    cols = [c for c in ("run_dir", "test_accuracy") if c in runs_df.columns]
    text = runs_df[cols].sort_values(cols[:1]).to_csv(index=False) if cols else ""
    if compression is not None and not compression.empty:
        ccols = ["compression_run", "variant", "accuracy"]
        text += compression[ccols].sort_values(ccols[:2]).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table2_seed_metrics(table: pd.DataFrame, min_cr: float = 9.0) -> dict[str, Any]:
    """Metrics of Table 2 over seeds (:func:`table2_over_seeds`).

    Per dataset/model/coreset/fraction: the fp32 mean and the most accurate setting whose mean
    on-disk CR is >= ``min_cr`` (mean, paired difference to fp32, its 95 % interval over seeds).
    """
    out: dict[str, Any] = {}
    for (ds, model, coreset, frac), g in table.groupby(
            ["dataset", "model", "coreset", "fraction"], sort=True):
        key = f"t2_{ds}_{model}_{coreset}_{frac:g}"
        fp32 = g[g["method"] == "none"]
        out[f"{key}_n_seeds"] = int(fp32["n_seeds"].iloc[0]) if not fp32.empty else 0
        if not fp32.empty:
            out[f"{key}_fp32_acc_mean"] = round(float(fp32["mean"].iloc[0]), 4)
        ok = g[(g["method"] != "none") & (g["cr_disk"] >= min_cr)]
        if ok.empty:
            continue
        best = ok.sort_values(["mean", "cr_disk"], ascending=False).iloc[0]
        out[f"{key}_best_cr{min_cr:g}"] = f"{best['method']}: {best['setting']}"
        for col, name in (("mean", "acc_mean"), ("diff_vs_fp32", "diff_vs_fp32"),
                          ("ci_low", "ci_low"), ("ci_high", "ci_high")):
            if pd.notna(best[col]):  # one seed has no interval: left out, not NaN (strict JSON)
                out[f"{key}_best_cr{min_cr:g}_{name}"] = round(float(best[col]), 4)
    return out


def table1_metrics(table: pd.DataFrame, runs_found: int, expected: int) -> dict[str, Any]:
    """The ``metrics.json`` of notebook 09: run counts, every cell's mean and paired difference."""
    out: dict[str, Any] = {"runs_found": int(runs_found), "runs_expected": int(expected)}
    for _, r in table.iterrows():
        reg = re.sub(r"[^a-z0-9]+", "-", str(r.get("regime", "")).lower()).strip("-")  # scratch-300-steps
        key = f"{r['dataset']}_{r['model']}_{reg}_{r['coreset']}_{r['fraction']:g}"
        out[f"{key}_acc_mean"] = round(float(r["mean"]), 4)
        out[f"{key}_n"] = int(r["n_seeds"])
        if pd.notna(r.get("diff_vs_random")):
            out[f"{key}_diff_vs_random"] = round(float(r["diff_vs_random"]), 4)
    return out


def regime_metrics(gain: pd.DataFrame, probes: pd.DataFrame, convergence: pd.DataFrame,
                   doubling: pd.DataFrame | None = None) -> dict[str, Any]:
    """Notebook 09's metrics of the pretraining gain, the linear probes and the doubling rule.

    ``doubling``: :func:`budget_doubling`'s table; ``convergence``: see below.
    """
    # random's convergence stays in convergence.csv, not here: it is read from each run's
    # history.csv, which a profile may not commit (smoke keeps params and metrics only)
    out: dict[str, Any] = {}
    for r in gain.itertuples():
        key = f"gain_{r.dataset}_{r.model}_{r.coreset}_{r.fraction:g}_{r.budget.replace(' ', '')}"
        out[f"{key}_points"] = round(float(r.gain), 4)
        out[f"{key}_ci_low"] = round(float(r.ci_low), 4) if pd.notna(r.ci_low) else None
        out[f"{key}_shown"] = bool(r.shown)  # interval above zero at the look's own level
        out[f"{key}_status"] = str(r.status)  # a second look is tested once, with all its planned pairs
    for r in probes.itertuples():
        key = f"probe_{r.dataset}_{r.method}_{r.fraction:g}"
        out[f"{key}_percentile_mean"] = round(float(r.percentile_mean), 2)
        out[f"{key}_acc_mean"] = round(float(r.accuracy_mean), 4)
    for r in (doubling if doubling is not None else pd.DataFrame()).itertuples():
        key = f"doubling_{r.dataset}_{r.model}_{r.init}_{r.coreset}_{r.fraction:g}_{r.steps}steps"
        out[f"{key}_gain_points"] = round(float(r.gain), 4)
        out[f"{key}_converged"] = bool(r.converged)  # one-sided 95 % bound below the margin
        out[f"{key}_status"] = str(r.status)
    return out


# --------------------------------------------------------------------------- notebook 05: Tables 2-3
def _setting(row: Mapping[str, Any]) -> str:
    m = str(row["method"])
    if m.endswith("+ft"):  # fine-tuned after compression: the base variant's setting
        return f"{_setting({**row, 'method': m[:-3]})}, fine-tuned"
    if m == "fixed_prune":
        return f"level {row['level']:g}"
    quant = ""
    if m != "lap" and isinstance(row.get("granularity"), str):
        quant = f" ({row['granularity']}, {row['levels']})"
    if m == "fixed_quant":
        return f"{int(row['bits'])} bit{quant}"
    if m in ADAPTIVE_METHODS:
        return f"{row['importance']}, CR>={row['budget']:g}{quant}"
    return "fp32"


PAPER_A_TABLE2_CSV = "paper_a_table2.csv"


def paper_table2(papers_dir: str | os.PathLike) -> pd.DataFrame:
    """Paper A's published Table 2 (ConvNeXt-T, UC Merced): coreset x fraction x method."""
    return _read_paper_csv(papers_dir, PAPER_A_TABLE2_CSV, "Table 2",
                           {"model", "dataset", "coreset", "fraction", "method", "accuracy", "cr"})


def paper_method(row: Mapping[str, Any]) -> str:
    """Paper A's Table 2 name of one of our variants (``pruning_level_1.0``, ``4bit_q``...).

    A fine-tuned variant (``+ft``) is set beside the paper's post-training number of its method.
    """
    m = str(row["method"]).removesuffix("+ft")
    if m == "fixed_prune":
        return f"pruning_level_{float(row['level'])}"  # the CSV's spelling: 0.25, 0.5, 1.0
    if m == "fixed_quant":
        return f"{int(row['bits'])}bit_q"
    return {"none": "baseline", "lap": "adaptive_pruning", "laq": "adaptive_q",
            "pq": "adaptive_p_to_q"}.get(m, m)


def paper_reference(results: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paper A's published accuracy and CR beside each variant, only where the paper has one.

    With ``paper`` (:func:`paper_table2`), each row gets the paper's number for the same
    coreset, fraction and method (its ConvNeXt-T on UC Merced: another model and dataset,
    shown beside ours, never mixed into our numbers). Without it, fixed pruning gets the
    paper's level CRs and P->Q its best result (CR 9.0 at 98.10 %). Nothing is invented.
    """
    out = results.copy()
    out["paper_method"] = [paper_method(r) for _, r in out.iterrows()]
    if paper is not None:
        key = ["coreset", "fraction", "method"]
        ref = paper.rename(columns={"method": "paper_method", "accuracy": "paper_accuracy",
                                    "cr": "paper_cr", "model": "paper_model",
                                    "dataset": "paper_dataset"})
        ref = ref[["paper_model", "paper_dataset", "coreset", "fraction", "paper_method",
                   "paper_accuracy", "paper_cr"]].copy()
        ref["fraction"] = ref["fraction"].astype(float).round(4)
        left = out.assign(fraction=out["fraction"].astype(float).round(4),
                          coreset=out.get("coreset", "random"))
        missing = set(key[:2]) - set(left.columns)
        if missing:
            raise ValueError(f"results need columns {sorted(missing)} to meet the paper's table")
        merged = left.merge(ref, on=["coreset", "fraction", "paper_method"], how="left")
        out["paper_model"] = merged["paper_model"].to_numpy()
        out["paper_dataset"] = merged["paper_dataset"].to_numpy()
        out["paper_accuracy"] = merged["paper_accuracy"].to_numpy()
        out["paper_cr"] = merged["paper_cr"].to_numpy()
        return out
    paper_cr, paper_acc = [], []
    for _, row in results.iterrows():
        cr = acc = float("nan")
        if row["method"] == "fixed_prune":
            cr = PAPER_A_PRUNING_LEVEL_CR.get(float(row["level"]), float("nan"))
        elif row["method"] == "pq":
            cr, acc = PAPER_A_PQ_BEST["cr"], PAPER_A_PQ_BEST["accuracy"]
        paper_cr.append(cr)
        paper_acc.append(acc)
    out["paper_cr"], out["paper_accuracy"] = paper_cr, paper_acc
    return out


#: What identifies one cell of Table 2: never averaged over.
TABLE2_KEYS = ("dataset", "model", "coreset", "fraction", "seed", "method", "setting")


def table2(results: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paper A's Table 2 layout, per dataset and model: coreset x fraction x method.

    One row per (dataset, model, coreset, fraction, seed, method, setting): our accuracy
    (%), paper A's CR (``cr_paper``: 32/b, 1/(1-s), their product), our computed CR
    (``cr``: masks, scales, biases and norms counted), the on-disk CR (``cr_disk``) and the
    artefact's bytes, then the paper's accuracy and CR for the same coreset, fraction and
    method (``paper`` = :func:`paper_table2`). Rows of different datasets, models or seeds
    are never averaged: two results for one key are an error (the old layout averaged
    unrelated runs into one cell).
    """
    df = results.copy()
    for col, default in (("coreset", "random"), ("seed", 0)):
        if col not in df:
            df[col] = default
    for col in ("dataset", "model", "fraction"):
        if col not in df:
            raise ValueError(f"results need a {col!r} column (the training run's {col})")
    if "cr_paper" not in df:
        df["cr_paper"] = np.nan
    df = paper_reference(df, paper)
    df["setting"] = [_setting(r) for _, r in df.iterrows()]
    keys = list(TABLE2_KEYS)
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        first = df.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"two results for one Table 2 cell {first}: refusing to average them")
    cols = keys + ["accuracy"] + [c for c in PAIRED_COLUMNS if c in df]
    cols += ["cr_paper", "cr", "cr_disk", "size_bytes", "paper_method", "paper_accuracy",
             "paper_cr"]
    cols += [c for c in ("paper_model", "paper_dataset") if c in df]
    df = _method_order(df).sort_values(
        ["dataset", "model", "coreset", "fraction", "seed", "_order"], kind="stable")
    return df[cols].reset_index(drop=True)


#: Columns of a variant's image-level comparison with fp32 (``evaluate_variants``).
PAIRED_COLUMNS = ("diff_vs_fp32", "diff_ci_low", "diff_ci_high", "mcnemar_p_holm")
_METHOD_ORDER = {m: i for i, m in enumerate(["none", "fixed_prune", "fixed_quant", "lap", "laq",
                                             "pq"])}


def _method_order(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["_order"] = [_METHOD_ORDER.get(m.split("+")[0], 9) + (0.5 if "+ft" in m else 0)
                    for m in df["method"]]
    return df


def table2_over_seeds(results: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 2 over training seeds: one row per dataset, model, coreset, fraction and setting.

    The unit is the seed: each seed is one training run (split, initialisation, coreset
    tie-breaks) compressed with the same settings. ``mean``/``std`` are the accuracy over
    ``n_seeds`` seeds; ``diff_vs_fp32`` is the mean paired difference to that seed's own fp32
    model (points, negative = worse) with its 95 % t-interval over seeds (``ci_low``/
    ``ci_high``; NaN below 2 seeds) and ``p_holm``, the paired t-test Holm-adjusted over the
    settings of one dataset/model/coreset/fraction. CRs are means over seeds (they differ a
    little: each seed's weights are pruned and quantized on their own). The paper's
    accuracy and CR stand beside, as in :func:`table2`. Nothing is averaged across datasets,
    models, coresets or fractions.
    """
    t2 = table2(results, paper)
    group = ["dataset", "model", "coreset", "fraction"]
    base = t2[t2["method"] == "none"].set_index(group + ["seed"])["accuracy"]
    rows = []
    for key, g in t2.groupby(group + ["method", "setting"], sort=False):
        fp32 = base.reindex([(*key[:4], s) for s in g["seed"]]).to_numpy()
        mean_d, low, high, p = stats.paired_difference(g["accuracy"].to_numpy() - fp32)
        first = g.iloc[0]
        rows.append({**dict(zip(group + ["method", "setting"], key, strict=True)),
                     "n_seeds": len(g), "seeds": " ".join(str(s) for s in sorted(g["seed"])),
                     "mean": g["accuracy"].mean(), "std": g["accuracy"].std(ddof=1),
                     "diff_vs_fp32": mean_d, "ci_low": low, "ci_high": high,
                     "p": p if key[4] != "none" else np.nan,
                     "cr_paper": g["cr_paper"].mean(), "cr": g["cr"].mean(),
                     "cr_disk": g["cr_disk"].mean(),
                     **{c: first[c] for c in ("paper_accuracy", "paper_cr") if c in g}})
    out = pd.DataFrame(rows)
    out["p_holm"] = np.nan
    for _, g in out.groupby(group, sort=False):
        out.loc[g.index, "p_holm"] = stats.holm(g["p"].to_numpy(dtype=float))
    out = _method_order(out).sort_values(group + ["_order"], kind="stable")
    return out.drop(columns=["_order", "p"]).reset_index(drop=True)


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


def best_at_ratio(results: pd.DataFrame, min_cr: float = 9.0,
                  column: str = "cr_disk") -> pd.Series | None:
    """The most accurate variant whose CR (on-disk by default) is >= ``min_cr`` (None if none)."""
    ok = results[results[column] >= min_cr]
    return None if ok.empty else ok.sort_values(["accuracy", column], ascending=False).iloc[0]


def results_summary(results: pd.DataFrame, min_cr: float = 9.0) -> dict[str, Any]:
    """Metrics of a compression run, written to ``metrics.json``.

    fp32 accuracy, best accuracy at on-disk CR >= ``min_cr`` (and its distance to fp32, in
    points), the largest computed-vs-disk CR gap
    and whether every artefact reproduced its simulated model.
    """
    base = results[results["method"] == "none"]
    best = best_at_ratio(results, min_cr)
    comp = results[results["method"] != "none"]
    return {
        "fp32_accuracy": float(base["accuracy"].iloc[0]) if not base.empty else float("nan"),
        f"best_accuracy_cr{min_cr:g}": float("nan") if best is None else float(best["accuracy"]),
        f"best_variant_cr{min_cr:g}": "" if best is None else str(best["variant"]),
        f"best_cr_cr{min_cr:g}": float("nan") if best is None else float(best["cr_disk"]),
        f"fp32_minus_best_cr{min_cr:g}": (float("nan") if best is None or base.empty else
                                          float(base["accuracy"].iloc[0] - best["accuracy"])),
        **({f"best_cr{min_cr:g}_{c}": float(best[c]) for c in PAIRED_COLUMNS}
           if best is not None and "diff_vs_fp32" in best else {}),
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
    info = runs.read_run_json(run_dir, "params.json")
    params = dict(info["params"])
    ds = data.load_dataset(params["dataset"], data_dir=data_dir or None)
    recorded = info.get("data_hash")
    if recorded and recorded != ds.hash:
        raise ValueError(f"{run_dir.name} was trained on data with hash {recorded}, but "
                         f"{params['dataset']} under the data root has hash {ds.hash}")
    seed = int(params.get("seed", 0))
    split = data.get_split(ds, seed=seed)
    # the training loader (fine-tuning after compression) augments as the run's recipe did
    augment = training.get_recipe(params.get("recipe", "paper_a")).augment
    loaders = data.make_loaders(ds, split, image_size=params.get("image_size"),
                                batch_size=batch_size, seed=seed, augment=augment)
    if max_test_images and max_test_images < len(split.test):
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(np.asarray(split.test), max_test_images, replace=False))
        mean, std = data.normalization(ds, split)
        loaders["test"] = data.BatchLoader(ds.images, ds.labels, subset, batch_size,
                                           image_size=params.get("image_size"), mean=mean,
                                           std=std)
    return CompressionSetup(model.cpu().eval(), params, ds, split, loaders,
                            str(params["model"]), float(params.get("fraction", 1.0)))


def collect_results(root: str | os.PathLike | None = None,
                    folders: list[Path] | None = None) -> pd.DataFrame:
    """Finished compression runs' ``results.csv``, with their dataset, model and fraction.

    Every run under ``root`` (default ``runs/compression``), or only ``folders`` (the runs a
    profile's grid names; unfinished ones are left out: count them with ``metrics.json``).
    Feed it to :func:`table2` (one row per run and setting) or :func:`table2_over_seeds`.
    """
    root = Path(root) if root else runs_root() / "compression"
    frames = []
    files = [Path(f) / "results.csv" for f in folders] if folders is not None else \
        sorted(root.glob("*/results.csv"))
    for res in files:
        if not (res.parent / "metrics.json").is_file():
            continue
        df = with_spec_ratios(pd.read_csv(res))  # fine-tuned rows: their variant's CR (issue 21)
        if "cr_disk" in df and "cr" in df:
            df["cr_gap"] = df["cr_disk"] / df["cr"] - 1.0
        df["compression_run"] = res.parent.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
