"""Paper B's comparison on one patch set: five models, one split, one set of test patches.

Glue between the patch sets of :mod:`lcc_utils.sentinel2`, the models and training loop
(:mod:`lcc_utils.models`, :mod:`lcc_utils.training`), the baselines and the metrics, so
notebooks 06 (evaluation) and 07 (ablation) stay short. Every model sees the same
spatially disjoint 70/15/15 split: trained on ``train``, tuned / early-stopped on
``val``, scored on ``test``; so McNemar's test pairs predictions patch by patch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lcc_utils import baselines, metrics
from lcc_utils.constants import PAPER_B_ABLATION
from lcc_utils.paths import atomic_write

from .progress import tqdm

#: Our model key -> the name paper B's results table uses (``constants.PAPER_B_RESULTS``).
MODEL_NAMES: dict[str, str] = {
    "lightweight_cnn": "LightweightCNN",
    "resnet18": "ResNet-18",
    "ndvi_threshold": "NDVI threshold",
    "random_forest": "Random forest",
    "svm": "SVM (RBF)",
}
#: Models trained with :func:`lcc_utils.training.train` and recipe ``paper_b``. ResNet-18
#: gets the same recipe as the small CNN (Adam 1e-3, batch 32, L2 1e-3, early stopping on
#: validation loss), trained from scratch on 6 bands: paper B gives no separate recipe.
NEURAL_MODELS: tuple[str, ...] = ("lightweight_cnn", "resnet18")
#: The binary task's positive class (``sentinel2.BINARY_CLASSES``).
VEGETATION_CLASS = "vegetation"


def get_model_name(key: str) -> str:
    """Paper B's name of model ``key``; a ValueError lists the choices."""
    if key not in MODEL_NAMES:
        raise ValueError(f"unknown paper B model {key!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return MODEL_NAMES[key]


def get_ablation_variant(name: str) -> dict[str, Any]:
    """LightweightCNN keyword arguments of ablation variant ``name`` (A1-A4)."""
    if name not in PAPER_B_ABLATION:
        raise ValueError(
            f"unknown ablation variant {name!r}; choose one of: {', '.join(PAPER_B_ABLATION)}"
        )
    return dict(PAPER_B_ABLATION[name])


@dataclass
class ModelResult:
    """One model's predictions on the test split and what it cost.

    Attributes:
        key: Model key (:data:`MODEL_NAMES`).
        name: Paper B's name of the model.
        y_true: Reference labels of the test patches.
        y_pred: Predicted labels, same patches, same order.
        test_indices: Patch-set indices of the test patches.
        metrics: :func:`lcc_utils.metrics.classification_metrics` output.
        cost: ``params``, ``flops`` (per patch), ``cpu_ms_per_patch`` (NaN where undefined).
        history: Per-epoch training history (neural models only).
        details: Model-specific facts (best epoch, NDVI threshold, SVM grid...).
        probs: Class probabilities (neural models and RF / SVM where available).

    """

    key: str
    name: str
    y_true: np.ndarray
    y_pred: np.ndarray
    test_indices: np.ndarray
    metrics: dict[str, Any]
    cost: dict[str, float]
    history: pd.DataFrame | None = None
    details: dict[str, Any] = field(default_factory=dict)
    probs: np.ndarray | None = None


# --------------------------------------------------------------------------- hand-over 02 -> 06/07/08
def patchset_file(name: str, content_hash: str) -> Path:
    """Where a patch set lives in the cache: ``cache/patchsets/<name>-<content hash>`` (+ .npz/.json)."""
    from lcc_utils.paths import cache_dir

    return cache_dir() / "patchsets" / f"{name}-{content_hash}"


def build_eurosat_patchsets(
    ds: Any, tasks: Sequence[str], *, patch_size: int, bands: Sequence[str], seed: int, block_size_m: float
) -> dict[str, tuple[Any, Path]]:
    """Notebook 02: cut EuroSAT MS into paper B's patch sets, one per task, and store each by content hash."""
    from lcc_utils import sentinel2

    out = {}
    for task in tasks:
        ps = sentinel2.eurosat_ms_patchset(ds, task, patch_size=patch_size, bands=tuple(bands), seed=seed,
                                           block_size_m=block_size_m)
        path = patchset_file(f"eurosat_ms-{task}-p{patch_size}-seed{seed}", ps.hash)
        sentinel2.save_patchset(ps, path)
        out[task] = (ps, path)
    return out


def load_eurosat_patchset(sentinel2_run: Mapping[str, Any], task: str, data_dir: str | None = "") -> Any:
    """The EuroSAT MS patch set of ``task`` that notebook 02 built, found by 02's parameters.

    ``sentinel2_run`` names the 02 run by its parameters (overrides of 02's defaults, ``{}`` for
    the defaults). The patch set is read from the cache by the content hash the run recorded; in
    a fresh clone (the cache is not committed) it is rebuilt from the run's parameters and must
    reproduce that hash.

    Raises:
        FileNotFoundError: the 02 run has not finished (the message says how to run it).
        ValueError: the run built no patch set for ``task``, or a rebuild gives another hash.

    """
    from lcc_utils import data, runs, sentinel2

    d = runs.find_run("02", sentinel2_run)
    params = json.loads((d / "params.json").read_text())["params"]
    want = json.loads((d / "metrics.json").read_text()).get(f"eurosat_ms_{task}_hash")
    if want is None:
        raise ValueError(f"the 02 run {d.name} built no EuroSAT MS {task!r} patch set (eurosat_task="
                         f"{params['eurosat_task']!r}); run 02 with -p eurosat_task {task} or both")
    try:
        ps = sentinel2.load_patchset(patchset_file(f"eurosat_ms-{task}-p{params['patch_size']}-seed{params['seed']}",
                                                   want))
    except FileNotFoundError:
        ds = data.load_dataset("eurosat_ms", data_dir or None)
        ps = build_eurosat_patchsets(ds, [task], patch_size=params["patch_size"], bands=params["bands"],
                                     seed=params["seed"], block_size_m=params["eurosat_block_size_m"])[task][0]
    if ps.hash != want:
        raise ValueError(f"EuroSAT MS {task} patch set rebuilt with hash {ps.hash}, but the 02 run {d.name} "
                         f"recorded {want}: the data or the code differ")
    return ps


# --------------------------------------------------------------------------- data
def _split_indices(ps: Any) -> dict[str, np.ndarray]:
    idx = {s: ps.indices(s) for s in ("train", "val", "test")}
    empty = [s for s, i in idx.items() if len(i) == 0]
    if empty:
        raise ValueError(f"patch set split(s) {empty} are empty: every model needs train/val/test")
    return idx


def patch_loaders(ps: Any, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Train (augmented: flips / 90-degree rotations, shuffled), val and test loaders.

    Bands are standardised with the per-band mean / std of the TRAIN split only
    (``sentinel2.band_stats``), so no validation or test pixel leaks into training.
    """
    from lcc_utils import data, sentinel2

    idx = _split_indices(ps)
    mean, std = sentinel2.band_stats(ps, "train")
    common = {"batch_size": batch_size, "mean": mean, "std": std}
    return {
        "train": data.BatchLoader(ps.x, ps.y, idx["train"], augment=True, shuffle=True,
                                  seed=seed, **common),
        "val": data.BatchLoader(ps.x, ps.y, idx["val"], **common),
        "test": data.BatchLoader(ps.x, ps.y, idx["test"], **common),
    }


def patch_ndvi(ps: Any, indices: np.ndarray | None = None) -> np.ndarray:
    """Mean NDVI of each patch of ``ps`` (all patches, or those at ``indices``)."""
    x = ps.x if indices is None else ps.x[np.asarray(indices)]
    return baselines.patch_ndvi(x, ps.bands)


# --------------------------------------------------------------------------- one model
def _model_run_dir(run_dir: str | os.PathLike | None, key: str, params: Mapping) -> Path | None:
    """A per-model sub-folder that ``trained.reopen_trained`` can open (params.json + checkpoints)."""
    if run_dir is None:
        return None
    d = Path(run_dir) / "models" / key
    atomic_write(d / "params.json", json.dumps({"params": dict(params)}, indent=2, sort_keys=True, default=str) + "\n")
    return d


def run_neural(
    key: str,
    ps: Any,
    seed: int = 0,
    epochs: int | None = None,
    device: str = "cpu",
    run_dir: str | os.PathLike | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    latency_batch: int = 64,
) -> ModelResult:
    """Train a neural model with recipe ``paper_b`` on ``ps`` and predict its test split.

    Args:
        key: ``lightweight_cnn`` or ``resnet18``.
        ps: A ``sentinel2.PatchSet`` (channels-last reflectance, ``split`` column).
        seed: Seeds the initial weights, shuffling, augmentation and dropout.
        epochs: Epoch budget (recipe default 50); early stopping on validation loss.
        device: ``cpu`` (deterministic), ``cuda`` or ``auto``.
        run_dir: With a folder, the model trains in ``<run_dir>/models/<key>/``
            (``params.json``, ``history.csv``, ``checkpoints/best.pt``,
            ``normalization.json``) so ``trained.reopen_trained`` can reopen it.
        model_kwargs: Extra ``create_model`` options (``depth``, ``filters``, ``kernel_size``).
        latency_batch: Batch size of the CPU latency measurement.

    """
    from lcc_utils import models, sentinel2, training

    if key not in NEURAL_MODELS:
        raise ValueError(f"run_neural: {key!r} is not a neural model; choose one of: "
                         f"{', '.join(NEURAL_MODELS)}")
    kwargs = dict(model_kwargs or {})
    recipe = training.get_recipe("paper_b")
    loaders = patch_loaders(ps, batch_size=recipe.batch_size, seed=seed)
    size = int(ps.x.shape[1])
    sub_params = {
        "model": key, "recipe": recipe.name, "seed": int(seed), "epochs": epochs,
        "image_size": size, "in_chans": len(ps.bands), "bands": list(ps.bands),
        "classes": list(ps.classes), "patchset_hash": ps.hash, "device": device,
        # how to rebuild the patch set (retrain_model): EuroSAT MS, task, tiles, split
        "dataset": "eurosat_ms", "task": ps.meta.get("task"),
        "patch_size": ps.meta.get("patch_size", size), "split_seed": ps.meta.get("seed"),
        "block_size_m": ps.meta.get("block_size_m"),
        **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
    }
    mdir = _model_run_dir(run_dir, key, sub_params)
    if mdir is not None:
        mean, std = sentinel2.band_stats(ps, "train")
        atomic_write(mdir / "normalization.json", json.dumps(
            {"bands": list(ps.bands), "mean": mean, "std": std, "classes": list(ps.classes)}, indent=2) + "\n")
    training.seed_everything(seed)
    net = models.create_model(key, num_classes=len(ps.classes), in_chans=len(ps.bands), **kwargs)
    result = training.train(net, loaders, recipe=recipe, epochs=epochs, device=device,
                            run_dir=mdir, seed=seed, params=sub_params,
                            num_classes=len(ps.classes))
    probs, labels, idx = training.predict(net, loaders["test"], device)
    y_pred = probs.argmax(1).astype(np.int64)
    shape = (len(ps.bands), size, size)
    cost = {
        "params": int(models.count_parameters(net)),
        "flops": int(metrics.count_flops(net, shape)),
        "cpu_ms_per_patch": metrics.cpu_latency_per_patch(net, shape, batch_size=latency_batch),
    }
    return ModelResult(
        key=key, name=get_model_name(key), y_true=labels.astype(np.int64), y_pred=y_pred,
        test_indices=idx.astype(np.int64),
        metrics=metrics.classification_metrics(labels, y_pred, ps.classes), cost=cost,
        history=result.history, probs=probs,
        details={"best_epoch": result.best_epoch, "best_val_loss": result.best_metric,
                 "stopped_early": result.stopped_early, "train_seconds": result.seconds,
                 "run_dir": None if mdir is None else str(mdir)},
    )


def retrain_model(model_dir: str | os.PathLike, data_dir: str | None = None,
                  out: str | os.PathLike | None = None) -> Path:
    """Train a network of :func:`run_neural` (``<run>/models/<key>/``) again: its checkpoint is gone.

    The EuroSAT MS patch set is rebuilt from the recorded task / tile size / split seed (older
    folders: from the enclosing run's ``params.json``), its content hash is checked against the
    recorded one, and the model is retrained with the recorded seed and architecture
    (deterministic on the CPU, so the same weights come back). Reopen it with
    :func:`lcc_utils.trained.reopen_trained`. ``model_dir`` is only read: the rebuilt network
    goes to ``<out>/models/<key>/``, ``out`` defaulting to the enclosing run's staging folder
    in the cache (:func:`lcc_utils.runs.rerun_dir`); the folder is returned.

    Raises:
        ValueError: the rebuilt patch set differs from the one the run used.

    """
    from lcc_utils import data, runs, sentinel2, training

    model_dir = Path(model_dir)
    out = Path(out) if out is not None else runs.rerun_dir(model_dir).parent.parent
    params = dict(json.loads((model_dir / "params.json").read_text())["params"])
    arch = {k: params[k] for k in training.ARCH_KEYS if k in params}
    spec = {k: params.get(k) for k in ("task", "patch_size", "split_seed", "block_size_m")}
    if any(v is None for v in spec.values()):
        # folders written before these keys were recorded: the enclosing evaluation run
        outer = json.loads((model_dir.parent.parent / "params.json").read_text())["params"]
        spec = {"task": outer["task"], "patch_size": outer["patch_size"],
                "split_seed": outer.get("split_seed", outer.get("seed")),
                "block_size_m": outer["block_size_m"]}
    ds = data.load_dataset("eurosat_ms", data_dir=data_dir or None)
    ps = sentinel2.eurosat_ms_patchset(ds, task=spec["task"], patch_size=int(spec["patch_size"]),
                                       bands=tuple(params["bands"]), seed=int(spec["split_seed"]),
                                       block_size_m=float(spec["block_size_m"]))
    if ps.hash != params["patchset_hash"]:
        raise ValueError(f"rebuilt patch set has hash {ps.hash}, the run used "
                         f"{params['patchset_hash']}: the data differ, cannot rebuild {model_dir}")
    run_neural(params["model"], ps, seed=int(params["seed"]), epochs=params.get("epochs"),
               device=params.get("device", "cpu"), run_dir=out, model_kwargs=arch)
    return out / "models" / model_dir.name


def run_baseline(key: str, ps: Any, seed: int = 0) -> ModelResult:
    """Fit a baseline on the train (and validation) split of ``ps``; predict its test split.

    ``ndvi_threshold`` picks its threshold on validation (binary task only); ``random_forest``
    trains on train; ``svm`` trains on train and picks C / gamma on validation.
    ``cpu_ms_per_patch`` times feature extraction + prediction on the test patches.
    """
    idx = _split_indices(ps)
    y = np.asarray(ps.y, dtype=np.int64)
    te = idx["test"]
    details: dict[str, Any] = {}
    probs = None
    if key == "ndvi_threshold":
        if len(ps.classes) != 2 or VEGETATION_CLASS not in ps.classes:
            raise ValueError(
                "ndvi_threshold applies to the binary vegetation task only (classes "
                f"{list(ps.classes)}); leave it out of `models` for the multiclass task"
            )
        model = baselines.NDVIThreshold(vegetation_label=list(ps.classes).index(VEGETATION_CLASS))
        model.fit(patch_ndvi(ps, idx["val"]), y[idx["val"]])
        t0 = time.perf_counter()
        y_pred = model.predict(patch_ndvi(ps, te))
        dt = time.perf_counter() - t0
        details = {"threshold": model.threshold_, "val_oa": model.val_oa_}
    elif key in ("random_forest", "svm"):
        feats = {s: baselines.spectral_features(ps.x[i], ps.bands) for s, i in idx.items()}
        if key == "random_forest":
            model = baselines.train_random_forest(feats["train"], y[idx["train"]], seed=seed)
        else:
            model, grid = baselines.train_svm(feats["train"], y[idx["train"]], feats["val"],
                                              y[idx["val"]], seed=seed)
            sel = grid[grid["selected"]].iloc[0]
            details = {"C": float(sel["C"]), "gamma": sel["gamma"], "val_oa": float(sel["val_oa"]),
                       "grid": grid.to_dict("records")}
        t0 = time.perf_counter()
        f_test = baselines.spectral_features(ps.x[te], ps.bands)
        y_pred = model.predict(f_test).astype(np.int64)
        dt = time.perf_counter() - t0
        if key == "random_forest":
            probs = model.predict_proba(f_test)
    else:
        raise ValueError(f"run_baseline: {key!r} is not a baseline; choose one of: "
                         "ndvi_threshold, random_forest, svm")
    return ModelResult(
        key=key, name=get_model_name(key), y_true=y[te], y_pred=y_pred, test_indices=te,
        metrics=metrics.classification_metrics(y[te], y_pred, ps.classes),
        cost={"params": float("nan"), "flops": float("nan"),
              "cpu_ms_per_patch": dt / len(te) * 1000.0},
        details=details, probs=probs,
    )


def run_models(
    keys: Sequence[str],
    ps: Any,
    seed: int = 0,
    epochs: int | None = None,
    device: str = "cpu",
    run_dir: str | os.PathLike | None = None,
) -> dict[str, ModelResult]:
    """Run every model in ``keys`` on the same split of ``ps`` (paper B's comparison).

    Returns ``{key: ModelResult}`` in ``keys`` order; all share the same test patches.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("keys is empty: name at least one model")
    for k in keys:
        get_model_name(k)
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys has duplicates: {keys}")
    out: dict[str, ModelResult] = {}
    for k in tqdm(keys, desc="paper B models", unit="model"):
        if k in NEURAL_MODELS:
            out[k] = run_neural(k, ps, seed=seed, epochs=epochs, device=device, run_dir=run_dir)
        else:
            out[k] = run_baseline(k, ps, seed=seed)
    return out


# --------------------------------------------------------------------------- tables
def _check_same_test(results: Mapping[str, ModelResult]) -> np.ndarray:
    if not results:
        raise ValueError("results is empty")
    first = next(iter(results.values()))
    for r in results.values():
        if not np.array_equal(r.test_indices, first.test_indices):
            raise ValueError(f"{r.name} was scored on other test patches than {first.name}: "
                             "paired tests need the same patches in the same order")
    return first.y_true


def summary(results: Mapping[str, ModelResult]) -> pd.DataFrame:
    """Our numbers beside paper B's (``metrics.summary_table``), one row per model."""
    _check_same_test(results)
    return metrics.summary_table({r.name: {**r.metrics, **r.cost} for r in results.values()})


def per_class(results: Mapping[str, ModelResult]) -> pd.DataFrame:
    """Long table of per-class precision / recall / F1 / support for every model."""
    frames = []
    for r in results.values():
        t = metrics.per_class_table(r.metrics).reset_index()
        t.insert(0, "model", r.name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def mcnemar_table(results: Mapping[str, ModelResult]) -> pd.DataFrame:
    """McNemar's test for every pair of models on the shared test patches."""
    y = _check_same_test(results)
    return metrics.pairwise_mcnemar(y, {r.name: r.y_pred for r in results.values()})


def predictions(ps: Any, results: Mapping[str, ModelResult]) -> pd.DataFrame:
    """One row per test patch: index, reference class, NDVI and each model's prediction."""
    y = _check_same_test(results)
    first = next(iter(results.values()))
    df = pd.DataFrame({"index": first.test_indices, "y_true": y,
                       "ndvi": patch_ndvi(ps, first.test_indices)})
    for r in results.values():
        df[f"pred_{r.key}"] = r.y_pred
    return df


def ndvi_errors(ps: Any, results: Mapping[str, ModelResult],
                bins: Sequence[float] | int | None = None) -> pd.DataFrame:
    """NDVI-binned error rates of every model (long table: ``model`` + bin columns)."""
    _check_same_test(results)
    first = next(iter(results.values()))
    v = patch_ndvi(ps, first.test_indices)
    frames = []
    for r in results.values():
        kw = {} if bins is None else {"bins": bins}
        t = metrics.ndvi_binned_errors(v, r.y_true, r.y_pred, **kw)
        t.insert(0, "model", r.name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def flat_metrics(results: Mapping[str, ModelResult]) -> dict[str, float]:
    """Scalar metrics per model for ``metrics.json`` (``<key>_oa``, ``<key>_kappa``...)."""
    out: dict[str, float] = {}
    for r in results.values():
        for m in ("oa", "kappa", "macro_precision", "macro_recall", "macro_f1"):
            out[f"{r.key}_{m}"] = round(float(r.metrics[m]), 6)
        for c in ("params", "flops"):
            v = r.cost[c]
            if not (isinstance(v, float) and np.isnan(v)):
                out[f"{r.key}_{c}"] = int(v)
        if "best_epoch" in r.details:
            out[f"{r.key}_best_epoch"] = int(r.details["best_epoch"])
        if "threshold" in r.details:
            out[f"{r.key}_threshold"] = round(float(r.details["threshold"]), 6)
    out["n_test"] = int(len(next(iter(results.values())).y_true))
    return out


# --------------------------------------------------------------------------- ablation
def run_ablation(
    ps: Any,
    variants: Sequence[str] = tuple(PAPER_B_ABLATION),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    device: str = "cpu",
    run_dir: str | os.PathLike | None = None,
    reference: str = "A2",
) -> tuple[pd.DataFrame, dict[tuple[str, int], ModelResult]]:
    """Paper B's architecture ablation: each variant x seed on the same split of ``ps``.

    The split is fixed (the patch set's); ``seed`` varies the initial weights, the
    shuffling, augmentation and dropout. Each variant is compared with ``reference`` (A2,
    the three-block 3x3 baseline) by McNemar's test on the same test patches, per seed.

    Returns:
        A table with one row per (variant, seed): architecture, ``params``, ``flops``,
        ``cpu_ms_per_patch``, ``oa``, ``kappa``, ``macro_f1``, ``best_epoch`` and the
        McNemar counts ``b_only_A2_right``, ``c_only_variant_right`` and
        ``mcnemar_p_vs_A2`` against the reference (NaN for the reference
        itself), plus the ModelResults keyed by ``(variant, seed)``.

    """
    variants = list(variants)
    for v in variants:
        get_ablation_variant(v)
    if reference not in variants:
        raise ValueError(f"reference variant {reference!r} must be among variants {variants}")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    results: dict[tuple[str, int], ModelResult] = {}
    jobs = [(v, int(s)) for s in seeds for v in variants]
    for v, s in tqdm(jobs, desc="ablation", unit="model"):
        sub = None if run_dir is None else Path(run_dir) / f"{v}-seed{s}"
        results[(v, s)] = run_neural("lightweight_cnn", ps, seed=s, epochs=epochs, device=device,
                                     run_dir=sub, model_kwargs=get_ablation_variant(v))
    rows = []
    for (v, s), r in results.items():
        ref = results[(reference, s)]
        if not np.array_equal(r.test_indices, ref.test_indices):
            raise ValueError(f"{v} seed {s} was scored on other test patches than {reference}")
        mc = ({"b": np.nan, "c": np.nan, "p_value": np.nan} if v == reference
              else metrics.mcnemar(r.y_true, ref.y_pred, r.y_pred))
        arch = get_ablation_variant(v)
        rows.append({
            "variant": v, "seed": s, "depth": arch["depth"],
            "filters": "/".join(str(f) for f in arch["filters"]),
            "kernel_size": arch["kernel_size"], **r.cost,
            "oa": r.metrics["oa"], "kappa": r.metrics["kappa"], "macro_f1": r.metrics["macro_f1"],
            "best_epoch": r.details["best_epoch"],
            f"b_only_{reference}_right": mc["b"], "c_only_variant_right": mc["c"],
            f"mcnemar_p_vs_{reference}": mc["p_value"],
        })
    table = pd.DataFrame(rows).sort_values(["variant", "seed"]).reset_index(drop=True)
    return table, results


def ablation_summary(table: pd.DataFrame, reference: str = "A2") -> pd.DataFrame:
    """Mean +- std over seeds per variant (params / FLOPs are per variant, not averaged)."""
    cols = ["oa", "kappa", "macro_f1", "cpu_ms_per_patch"]
    ms = metrics.mean_std(table, "variant", cols)
    first = table.groupby("variant")[["depth", "filters", "kernel_size", "params", "flops"]].first()
    pcol = f"mcnemar_p_vs_{reference}"
    sig = table.groupby("variant")[pcol].agg(lambda p: int((p < 0.05).sum()))
    out = first.join(ms)
    out[f"seeds_p<0.05_vs_{reference}"] = sig
    return out


def ablation_metrics(summary_df: pd.DataFrame) -> dict[str, float | None]:
    """Scalars of :func:`ablation_summary` for ``metrics.json`` (``A2_oa_mean``, ``A2_params``...)."""
    out: dict[str, float | None] = {}
    for v, row in summary_df.iterrows():
        out[f"{v}_params"] = int(row["params"])
        out[f"{v}_flops"] = int(row["flops"])
        for m in ("oa", "kappa", "macro_f1"):
            for s in ("mean", "std"):
                val = float(row[f"{m}_{s}"])
                out[f"{v}_{m}_{s}"] = None if np.isnan(val) else round(val, 6)
        out[f"{v}_n_seeds"] = int(row["n"])
    return out


def plot_ablation(table: pd.DataFrame, reference: str = "A2") -> Figure:
    """OA of each ablation variant (one dot per seed, mean +- std bar) against its parameters."""
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("table is empty: run run_ablation(...) first")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    variants = sorted(table["variant"].unique())
    for i, v in enumerate(variants):
        part = table[table["variant"] == v]
        oa = 100 * part["oa"].to_numpy()
        ax0.scatter(np.full(len(oa), i), oa, color="grey", s=14, zorder=3)
        ax0.errorbar(i, oa.mean(), yerr=oa.std(ddof=1) if len(oa) > 1 else 0, fmt="o",
                     color="C3" if v == reference else "C0", capsize=5, markersize=8)
        ax1.errorbar(part["params"].iloc[0], oa.mean(),
                     yerr=oa.std(ddof=1) if len(oa) > 1 else 0, fmt="o", capsize=4,
                     color="C3" if v == reference else "C0")
        ax1.annotate(v, (part["params"].iloc[0], oa.mean()), xytext=(6, 4),
                     textcoords="offset points")
    ax0.set_xticks(range(len(variants)), variants)
    ax0.set_ylabel("test OA (%)")
    ax0.set_title(f"OA per seed and mean +- std ({reference} = baseline)")
    ax1.set_xscale("log")
    ax1.axvline(150_000, color="grey", ls="--", lw=1, label="paper B budget 150k")
    ax1.set_xlabel("parameters")
    ax1.set_ylabel("test OA (%)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig


def torch_threads(n: int) -> int:
    """Set torch's CPU thread count (1 avoids oversubscription on shared cores); returns it."""
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    torch.set_num_threads(int(n))
    return torch.get_num_threads()
