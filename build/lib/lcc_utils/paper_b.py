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
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lcc_utils import baselines, metrics, stats
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
    ds: Any, tasks: Sequence[str], *, patch_size: int, bands: Sequence[str], seed: int, block_size_m: float,
    buffer_m: float = 0.0, binary_labels: str = "landuse",
) -> dict[str, tuple[Any, Path]]:
    """Notebook 02: cut EuroSAT MS into paper B's patch sets, one per task, and store each by content hash.

    ``binary_labels`` (:data:`lcc_utils.sentinel2.labels.BINARY_LABELS`) decides which classes are
    vegetation in the binary task; a non-default definition is part of the cache file's name.
    """
    from lcc_utils import sentinel2

    out = {}
    for task in tasks:
        ps = sentinel2.eurosat_ms_patchset(ds, task, patch_size=patch_size, bands=tuple(bands), seed=seed,
                                           block_size_m=block_size_m, buffer_m=buffer_m,
                                           binary_labels=binary_labels)
        path = patchset_file(_patchset_name(task, patch_size, seed, binary_labels), ps.hash)
        sentinel2.save_patchset(ps, path)
        out[task] = (ps, path)
    return out


def _patchset_name(task: str, patch_size: int, seed: int, binary_labels: str) -> str:
    from lcc_utils.sentinel2.labels import DEFAULT_BINARY_LABELS

    extra = f"-{binary_labels}" if task == "binary" and binary_labels != DEFAULT_BINARY_LABELS else ""
    return f"eurosat_ms-{task}{extra}-p{patch_size}-seed{seed}"


def sentinel2_run_for(sentinel2_run: Mapping[str, Any], task: str, binary_labels: str) -> dict[str, Any]:
    """The parameters of the 02 run that built the patch set of ``task`` under ``binary_labels``.

    ``binary_labels`` of notebooks 06 / 07 names the 02 run's ``binary_labels`` (left out at the
    default, so the committed runs keep pointing at the same 02 run).

    Raises:
        ValueError: an unknown label definition, one asked of the 10-class task, or one that
            contradicts ``sentinel2_run``'s own ``binary_labels``.

    """
    from lcc_utils.sentinel2.labels import DEFAULT_BINARY_LABELS, get_binary_labels

    get_binary_labels(binary_labels)
    ref = dict(sentinel2_run)
    if binary_labels == DEFAULT_BINARY_LABELS:
        return ref
    if task != "binary":
        raise ValueError(f"binary_labels={binary_labels!r} defines the binary task; the {task} task has "
                         f"no label grouping (leave binary_labels at {DEFAULT_BINARY_LABELS!r})")
    if ref.get("binary_labels", binary_labels) != binary_labels:
        raise ValueError(f"binary_labels={binary_labels!r} but sentinel2_run names the 02 run with "
                         f"binary_labels={ref['binary_labels']!r}: give one of them")
    return {**ref, "binary_labels": binary_labels}


def run_tag(task: str, binary_labels: str = "landuse") -> str:
    """Name stem of a run's published figures: ``binary``, ``multiclass``, ``binary_ndvi_sides``.

    The default label definition keeps the committed names, so a run of another definition
    never overwrites the committed figures.
    """
    from lcc_utils.sentinel2.labels import DEFAULT_BINARY_LABELS, get_binary_labels

    get_binary_labels(binary_labels)
    return task if binary_labels == DEFAULT_BINARY_LABELS else f"{task}_{binary_labels}"


def load_eurosat_patchset(sentinel2_run: Mapping[str, Any], task: str, data_dir: str | None = "",
                          binary_labels: str = "landuse") -> Any:
    """The EuroSAT MS patch set of ``task`` that notebook 02 built, found by 02's parameters.

    ``sentinel2_run`` names the 02 run by its parameters (overrides of 02's defaults, ``{}`` for
    the defaults); ``binary_labels`` adds the label definition (:func:`sentinel2_run_for`). The
    02 run is the one made on the EuroSAT MS files under ``data_dir`` (the reader's data root;
    else ``sentinel2_run``'s own ``data_dir``): 02 on another tree with the same parameters is
    another run (:func:`lcc_utils.runs.data_variant_dir`), and its patch set is the one read. The
    patch set is read from the cache by the content hash the run recorded; in a fresh clone (the
    cache is not committed) it is rebuilt from the run's parameters and must reproduce that hash.

    Raises:
        FileNotFoundError: the 02 run has not finished (the message says how to run it).
        ValueError: the run built no patch set for ``task``; the cached patch set's hash is not
            the one the run recorded (the message names the file); a rebuild gives another hash.

    """
    from lcc_utils import data, runs, sentinel2

    ref = sentinel2_run_for(sentinel2_run, task, binary_labels)
    root = data_dir or ref.get("data_dir") or ""
    d = runs.find_run("02", {**ref, **({"data_dir": str(root)} if root else {})})
    params = runs.read_run_json(d, "params.json")["params"]
    labels = params.get("binary_labels", "landuse")
    want = runs.read_run_json(d, "metrics.json").get(f"eurosat_ms_{task}_hash")
    if want is None:
        raise ValueError(f"the 02 run {d.name} built no EuroSAT MS {task!r} patch set (eurosat_task="
                         f"{params['eurosat_task']!r}); run 02 with -p eurosat_task {task} or both")
    path = patchset_file(_patchset_name(task, params["patch_size"], params["seed"], labels), want)
    try:
        ps = sentinel2.load_patchset(path)
    except FileNotFoundError:
        ds = data.load_dataset("eurosat_ms", root or None)
        ps = build_eurosat_patchsets(ds, [task], patch_size=params["patch_size"], bands=params["bands"],
                                     seed=params["seed"], block_size_m=params["eurosat_block_size_m"],
                                     buffer_m=params.get("eurosat_buffer_m", 0.0), binary_labels=labels)[task][0]
        if ps.hash != want:
            raise ValueError(f"EuroSAT MS {task} patch set rebuilt from {runs.shown_path(ds.root)} with hash "
                             f"{ps.hash}, but the 02 run {d.name} recorded {want}: the data or the code differ; "
                             "run 02 on these data (its own run folder) and read that run") from None
        return ps
    if ps.hash != want:  # a consistent patch set of other data or code under this run's name
        raise ValueError(f"{path.parent / (path.name + '.npz')}: patch set of hash {ps.hash}, but the 02 run {d.name} "
                         f"recorded {want}; it is not that run's patch set. Delete {path.name}.npz and .json "
                         "(it is rebuilt from the data) or rerun 02")
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
    """Mean NDVI of each patch of ``ps`` (all patches, or those at ``indices``), on :func:`ndvi_reflectance`."""
    x = ps.x if indices is None else ps.x[np.asarray(indices)]
    return baselines.patch_ndvi(x, ps.bands)


def ndvi_reflectance(ps: Any) -> str:
    """Which reflectance the patch NDVI of ``ps`` is computed on (the NDVI threshold, bins and class sides).

    EuroSAT MS patch sets hold L1C top-of-atmosphere reflectance; a scene patch set (02) holds L2A
    surface reflectance. Paper B's NDVI values (its transitional range 0.15-0.25) are surface NDVI.
    """
    from lcc_utils.sentinel2.labels import NDVI_REFLECTANCE

    src = str(ps.meta.get("source", ""))
    if ps.meta.get("ndvi_reflectance"):
        return str(ps.meta["ndvi_reflectance"])
    if "L1C" in src:
        return NDVI_REFLECTANCE
    return "L2A surface reflectance" if "L2A" in src or "scene" in src.lower() else "unknown"


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
    folder: str | None = None,
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
        folder: Name of the sub-folder under ``<run_dir>/models/`` (default ``key``;
            notebook 06 uses ``<key>-seed<k>``, one per training seed).

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
        "block_size_m": ps.meta.get("block_size_m"), "buffer_m": ps.meta.get("buffer_m", 0.0),
        # recorded only off the default, so the folders of committed runs keep their params.json
        **({"binary_labels": ps.meta["binary_labels"]} if ps.meta.get("binary_labels", "landuse") != "landuse" else {}),
        **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
    }
    mdir = _model_run_dir(run_dir, folder or key, sub_params)
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
    params = dict(runs.read_run_json(model_dir, "params.json")["params"])
    arch = {k: params[k] for k in training.ARCH_KEYS if k in params}
    spec = {k: params.get(k) for k in ("task", "patch_size", "split_seed", "block_size_m")}
    buffer_m = float(params.get("buffer_m") or 0.0)
    if any(v is None for v in spec.values()):
        # folders written before these keys were recorded: the enclosing evaluation run
        outer = runs.read_run_json(model_dir.parent.parent, "params.json")["params"]
        spec = {"task": outer["task"], "patch_size": outer["patch_size"],
                "split_seed": outer.get("split_seed", outer.get("seed")),
                "block_size_m": outer["block_size_m"]}
    ds = data.load_dataset("eurosat_ms", data_dir=data_dir or None)
    ps = sentinel2.eurosat_ms_patchset(ds, task=spec["task"], patch_size=int(spec["patch_size"]),
                                       bands=tuple(params["bands"]), seed=int(spec["split_seed"]),
                                       block_size_m=float(spec["block_size_m"]), buffer_m=buffer_m,
                                       binary_labels=params.get("binary_labels", "landuse"))
    if ps.hash != params["patchset_hash"]:
        raise ValueError(f"rebuilt patch set has hash {ps.hash}, the run used "
                         f"{params['patchset_hash']}: the data differ, cannot rebuild {model_dir}")
    run_neural(params["model"], ps, seed=int(params["seed"]), epochs=params.get("epochs"),
               device=params.get("device", "cpu"), run_dir=out, model_kwargs=arch, folder=model_dir.name)
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


def model_folder(key: str, seed: int) -> str:
    """Sub-folder of a network of notebook 06 under ``<run>/models/``: ``<key>-seed<seed>``."""
    return f"{key}-seed{int(seed)}"


def run_models(
    keys: Sequence[str],
    ps: Any,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    device: str = "cpu",
    run_dir: str | os.PathLike | None = None,
) -> dict[str, list[ModelResult]]:
    """Run every model in ``keys`` once per training seed on the same split of ``ps``.

    The split is the patch set's (fixed); a seed changes a network's initial weights,
    shuffling, augmentation and dropout, and the random forest's trees. The NDVI threshold
    and the SVM are deterministic given the split: they are run per seed too, so every
    model has one prediction row per seed and the tables pair them seed by seed.
    Networks train in ``<run_dir>/models/<key>-seed<k>/``.

    Returns ``{key: [ModelResult per seed]}`` in ``keys`` order; all share the test patches.
    """
    keys = list(keys)
    seeds = [int(s) for s in seeds]
    if not keys:
        raise ValueError("keys is empty: name at least one model")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {seeds}")
    for k in keys:
        get_model_name(k)
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys has duplicates: {keys}")
    out: dict[str, list[ModelResult]] = {k: [] for k in keys}
    jobs = [(k, s) for k in keys for s in seeds]
    for k, s in tqdm(jobs, desc="paper B models x seeds", unit="model"):
        if k in NEURAL_MODELS:
            out[k].append(run_neural(k, ps, seed=s, epochs=epochs, device=device, run_dir=run_dir,
                                     folder=model_folder(k, s)))
        else:
            out[k].append(run_baseline(k, ps, seed=s))
        out[k][-1].details["seed"] = s
    return out


# --------------------------------------------------------------------------- tables
#: The independent unit of the paired tests. EuroSAT MS test patches are the four 32 px
#: quadrants of 64 px images, so the source image is the smallest independent unit
#: ("image"); "block" uses the spatial block of the split instead (coarser, fewer units).
CLUSTERS = ("image", "block")


def _as_seeds(results: Mapping[str, Any]) -> dict[str, list[ModelResult]]:
    """``{key: [ModelResult, ...]}`` (a single ModelResult is one seed)."""
    if not results:
        raise ValueError("results is empty")
    return {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in results.items()}


def _check_same_test(results: Mapping[str, Any]) -> np.ndarray:
    res = _as_seeds(results)
    first = next(iter(res.values()))[0]
    for rs in res.values():
        for r in rs:
            if not np.array_equal(r.test_indices, first.test_indices):
                raise ValueError(f"{r.name} was scored on other test patches than {first.name}: "
                                 "paired tests need the same patches in the same order")
    return first.y_true


def _preds(rs: Sequence[ModelResult]) -> np.ndarray:
    return np.stack([r.y_pred for r in rs])


def clusters_of(ps: Any, indices: np.ndarray, cluster: str = "image") -> np.ndarray:
    """Cluster id (the independent unit) of each test patch: its source image or spatial block."""
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}")
    idx = np.asarray(indices)
    if cluster == "block":
        return np.asarray(ps.block)[idx]
    files = ps.meta.get("file")
    if files is None or len(files) != len(ps):
        raise ValueError("the patch set records no source image per patch (meta['file']); "
                         "use cluster='block'")
    return np.asarray(files, dtype=object)[idx].astype(str)


def summary(results: Mapping[str, Any]) -> pd.DataFrame:
    """Our numbers (mean and std over seeds) beside paper B's, one row per model."""
    _check_same_test(results)
    res = _as_seeds(results)
    means = {}
    rows_std = {}
    for rs in res.values():
        ms = ("oa", "kappa", "macro_precision", "macro_recall", "macro_f1")
        vals = {m: np.array([r.metrics[m] for r in rs], dtype=float) for m in ms}
        means[rs[0].name] = {**{m: v.mean() for m, v in vals.items()}, **rs[0].cost,
                             "cpu_ms_per_patch": float(np.median([r.cost["cpu_ms_per_patch"] for r in rs]))}
        rows_std[rs[0].name] = {"oa_std_pp": 100 * vals["oa"].std(ddof=1) if len(rs) > 1 else np.nan,
                                "kappa_std": vals["kappa"].std(ddof=1) if len(rs) > 1 else np.nan,
                                "macro_f1_std": vals["macro_f1"].std(ddof=1) if len(rs) > 1 else np.nan,
                                "n_seeds": len(rs)}
    out = metrics.summary_table(means)
    std = pd.DataFrame(rows_std).T
    out.insert(out.columns.get_loc("oa_%") + 1, "oa_std_pp", std["oa_std_pp"].astype(float))
    out.insert(out.columns.get_loc("kappa") + 1, "kappa_std", std["kappa_std"].astype(float))
    out.insert(out.columns.get_loc("macro_f1") + 1, "macro_f1_std", std["macro_f1_std"].astype(float))
    out["n_seeds"] = std["n_seeds"].astype(int)
    return out


def per_class(results: Mapping[str, Any]) -> pd.DataFrame:
    """Long table of per-class precision / recall / F1 / support for every model and seed."""
    frames = []
    for rs in _as_seeds(results).values():
        for r in rs:
            t = metrics.per_class_table(r.metrics).reset_index()
            t.insert(0, "seed", r.details.get("seed", 0))
            t.insert(0, "model", r.name)
            frames.append(t)
    return pd.concat(frames, ignore_index=True)


def accuracy_intervals(ps: Any, results: Mapping[str, Any], cluster: str = "image",
                       n_boot: int = 2000) -> pd.DataFrame:
    """Each model's OA, kappa, macro P / R / F1: seed mean, seed std, two-stage bootstrap 95 % / 90 % CI.

    The interval resamples the training seeds, then the ``cluster`` units (source images) within
    each drawn seed (:func:`lcc_utils.stats.two_stage_bootstrap`): it carries the seed-to-seed
    variation of the networks as well as the sampling of test images.
    """
    y = _check_same_test(results)
    res = _as_seeds(results)
    first = next(iter(res.values()))[0]
    cl = clusters_of(ps, first.test_indices, cluster)
    frames = []
    for rs in res.values():
        t = stats.two_stage_bootstrap(y, _preds(rs), cl, len(ps.classes), n_boot=n_boot).reset_index()
        t.insert(0, "model", rs[0].name)
        frames.append(t)
    out = pd.concat(frames, ignore_index=True)
    out["cluster"] = cluster
    out["interval"] = f"two-stage bootstrap: seeds, then {cluster}s"
    return out


def model_tests(ps: Any, results: Mapping[str, Any], cluster: str = "image", alpha: float = 0.05,
                n_boot: int = 2000) -> pd.DataFrame:
    """Every pair of models tested at the independent unit, Holm-corrected over the pairs.

    :func:`lcc_utils.stats.pairwise_cluster_tests` with the test patches' source images
    (``cluster="image"``) or spatial blocks as the unit: a paired permutation test over the
    clusters (per-cluster accuracy differences averaged over seeds; it decides
    ``significant_holm``), the sign test beside it, a two-stage bootstrap 95 % / 90 % CI of the
    OA difference (seeds, then clusters), an equivalence test with margin
    ``stats.EQUIVALENCE_MARGIN_PP`` (``equivalent``) and, labelled ``patch_level_mcnemar_p``,
    the (optimistic) patch-level McNemar p-value.
    """
    y = _check_same_test(results)
    res = _as_seeds(results)
    first = next(iter(res.values()))[0]
    cl = clusters_of(ps, first.test_indices, cluster)
    out = stats.pairwise_cluster_tests(y, {rs[0].name: _preds(rs) for rs in res.values()}, cl,
                                         alpha=alpha, n_boot=n_boot)
    out.insert(2, "unit", cluster)
    out.insert(3, "n_seeds", min(len(rs) for rs in res.values()))
    return out


def mcnemar_table(results: Mapping[str, Any]) -> pd.DataFrame:
    """PATCH-LEVEL McNemar's test for every pair of models, seed by seed (long table).

    Patches of one source image are correlated, so these p-values are too small; they are
    kept beside :func:`model_tests` only to show what paper B's unit would give.
    """
    y = _check_same_test(results)
    res = _as_seeds(results)
    n = min(len(rs) for rs in res.values())
    frames = []
    for i in range(n):
        t = stats.pairwise_mcnemar(y, {rs[0].name: rs[i].y_pred for rs in res.values()})
        t.insert(0, "seed", next(iter(res.values()))[i].details.get("seed", i))
        frames.append(t)
    out = pd.concat(frames, ignore_index=True)
    out.insert(1, "unit", "patch")
    return out


def predictions(ps: Any, results: Mapping[str, Any]) -> pd.DataFrame:
    """One row per test patch: index, source image, reference class, NDVI, each model's prediction per seed."""
    y = _check_same_test(results)
    res = _as_seeds(results)
    first = next(iter(res.values()))[0]
    df = pd.DataFrame({"index": first.test_indices, "y_true": y,
                       "ndvi": patch_ndvi(ps, first.test_indices)})
    if ps.meta.get("file") is not None and len(ps.meta["file"]) == len(ps):
        df.insert(1, "image", [Path(str(f)).name for f in clusters_of(ps, first.test_indices, "image")])
    for rs in res.values():
        for r in rs:
            df[f"pred_{r.key}_seed{r.details.get('seed', 0)}"] = r.y_pred
    return df


def ndvi_errors(ps: Any, results: Mapping[str, Any], bins: Sequence[float] | None = None,
                cluster: str = "image", n_boot: int = 2000) -> pd.DataFrame:
    """NDVI-binned error rates of every model (seed mean) with cluster-bootstrap 95 % CIs.

    Bins default to ``constants.PAPER_B_NDVI_BINS`` (edges at 0.15 and 0.25, paper B's
    transitional range, which paper B gives in surface-reflectance NDVI; ours are on the patch set's
    reflectance, named in the ``ndvi_reflectance`` column: L1C TOA for EuroSAT MS). Long table:
    ``model`` + :func:`lcc_utils.stats.binned_error_rates` columns.
    """
    from lcc_utils.constants import PAPER_B_NDVI_BINS

    y = _check_same_test(results)
    res = _as_seeds(results)
    first = next(iter(res.values()))[0]
    v = patch_ndvi(ps, first.test_indices)
    cl = clusters_of(ps, first.test_indices, cluster)
    frames = []
    for rs in res.values():
        t = stats.binned_error_rates(v, y, _preds(rs), cl, bins=PAPER_B_NDVI_BINS if bins is None else bins,
                                       n_boot=n_boot)
        t.insert(0, "model", rs[0].name)
        frames.append(t)
    out = pd.concat(frames, ignore_index=True)
    out["ndvi_reflectance"] = ndvi_reflectance(ps)  # one definition for every bin (README: "NDVI")
    return out


def flat_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics per model for ``metrics.json``: ``<key>_oa`` (seed mean), ``<key>_oa_std``..."""
    out: dict[str, float] = {}
    for rs in _as_seeds(results).values():
        r0 = rs[0]
        for m in ("oa", "kappa", "macro_precision", "macro_recall", "macro_f1"):
            v = np.array([r.metrics[m] for r in rs], dtype=float)
            out[f"{r0.key}_{m}"] = round(float(v.mean()), 6)
            if m in ("oa", "kappa") and len(v) > 1:
                out[f"{r0.key}_{m}_std"] = round(float(v.std(ddof=1)), 6)
        for c in ("params", "flops"):
            v = r0.cost[c]
            if not (isinstance(v, float) and np.isnan(v)):
                out[f"{r0.key}_{c}"] = int(v)
        if "best_epoch" in r0.details:
            out[f"{r0.key}_best_epoch_mean"] = round(float(np.mean([r.details["best_epoch"] for r in rs])), 3)
        if "threshold" in r0.details:
            out[f"{r0.key}_threshold"] = round(float(r0.details["threshold"]), 6)
        out[f"{r0.key}_n_seeds"] = len(rs)
    out["n_test"] = int(len(_check_same_test(results)))
    return out


# --------------------------------------------------------------------------- claims
#: Paper B's own numbers, with its wording, beside the papers' texts (read, never retyped).
PAPER_B_RESULTS_CSV = "paper_b_results.csv"
#: What the claims table is: our data are a proxy for paper B's (EuroSAT MS, L1C, scene labels,
#: Europe; paper B: Dolj County, L2A, hand labels), so a verdict says whether paper B's number is
#: consistent with what the proxy task shows, never whether paper B is right on its own data.
CLAIMS_TITLE = ("Paper B's claims: consistency on a proxy task (EuroSAT MS L1C, scene labels), "
                "not a replication on paper B's data")
#: A claim about paper B's binary vegetation task, asked of a run of another task.
NOT_APPLICABLE = "not applicable: 10-class task"
#: Verdicts of the claims table (:data:`CLAIM_CHECKS` says which check gives which):
#:
#: * ``yes`` / ``no`` / ``undecided``: a threshold claim is "yes" when our 95 % interval lies on
#:   its side, "no" on the other, "undecided" when it spans the threshold. A point claim (a
#:   published OA or kappa) and a "comparable / no difference" claim need an **equivalence test**
#:   (margin :data:`lcc_utils.stats.EQUIVALENCE_MARGIN_PP` = +-2 OA points) for "yes"; a difference
#:   that is merely not significant is "undecided", never "yes".
#: * ``same protocol`` / ``differs``: protocol rows.
#: * ``not testable here``: the data to test it are not in this run (e.g. training curves of runs
#:   that stopped early); :data:`NOT_APPLICABLE`: a binary-task claim in a 10-class run; ``n/a``:
#:   the model or the 07 run the claim needs was not given.
#: * ``not testable``: the wording of runs made before issue 22 (committed claims.csv files).
VERDICTS = ("yes", "no", "undecided", "same protocol", "differs", "not testable here", NOT_APPLICABLE, "n/a",
            "not testable")
#: "Stabilized near X %": within this many points of X (our reading of "near").
NEAR_PP = 2.0
#: Kappa margin of a published kappa: 0.04 is 2 OA points on a balanced binary task (kappa = 2 OA - 1).
KAPPA_MARGIN = 0.04
#: Training-curve claims are read only from runs that trained at least this many epochs without
#: early stopping: an early-stopped curve ends before the epochs paper B describes (20, 25).
MIN_CURVE_EPOCHS = 30
#: "Validation loss stable after epoch E": every later epoch within this fraction of epoch E's loss.
STABLE_LOSS_REL = 0.10


def paper_results(papers_dir: str | os.PathLike) -> pd.DataFrame:
    """Paper B's results as transcribed (``quantity``, ``value``, ``note``), one row per claim."""
    path = Path(papers_dir) / PAPER_B_RESULTS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"paper B's results not found: {path} (the papers folder beside "
                                "the data root, ../shared/papers)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    need = {"quantity", "value", "note"}
    if not need <= set(df.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)}, found {list(df.columns)}")
    return df


def ndvi_threshold_of(evaluation_dir: str | os.PathLike) -> float | None:
    """The NDVI threshold a notebook-06 run chose on its validation patches (None: it ran no NDVI baseline)."""
    m = Path(evaluation_dir) / "metrics.json"
    if not m.is_file():
        return None
    v = json.loads(m.read_text()).get("ndvi_threshold_threshold")
    return None if v is None else float(v)


def load_ablation(ablation_run: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Notebook 07's tables (``ablation_summary``, ``ablation_tests``) of the run named by its parameters."""
    from lcc_utils import runs

    d = runs.find_run("07", dict(ablation_run))
    out = {}
    for name in ("ablation_summary", "ablation_tests"):
        f = d / f"{name}.csv"
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: the 07 run {d.name} predates the cluster-level "
                                    "tests; run notebook 07 again")
        out[name] = pd.read_csv(f)
    out["run"] = d.name  # type: ignore[assignment]
    return out


def _num(v: str) -> float:
    return float(str(v).strip().rstrip("%"))


def _above(lo: float, hi: float, t: float) -> str:
    return "yes" if lo > t else "no" if hi < t else "undecided"


def _below(lo: float, hi: float, t: float) -> str:
    return "yes" if hi < t else "no" if lo > t else "undecided"


def _equivalent_to(ci95: tuple[float, float], ci90: tuple[float, float], claim: float, margin: float) -> str:
    """A published number: equivalent to ours, excluded by ours, or undecided.

    "yes" if our 90 % CI lies within ``claim +- margin`` (TOST at 5 %), "no" if our 95 % CI
    excludes it, else "undecided" (our interval is too wide to tell).
    """
    if claim - margin < ci90[0] and ci90[1] < claim + margin:
        return "yes"
    return "no" if not ci95[0] <= claim <= ci95[1] else "undecided"


def _per_seed(ok: Sequence[bool]) -> str:
    return "yes" if all(ok) else "no" if not any(ok) else "undecided"


@dataclass
class ClaimEvidence:
    """What every claim check reads: one run's models (all seeds), their intervals and pairwise tests.

    Attributes:
        ps: The patch set the models were scored on.
        results: ``{key: [ModelResult per seed]}``.
        intervals: :func:`accuracy_intervals`, indexed by ``(model, measure)``.
        tests: :func:`model_tests` (None with a single model).
        ablation: Notebook 07's tables (:func:`load_ablation`) or None.
        task: ``binary`` or ``multiclass``.
        cluster: The independent unit of the intervals and tests.
        n_boot: Bootstrap resamples.

    """

    ps: Any
    results: dict[str, list[ModelResult]]
    intervals: pd.DataFrame
    tests: pd.DataFrame | None
    ablation: Mapping[str, Any] | None
    task: str
    cluster: str = "image"
    n_boot: int = 2000

    @property
    def unit(self) -> str:
        """How the intervals were made, for the ``uncertainty`` column."""
        n = len(next(iter(self.results.values())))
        return f"two-stage bootstrap (seeds, then {self.cluster}s), {n} seeds"

    def name(self, key: str) -> str:
        """Paper B's name of model ``key``."""
        return get_model_name(key)

    def acc(self, key: str, measure: str, scale: float = 100.0) -> dict[str, float] | None:
        """Seed mean, seed std and the 95 % / 90 % two-stage intervals of ``measure``, or None."""
        if key not in self.results:
            return None
        r = self.intervals.loc[(self.name(key), measure)]
        return {c: scale * float(r[c]) for c in ("estimate", "seed_std", "ci95_lo", "ci95_hi", "ci90_lo", "ci90_hi")}


class Answer(NamedTuple):
    """One claim's row: our number, its uncertainty, the verdict (a :data:`VERDICTS` value), what decided."""

    ours: str
    uncertainty: str
    supported: str
    test: str


def _fmt(a: Mapping[str, float], d: int = 1) -> str:
    return f"{a['estimate']:.{d}f} ± {a['seed_std']:.{d}f} (CI {a['ci95_lo']:.{d}f}-{a['ci95_hi']:.{d}f})"


def _missing(key: str) -> Answer:
    return Answer(f"{get_model_name(key)} not in this run's models", "", "n/a", "")


def check_published_oa(ev: ClaimEvidence, value: str, key: str) -> Answer:
    """A published OA: equivalent to ours within +-2 points? (TOST on the 90 % two-stage interval)."""
    a = ev.acc(key, "oa")
    if a is None:
        return _missing(key)
    m = stats.EQUIVALENCE_MARGIN_PP
    v = _equivalent_to((a["ci95_lo"], a["ci95_hi"]), (a["ci90_lo"], a["ci90_hi"]), _num(value), m)
    return Answer(f"{_fmt(a)} % (90 % CI {a['ci90_lo']:.1f}-{a['ci90_hi']:.1f})", ev.unit, v,
                  f"equivalence to the published value, margin ±{m:g} pp (90 % interval, TOST)")


def check_published_kappa(ev: ClaimEvidence, value: str, key: str = "lightweight_cnn") -> Answer:
    """A published kappa: equivalent to ours within +-0.04 (:data:`KAPPA_MARGIN`)?"""
    a = ev.acc(key, "kappa", 1.0)
    if a is None:
        return _missing(key)
    v = _equivalent_to((a["ci95_lo"], a["ci95_hi"]), (a["ci90_lo"], a["ci90_hi"]), _num(value), KAPPA_MARGIN)
    return Answer(_fmt(a, 3), ev.unit, v,
                  f"equivalence to the published value, margin ±{KAPPA_MARGIN:g} (90 % interval, TOST)")


def check_prf_min(ev: ClaimEvidence, value: str, key: str = "lightweight_cnn") -> Answer:
    """Macro precision, recall and F1 all above a threshold: the lowest one's 95 % interval decides."""
    if key not in ev.results:
        return _missing(key)
    vals = {m: ev.acc(key, m, 1.0) for m in ("macro_precision", "macro_recall", "macro_f1")}
    worst = min(vals, key=lambda m: vals[m]["estimate"])
    a = vals[worst]
    txt = "; ".join(f"{m.split('_')[1]} {v['estimate']:.3f}" for m, v in vals.items())
    return Answer(f"{txt}; lowest {worst.split('_')[1]} {_fmt(a, 3)}", ev.unit,
                  _above(a["ci95_lo"], a["ci95_hi"], _num(value)), "threshold: 95 % interval of the lowest")


def check_params_max(ev: ClaimEvidence, value: str, key: str = "lightweight_cnn") -> Answer:
    """Fewer trainable parameters than the claim (an exact count of our network)."""
    if key not in ev.results:
        return _missing(key)
    n = int(ev.results[key][0].cost["params"])
    head = "" if ev.task == "binary" else f" ({len(ev.ps.classes)}-class head)"
    return Answer(f"{n:,} parameters{head}", "exact (count)", "yes" if n < _num(value) else "no", "count")


def check_literature_range(ev: ClaimEvidence, value: str, keys: Sequence[str] = ("random_forest", "svm")) -> Answer:
    """OAs paper B cites from the literature: "yes" only when our 95 % interval lies inside the range."""
    lo, hi = (float(v) for v in str(value).split("-"))
    parts, verdicts = [], []
    for key in keys:
        a = ev.acc(key, "oa")
        if a is None:
            continue
        parts.append(f"{ev.name(key)} {_fmt(a)} %")
        verdicts.append("yes" if lo <= a["ci95_lo"] and a["ci95_hi"] <= hi
                        else "no" if (a["ci95_hi"] < lo or a["ci95_lo"] > hi) else "undecided")
    if not parts:
        return Answer("RF / SVM not in this run's models", "", "n/a", "")
    v = "yes" if all(x == "yes" for x in verdicts) else "no" if "no" in verdicts else "undecided"
    return Answer("; ".join(parts) + " (paper B cites, does not run them)", ev.unit, v,
                  "range: 95 % interval inside the cited range")


def check_no_difference(ev: ClaimEvidence, value: str, key_a: str = "lightweight_cnn",
                        key_b: str = "resnet18") -> Answer:
    """"No difference" between two models: "yes" needs equivalence (±2 pp), not a large p-value.

    "yes": equivalent and no significant difference; "no": a significant difference outside the
    margin; "undecided" otherwise (neither shown, or a significant difference inside the margin).
    """
    if ev.tests is None or not {key_a, key_b} <= set(ev.results):
        return Answer("needs both networks in this run", "", "n/a", "")
    na, nb = ev.name(key_a), ev.name(key_b)
    t = ev.tests
    row = t[((t.model_a == na) & (t.model_b == nb)) | ((t.model_a == nb) & (t.model_b == na))].iloc[0]
    sign = 1 if row.model_a == na else -1
    d = sign * row.diff_pp
    lo95, hi95 = sorted((sign * row.ci95_lo_pp, sign * row.ci95_hi_pp))
    lo90, hi90 = sorted((sign * row.ci90_lo_pp, sign * row.ci90_hi_pp))
    sig, eq = bool(row.significant_holm), bool(row.equivalent)
    v = "yes" if eq and not sig else "no" if sig and not eq else "undecided"
    txt = (f"OA {na} - {nb} = {d:+.1f} pp (95 % CI {lo95:+.1f} to {hi95:+.1f}, 90 % CI {lo90:+.1f} to {hi90:+.1f}); "
           f"permutation p = {row.perm_p:.3g} (Holm over {len(t)} pairs {row.perm_p_holm:.3g}); equivalence "
           f"±{row.margin_pp:g} pp: TOST p = {row.tost_p:.3g} (Holm {row.tost_p_holm:.3g}) -> "
           f"{'equivalent' if eq else 'not shown'}; sign test p = {row.sign_p:.3g}; "
           f"patch-level McNemar p = {row.patch_level_mcnemar_p:.3g} (not independent)")
    return Answer(txt, f"{int(row.n_clusters)} source images, {ev.unit}", v,
                  f"paired permutation test (Holm) + equivalence ±{row.margin_pp:g} pp (TOST and 90 % interval)")


def check_error_range(ev: ClaimEvidence, value: str, key: str = "lightweight_cnn") -> Answer:
    """Errors concentrate in an NDVI range: error rate inside minus outside, 95 % interval above 0?"""
    if key not in ev.results:
        return _missing(key)
    lo, hi = (float(v) for v in str(value).split("-"))
    first = ev.results[key][0]
    c = stats.range_error_contrast(patch_ndvi(ev.ps, first.test_indices), first.y_true, _preds(ev.results[key]),
                                   clusters_of(ev.ps, first.test_indices, ev.cluster), lo, hi, n_boot=ev.n_boot)
    if not np.isfinite(c["diff_pp"]):
        return Answer(f"{c['n_in']} test patches in [{lo}, {hi})", "", "not testable here", "")
    txt = (f"CNN error rate in [{lo}, {hi}) {100 * c['rate_in']:.1f} % (n={c['n_in']}) vs "
           f"{100 * c['rate_out']:.1f} % elsewhere: {c['diff_pp']:+.1f} pp (CI {c['ci95_lo_pp']:+.1f} to "
           f"{c['ci95_hi_pp']:+.1f}); {100 * c['share_of_errors_in']:.0f} % of errors, "
           f"{100 * c['share_of_patches_in']:.0f} % of patches")
    return Answer(txt, ev.unit, _above(c["ci95_lo_pp"], c["ci95_hi_pp"], 0.0),
                  "threshold: 95 % interval of the error-rate difference above 0")


def _full_curves(ev: ClaimEvidence, key: str = "lightweight_cnn") -> tuple[list[pd.DataFrame], Answer | None]:
    """The CNN's per-seed histories if every seed trained >= MIN_CURVE_EPOCHS epochs without early stopping."""
    rs = ev.results.get(key, [])
    hs = [r.history for r in rs if r.history is not None]
    if not rs or len(hs) < len(rs):
        return [], Answer("no training history (CNN not run)", "", "n/a", "")
    ran = [int(h.epoch.max()) for h in hs]
    early = [bool(r.details.get("stopped_early", True)) for r in rs]
    if any(early) or min(ran) < MIN_CURVE_EPOCHS:
        why = "stopped early" if any(early) else "ended"
        return hs, Answer(f"CNN runs {why} at epoch {'/'.join(map(str, ran))}: a curve claim needs runs of "
                          f">= {MIN_CURVE_EPOCHS} epochs without early stopping", "", "not testable here",
                          "training curves (needs full-length runs)")
    return hs, None


def check_curve_above(ev: ClaimEvidence, value: str, epoch: int) -> Answer:
    """"Over X % within the first E epochs": each seed's best validation accuracy in epochs 1-E."""
    hs, skip = _full_curves(ev)
    if skip:
        return skip
    acc = np.array([100 * h[h.epoch <= epoch].val_accuracy.max() for h in hs])
    return Answer(f"CNN best val. accuracy in epochs 1-{epoch}: {acc.mean():.1f} % (min {acc.min():.1f})",
                  "per seed", _per_seed(acc > _num(value)), "training curves, per seed")


def check_curve_near(ev: ClaimEvidence, value: str, epoch: int) -> Answer:
    """"Stabilised near X % by epoch E": every epoch from E on within :data:`NEAR_PP` of X, per seed."""
    hs, skip = _full_curves(ev)
    if skip:
        return skip
    dev = [np.abs(100 * h[h.epoch >= epoch].val_accuracy.to_numpy() - _num(value)) for h in hs]
    ok = [bool(np.all(x <= NEAR_PP)) for x in dev]
    v = "yes" if all(ok) else "no" if all(x.mean() > NEAR_PP for x in dev) else "undecided"
    return Answer(f"CNN val. accuracy from epoch {epoch} on: at most {max(x.max() for x in dev):.1f} pp from "
                  f"{_num(value):g} %", f"per seed; 'near' = within {NEAR_PP:g} pp", v, "training curves, per seed")


def check_val_loss_stable(ev: ClaimEvidence, value: str) -> Answer:
    """"Validation loss stable after epoch E": every later epoch within :data:`STABLE_LOSS_REL` of epoch E's."""
    hs, skip = _full_curves(ev)
    if skip:
        return skip
    e = int(_num(value))
    rel = [np.abs(h[h.epoch > e].val_loss.to_numpy() / float(h[h.epoch == e].val_loss.iloc[0]) - 1) for h in hs]
    return Answer(f"CNN val. loss after epoch {e}: at most {100 * max(r.max() for r in rel):.0f} % from epoch {e}'s",
                  f"per seed; 'stable' = within {100 * STABLE_LOSS_REL:.0f} %",
                  _per_seed([bool(np.all(r <= STABLE_LOSS_REL)) for r in rel]), "training curves, per seed")


def check_ablation_gain(ev: ClaimEvidence, value: str) -> Answer:
    """A4's OA gain over A2 below the claim at > 40 % more parameters (notebook 07's tests)."""
    if ev.ablation is None:
        return Answer("not evaluated here: needs notebook 07's run (ablation_run)", "", "n/a", "")
    t = ev.ablation["ablation_tests"]
    sel = t[(t.model_a == "A4") & (t.model_b == "A2")]
    if sel.empty:
        return Answer(f"the 07 run {ev.ablation['run']} has no A4-vs-A2 test (variants {sorted(set(t.model_a))})",
                      "", "n/a", "")
    row = sel.iloc[0]
    sm = ev.ablation["ablation_summary"].set_index("variant")
    ratio = sm.loc["A4", "params"] / sm.loc["A2", "params"]
    txt = (f"A4 - A2 OA {row.diff_pp:+.2f} pp (CI {row.ci95_lo_pp:+.2f} to {row.ci95_hi_pp:+.2f}; "
           f"sign test p = {row.sign_p:.3g}, Holm {row.sign_p_holm:.3g}) at {100 * (ratio - 1):.0f} % more "
           f"parameters ({int(sm.loc['A4', 'params']):,} vs {int(sm.loc['A2', 'params']):,}); "
           f"07 run {ev.ablation['run']}")
    v = _below(row.ci95_lo_pp, row.ci95_hi_pp, _num(value))
    return Answer(txt, f"{row.unit}-cluster bootstrap 95 % CI, {int(row.n_seeds)} seeds", v if ratio > 1.4 else "no",
                  "threshold: 95 % interval of the gain (07 run)")


def check_patches_per_class(ev: ClaimEvidence, value: str) -> Answer:
    """Patches per class (protocol)."""
    c = ev.ps.counts()["total"]
    return Answer(", ".join(f"{k} {int(v)}" for k, v in c.items()) + " patches", "count", "differs", "protocol")


def check_interoperator(ev: ClaimEvidence, value: str) -> Answer:
    """Agreement of two label analysts: we have one label source."""
    return Answer("one label source (EuroSAT's scene classes), no second analyst", "", "not testable here", "")


def check_patch_size(ev: ClaimEvidence, value: str) -> Answer:
    """Patch size in pixels (protocol)."""
    p = int(ev.ps.x.shape[1])
    return Answer(f"{p} px", "", "same protocol" if p == int(_num(value)) else "differs", "protocol")


def check_split(ev: ClaimEvidence, value: str) -> Answer:
    """Train / val / test shares and how they are kept apart (protocol)."""
    f = pd.Series(ev.ps.split).value_counts(normalize=True)
    txt = "/".join(f"{100 * f.get(s_, 0):.0f}" for s_ in ("train", "val", "test"))
    return Answer(f"{txt} (whole spatial blocks of {ev.ps.meta.get('block_size_m', '?')} m; EuroSAT, not tiles)",
                  "patch shares", "same protocol", "protocol")


@dataclass(frozen=True)
class ClaimCheck:
    """One kind of claim: its check and whether it is about paper B's binary task only."""

    check: Any  # Callable[[ClaimEvidence, str], Answer]
    binary_only: bool = True


def _c(fn: Any, binary_only: bool = True, **kw: Any) -> ClaimCheck:
    return ClaimCheck((lambda ev, v: fn(ev, v, **kw)) if kw else fn, binary_only)


#: One row per quantity of ``paper_b_results.csv``: a new claim is a new row here.
CLAIM_CHECKS: dict[str, ClaimCheck] = {
    "lightweight_cnn_oa": _c(check_published_oa, key="lightweight_cnn"),
    "lightweight_cnn_kappa": _c(check_published_kappa),
    "lightweight_cnn_macro_precision_recall_f1_min": _c(check_prf_min),
    "lightweight_cnn_params_max": _c(check_params_max, binary_only=False),
    "resnet18_oa": _c(check_published_oa, key="resnet18"),
    "ndvi_threshold_oa": _c(check_published_oa, key="ndvi_threshold"),
    "rf_svm_literature_oa_range": _c(check_literature_range),
    "mcnemar_cnn_vs_resnet18": _c(check_no_difference),
    "error_ndvi_range": _c(check_error_range),
    "curve_epoch10_acc": _c(check_curve_above, epoch=10),
    "curve_epoch25_acc": _c(check_curve_near, epoch=25),
    "val_loss_stable_after_epoch": _c(check_val_loss_stable),
    "ablation_A4_vs_A2_oa_gain_max": _c(check_ablation_gain),
    "patches_per_class": _c(check_patches_per_class, binary_only=False),
    "interoperator_kappa": _c(check_interoperator, binary_only=False),
    "patch_size_px": _c(check_patch_size, binary_only=False),
    "split": _c(check_split, binary_only=False),
}


def get_claim_check(quantity: str) -> ClaimCheck:
    """The check of paper B's claim ``quantity``; a ValueError lists the known claims."""
    if quantity not in CLAIM_CHECKS:
        raise ValueError(f"paper B claim {quantity!r} (in {PAPER_B_RESULTS_CSV}) has no test here; "
                         f"known: {', '.join(CLAIM_CHECKS)}")
    return CLAIM_CHECKS[quantity]


def claims_table(
    paper: pd.DataFrame,
    ps: Any,
    results: Mapping[str, Any],
    ablation: Mapping[str, Any] | None = None,
    cluster: str = "image",
    n_boot: int = 2000,
    task: str | None = None,
) -> pd.DataFrame:
    """One row per row of paper B's results CSV: claim | paper B | ours | supported? | test.

    Consistency on a proxy task (:data:`CLAIMS_TITLE`). Every "ours" comes from this run's models
    (all seeds) with its uncertainty: seed std and a two-stage bootstrap interval (seeds, then
    ``cluster`` units), pairwise tests Holm-corrected over all model pairs (:func:`model_tests`).
    Each row is answered by its :data:`CLAIM_CHECKS` entry; ``test`` names what decided. In a run
    of another task than paper B's binary one (``task``, default ``ps.meta['task']``), the
    binary-task claims are :data:`NOT_APPLICABLE`.
    """
    checks = [(rec, get_claim_check(rec["quantity"])) for rec in paper.to_dict("records")]
    res = _as_seeds(results)
    task = task or ps.meta.get("task") or ("binary" if len(ps.classes) == 2 else "multiclass")
    ev = ClaimEvidence(ps=ps, results=res, ablation=ablation, task=task, cluster=cluster, n_boot=n_boot,
                       intervals=accuracy_intervals(ps, res, cluster=cluster, n_boot=n_boot).set_index(
                           ["model", "measure"]),
                       tests=model_tests(ps, res, cluster=cluster, n_boot=n_boot) if len(res) > 1 else None)
    rows = []
    for rec, c in checks:
        if c.binary_only and task != "binary":
            ans = Answer(f"paper B's claim is about its binary task; this run is the {task} task "
                         f"({len(ps.classes)} classes)", "", NOT_APPLICABLE, "")
        else:
            ans = c.check(ev, rec["value"])
        ours, uncertainty, verdict, test = ans
        rows.append({"claim": rec["quantity"], "paper_b": rec["value"], "paper_b_note": rec["note"], "ours": ours,
                     "uncertainty": uncertainty, "supported": verdict, "test": test})
    return pd.DataFrame(rows)


def claim_counts(claims: pd.DataFrame) -> dict[str, int]:
    """Verdict counts for ``metrics.json``: ``claims_yes``, ``claims_not_applicable``, ``claims_n/a``..."""
    return {f"claims_{v.split(':')[0].replace(' ', '_')}": int(n)
            for v, n in claims["supported"].value_counts().sort_index().items()}


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
    the three-block 3x3 baseline) by the patch-level McNemar test per seed (kept for
    reference; the tests at the independent unit are :func:`ablation_tests`).

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
              else stats.mcnemar(r.y_true, ref.y_pred, r.y_pred))
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
    out[f"patch_level_seeds_p<0.05_vs_{reference}"] = sig
    return out


def ablation_tests(ps: Any, results: Mapping[tuple[str, int], ModelResult], reference: str = "A2",
                   cluster: str = "image", n_boot: int = 2000) -> pd.DataFrame:
    """Each ablation variant against ``reference`` at the independent unit, Holm over the variants.

    The same tests as notebook 06 (:func:`lcc_utils.stats.pairwise_cluster_tests`): a paired
    permutation test over the test patches' source images (seed-averaged differences), the sign
    test, a two-stage bootstrap 95 % CI of the OA difference (variant - reference; seeds, then
    images), the equivalence test, and the patch-level McNemar p beside them.
    """
    variants = sorted({v for v, _ in results})
    if reference not in variants:
        raise ValueError(f"reference variant {reference!r} is not among the results ({variants})")
    per_variant = {v: [results[k] for k in sorted(results) if k[0] == v] for v in variants}
    seeds = {v: [k[1] for k in sorted(results) if k[0] == v] for v in variants}
    if len({tuple(x) for x in seeds.values()}) != 1:
        raise ValueError(f"variants ran with different seeds ({seeds}): the tests pair them seed by seed")
    y = _check_same_test(per_variant)
    first = per_variant[reference][0]
    cl = clusters_of(ps, first.test_indices, cluster)
    out = stats.pairwise_cluster_tests(y, {v: _preds(rs) for v, rs in per_variant.items()}, cl,
                                         n_boot=n_boot, pairs=[(v, reference) for v in variants if v != reference])
    out.insert(2, "unit", cluster)
    out.insert(3, "n_seeds", len(seeds[reference]))
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
