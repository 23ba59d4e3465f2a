"""Coresets (paper A): keep 5 % or 10 % of the training images, chosen by a score.

* ``random``: a seeded uniform sample (the baseline).
* ``forgetting`` (Toneva et al. 2018): how often a training image goes from correctly to
  wrongly classified between consecutive epochs; the most forgettable images are kept.
* ``margin``: ``p(top1) - p(top2)`` of the softmax; the smallest margins (the images
  closest to a decision boundary) are kept.

Scores come from a cheap proxy model trained on the training split (selection via proxy,
Coleman et al. 2020), so scoring costs a fraction of one full training of the target model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lcc_utils.paths import atomic_path, atomic_write


@dataclass(frozen=True)
class CoresetMethod:
    """A coreset selection rule.

    Attributes:
        name: Registry key.
        keep: ``"highest"`` scores first, ``"lowest"`` first, or ``"random"`` (no scores).
        description: What the score means, for tables and plots.

    """

    name: str
    keep: str
    description: str

    @property
    def needs_scores(self) -> bool:
        """Whether selection needs a proxy model's scores."""
        return self.keep != "random"


#: Coreset methods of paper A.
CORESETS: dict[str, CoresetMethod] = {
    "random": CoresetMethod("random", "random", "seeded uniform sample"),
    "forgetting": CoresetMethod(
        "forgetting", "highest",
        "forgetting events (correct at epoch t-1, wrong at t); most forgettable kept"),
    "margin": CoresetMethod(
        "margin", "lowest", "softmax margin p(top1) - p(top2); smallest margins kept"),
}


def get_coreset_method(name: str) -> CoresetMethod:
    """Return the coreset method called ``name`` or raise a ValueError listing the choices."""
    if name not in CORESETS:
        raise ValueError(f"unknown coreset {name!r}; choose one of: {', '.join(sorted(CORESETS))}")
    return CORESETS[name]


# --------------------------------------------------------------------------- scores
def forgetting_scores(correctness: np.ndarray) -> np.ndarray:
    """Number of forgetting events of each sample (Toneva et al. 2018).

    Args:
        correctness: ``(epochs, N)`` bool, whether sample n was classified correctly when
            presented in epoch t.

    Returns:
        ``(N,)`` float64: the count of t with correct[t-1] and not correct[t]. A sample
        never classified correctly has no event but is the hardest of all: it gets
        ``epochs + 1``, above any possible count (at most epochs // 2), as in Toneva's
        ranking where never-learned samples count as forgotten infinitely often. A
        finite value keeps score files, histograms and means well defined.

    """
    c = np.asarray(correctness)
    if c.ndim != 2:
        raise ValueError(f"correctness must be (epochs, N); got shape {c.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise ValueError("correctness must be boolean (or 0/1)")
        c = c.astype(bool)
    epochs = c.shape[0]
    events = (c[:-1] & ~c[1:]).sum(axis=0).astype(np.float64)
    events[~c.any(axis=0)] = epochs + 1
    return events


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """Softmax margin ``p(top1) - p(top2)`` of each sample (small = near a decision boundary)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) with K >= 2; got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or inf")
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclass
class CoresetScores:
    """Scores of the training split's images for one coreset method.

    Attributes:
        method: Coreset method.
        scores: ``(N,)`` score of each training image.
        indices: ``(N,)`` dataset indices the scores belong to (the split's train part).
        labels: ``(N,)`` their labels.
        meta: Provenance: seed, scoring model and epochs, image size, split and dataset
            hashes, cost in seconds, device.

    """

    method: str
    scores: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def save_scores(scores: CoresetScores, path: str | os.PathLike) -> Path:
    """Write ``<path>`` (npz: scores, indices, labels) and ``<path>.json`` (metadata), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path={path}: score files end in .npz")
    meta = {"method": scores.method, **scores.meta}
    atomic_write(path.with_name(path.name + ".json"), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # the scores last: their presence = complete
        np.savez(fh, scores=scores.scores, indices=scores.indices, labels=scores.labels)
    return path


def load_scores(path: str | os.PathLike) -> CoresetScores:
    """Read a score file written by :func:`save_scores`."""
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"scores file not found: {path} (and its .json metadata)")
    with np.load(path) as z:
        arrays = {k: z[k] for k in ("scores", "indices", "labels")}
    meta = json.loads(meta_path.read_text())
    return CoresetScores(meta.pop("method"), arrays["scores"], arrays["indices"],
                         arrays["labels"], meta)


def scores_path(
    dataset_name: str, dataset_hash: str, split_hash: str, method: str, scoring_model: str,
    scoring_epochs: int, image_size: int | None, seed: int,
) -> Path:
    """Cache location of a score file: one file per (data, split, method, proxy, seed)."""
    from lcc_utils.paths import cache_dir

    name = (f"{dataset_name}-{dataset_hash[:8]}-split{split_hash[:8]}-{method}-{scoring_model}"
            f"-e{scoring_epochs}-px{image_size}-seed{seed}.npz")
    return cache_dir() / "coreset_scores" / name


def score_dataset(
    ds: Any,
    split: Any,
    method: str,
    scoring_model: str,
    scoring_epochs: int,
    image_size: int | None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 64,
    recipe: str = "paper_a",
    augment: bool = False,
) -> dict[str, CoresetScores]:
    """Score the training split with a proxy model; return scores of ``method`` (and siblings).

    ``forgetting`` and ``margin`` come from ONE proxy training (same model, seed, epochs),
    so both are returned together and cost the same seconds: per-epoch correctness is
    recorded while training (forgetting), then the softmax of the FINAL proxy model (after
    the last scoring epoch, not the best-validation one) on the un-augmented training
    images gives the margins. The proxy uses the training recipe without early stopping,
    so every image is seen in every scoring epoch. ``random`` needs no model (cost 0).
    The proxy trains WITHOUT augmentation by default (``augment``): on the CPU,
    TrivialAugmentWide costs more than the proxy itself, and un-augmented correctness is
    Toneva's own setting for most of their experiments. Our choice, recorded in the metadata.

    Returns:
        ``{method_name: CoresetScores}``; ``random`` alone, or both model-based methods.

    """
    from lcc_utils import data, models, training

    m = get_coreset_method(method)
    if scoring_epochs < 1:
        raise ValueError(f"scoring_epochs={scoring_epochs} must be >= 1")
    idx = np.asarray(split.train, dtype=np.int64)
    labels = np.asarray(ds.labels)[idx]
    meta = {"seed": seed, "scoring_model": scoring_model, "scoring_epochs": scoring_epochs,
            "image_size": image_size, "split_hash": split.hash, "dataset": ds.name,
            "dataset_hash": ds.hash, "n": int(len(idx))}
    if not m.needs_scores:
        rng = np.random.default_rng(seed)
        return {"random": CoresetScores("random", rng.random(len(idx)), idx, labels,
                                        {**meta, "scoring_model": None, "scoring_epochs": 0,
                                         "seconds": 0.0, "device": "none"})}
    t0 = time.perf_counter()
    loaders = data.make_loaders(ds, split, image_size=image_size, batch_size=batch_size, seed=seed,
                                augment=augment)
    training.seed_everything(seed)
    model = models.create_model(scoring_model, num_classes=len(ds.classes),
                                in_chans=ds.images.shape[-1], image_size=image_size)
    proxy = replace(training.get_recipe(recipe), patience=None, batch_size=batch_size)
    result = training.train(model, loaders, proxy, epochs=scoring_epochs, device=device,
                            seed=seed, record_correctness=True, num_classes=len(ds.classes))
    # `train` restores the best-validation weights; margins use the final weights instead
    model.load_state_dict(result.extra["final_state"])
    mean, std = data.normalization(ds, split)
    eval_loader = data.BatchLoader(ds.images, ds.labels, idx, batch_size=batch_size,
                                   image_size=image_size, mean=mean, std=std)
    probs, _, pidx = training.predict(model, eval_loader, device)
    if not np.array_equal(pidx, idx) or not np.array_equal(result.correctness_indices, idx):
        raise RuntimeError("scoring: predictions are not aligned with the training split")
    seconds = time.perf_counter() - t0
    meta.update(seconds=seconds, device=result.device, proxy_augment=augment,
                proxy_best_epoch=result.best_epoch,
                proxy_final_val_accuracy=float(result.history["val_accuracy"].iloc[-1]))
    return {
        "forgetting": CoresetScores("forgetting", forgetting_scores(result.correctness), idx,
                                    labels, dict(meta)),
        "margin": CoresetScores("margin", margin_scores(probs), idx, labels, dict(meta)),
    }


def get_scores(
    ds: Any,
    split: Any,
    method: str,
    scoring_model: str,
    scoring_epochs: int,
    image_size: int | None,
    seed: int = 0,
    device: str = "auto",
) -> tuple[CoresetScores, Path, bool]:
    """Load the cached scores of ``method`` or compute (and cache) them with :func:`score_dataset`.

    Returns:
        The scores, their file, and whether they were computed now (False: read from cache).

    """
    get_coreset_method(method)
    args = (scoring_model, scoring_epochs, image_size, seed)
    path = scores_path(ds.name, ds.hash, split.hash, method, *args)
    if path.is_file():
        return load_scores(path), path, False
    for name, sc in score_dataset(ds, split, method, *args[:3], seed=seed, device=device).items():
        save_scores(sc, scores_path(ds.name, ds.hash, split.hash, name, *args))
    return load_scores(path), path, True


# --------------------------------------------------------------------------- selection
def coreset_size(n: int, fraction: float) -> int:
    """Images in a coreset of ``fraction`` of ``n`` (rounded half up)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1]")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    return int(np.floor(n * float(fraction) + 0.5))


def _class_quotas(labels: np.ndarray, k: int) -> dict[int, int]:
    """Per-class sizes summing to ``k``, proportional to class counts, at least 1 each."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * k / counts.sum()
    quota = np.minimum(np.maximum(1, np.floor(share)).astype(int), counts)
    remainder = share - np.floor(share)
    while quota.sum() < k:  # largest remainders first; ties -> lower class id
        room = quota < counts
        order = sorted(np.flatnonzero(room), key=lambda i: (-remainder[i], classes[i]))
        for i in order[: k - quota.sum()]:
            quota[i] += 1
            remainder[i] = -1.0
        if (remainder[room] < 0).all():
            remainder = share - quota
    while quota.sum() > k:  # the at-least-one rule overshot: trim the most over-served
        over = quota - share
        over[quota <= 1] = -np.inf
        quota[int(np.argmax(over))] -= 1
    return {int(c): int(q) for c, q in zip(classes, quota, strict=True)}


def select_coreset(
    scores: np.ndarray | None,
    fraction: float,
    labels: np.ndarray,
    method: str,
    balanced: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Pick the coreset: positions (into ``scores``/``labels``) of the images to keep, sorted.

    Forgetting keeps the highest scores (most forgettable first), margin the lowest
    (smallest margin first), random a seeded sample. Ties are broken by a seeded
    permutation, so the same seed always gives the same coreset. ``balanced`` keeps each
    class's share of the training split (largest-remainder rounding) and never leaves a
    class empty; otherwise the global top of the ranking is kept.

    Args:
        scores: ``(N,)`` scores; ignored (may be None) for ``random``.
        fraction: Share of the training split to keep, in (0, 1].
        labels: ``(N,)`` class labels of the scored images.
        method: A key of :data:`CORESETS`.
        balanced: Keep class proportions.
        seed: Seed of the tie-breaking permutation / the random sample.

    Returns:
        Sorted int64 positions.

    """
    m = get_coreset_method(method)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {labels.shape}")
    n = len(labels)
    k = coreset_size(n, fraction)
    n_classes = len(np.unique(labels))
    if k < n_classes:
        raise ValueError(
            f"fraction={fraction} of {n} images gives a coreset of {k}, smaller than the "
            f"number of classes ({n_classes})"
        )
    if m.needs_scores:
        if scores is None:
            raise ValueError(f"coreset {method!r} needs scores; got scores=None")
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != labels.shape:
            raise ValueError(f"scores has shape {s.shape} but labels has {labels.shape}")
        if not np.isfinite(s).all():
            raise ValueError("scores contain NaN or inf")
        primary = -s if m.keep == "highest" else s
    else:
        primary = np.zeros(n)
    tiebreak = np.random.default_rng(seed).permutation(n)
    ranking = np.lexsort((tiebreak, primary))  # best first
    if k == n:
        return np.arange(n, dtype=np.int64)
    if not balanced:
        return np.sort(ranking[:k]).astype(np.int64)
    quotas = _class_quotas(labels, k)
    ranked_labels = labels[ranking]
    keep = [ranking[ranked_labels == c][:q] for c, q in quotas.items()]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def save_coreset(
    indices: np.ndarray, path: str | os.PathLike, **meta: Any
) -> Path:
    """Write a coreset index file (JSON, sorted keys, no timestamps: byte-identical reruns)."""
    body = {**{k: v for k, v in meta.items()}, "indices": [int(i) for i in indices],
            "size": int(len(indices))}
    return atomic_write(path, json.dumps(body, sort_keys=True, default=str) + "\n")


def load_coreset(path: str | os.PathLike) -> np.ndarray:
    """Read the dataset indices of a coreset index file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coreset index file not found: {path}")
    return np.asarray(json.loads(path.read_text())["indices"], dtype=np.int64)


def coreset_indices(
    ds: Any,
    split: Any,
    coreset: str,
    fraction: float,
    *,
    seed: int,
    scoring_model: str,
    scoring_epochs: int,
    image_size: int | None,
    device: str = "auto",
    balanced: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Dataset indices of the training coreset, scoring the split first when needed.

    Returns:
        Sorted dataset indices and provenance (scores file, whether scores were computed now,
        scoring cost in seconds).

    """
    m = get_coreset_method(coreset)
    train_idx = np.asarray(split.train, dtype=np.int64)
    labels = np.asarray(ds.labels)[train_idx]
    info: dict[str, Any] = {"scores_file": None, "scores_computed": False, "scoring_seconds": 0.0}
    scores = None
    if m.needs_scores and coreset_size(len(train_idx), fraction) < len(train_idx):
        sc, path, computed = get_scores(ds, split, coreset, scoring_model, scoring_epochs,
                                        image_size, seed, device)
        if not np.array_equal(sc.indices, train_idx):
            raise ValueError(f"scores file {path} does not match the split's training part")
        scores = sc.scores
        info.update(scores_file=str(path), scores_computed=computed,
                    scoring_seconds=float(sc.meta.get("seconds", 0.0)))
    pos = select_coreset(scores, fraction, labels, coreset if scores is not None or
                         not m.needs_scores else "random", balanced=balanced, seed=seed)
    return train_idx[pos], info


def select_fractions(
    scores: CoresetScores, fractions: Sequence[float], seed: int = 0, balanced: bool = True
) -> dict[float, np.ndarray]:
    """Dataset indices of the coresets of several fractions selected from one score file."""
    return {f: scores.indices[select_coreset(scores.scores, f, scores.labels, scores.method,
                                             balanced=balanced, seed=seed)]
            for f in fractions}


def coreset_class_sizes(
    labels: np.ndarray, selected: dict[float, np.ndarray], classes: Sequence[str]
) -> pd.DataFrame:
    """Images per class in each coreset (columns ``5%``, ``10%``...)."""
    labels = np.asarray(labels)
    return pd.DataFrame(
        {f"{100 * f:g}%": np.bincount(labels[idx], minlength=len(classes))
         for f, idx in selected.items()},
        index=pd.Index(list(classes), name="class"),
    )


# --------------------------------------------------------------------------- plots
def plot_score_distributions(scores: CoresetScores, classes: Sequence[str]) -> Figure:
    """Distribution of the coreset scores of each class (which classes a method favours).

    Forgetting counts take few values: each class's bar is split by count (share of the
    class's images; the top value ``epochs + 1`` means never learned). Continuous scores
    (margins) get one box plot per class.
    """
    fig = Figure(figsize=(8, 0.35 * len(classes) + 1.8))
    ax = fig.add_subplot()
    per_class = [scores.scores[scores.labels == c] for c in range(len(classes))]
    values = np.unique(scores.scores)
    y = np.arange(len(classes))
    if len(values) <= 12:
        never = scores.meta.get("scoring_epochs")
        cmap = matplotlib.colormaps["viridis"].resampled(len(values))
        left = np.zeros(len(classes))
        for i, v in enumerate(values):
            share = np.array([(s == v).mean() if len(s) else 0.0 for s in per_class])
            label = "never learned" if never is not None and v == never + 1 else f"{v:g}"
            ax.barh(y, share, left=left, color=cmap(i), label=label)
            left += share
        ax.set_xlabel("share of the class's training images")
        ax.legend(title=f"{scores.method} score", fontsize=7, title_fontsize=8,
                  bbox_to_anchor=(1.01, 1), loc="upper left")
    else:
        ax.boxplot(per_class, positions=y, orientation="horizontal", flierprops={"markersize": 2})
        ax.set_xlabel(f"{scores.method} score")
    ax.set_yticks(y, labels=list(classes))
    ax.invert_yaxis()
    ax.set_title(f"{scores.meta.get('dataset', '')}: {scores.method} scores per class (proxy "
                 f"{scores.meta.get('scoring_model')}, {scores.meta.get('scoring_epochs')} epochs)"
                 f"\n{get_coreset_method(scores.method).description}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_selected_images(
    ds: Any, scores: CoresetScores, selected: np.ndarray, n_classes: int = 6, per_class: int = 6
) -> Figure:
    """The first-ranked selected images of a few classes, titled with their scores."""
    from lcc_utils.data import rgb_composite

    pos = {int(i): p for p, i in enumerate(scores.indices)}
    fig = Figure(figsize=(1.4 * per_class, 1.5 * n_classes))
    axes = fig.subplots(n_classes, per_class, squeeze=False)
    keep = "lowest" if get_coreset_method(scores.method).keep == "lowest" else "highest"
    for r, c in enumerate(range(min(n_classes, len(ds.classes)))):
        sel = [int(i) for i in selected if ds.labels[i] == c]
        sel.sort(key=lambda i: scores.scores[pos[i]] * (1 if keep == "lowest" else -1))
        for j, ax in enumerate(axes[r]):
            ax.axis("off")
            if j < len(sel):
                ax.imshow(rgb_composite(ds, sel[j]))
                ax.set_title(f"{scores.scores[pos[sel[j]]]:.3g}", fontsize=7)
        axes[r][0].text(-0.1, 0.5, ds.classes[c], transform=axes[r][0].transAxes,
                        ha="right", va="center", fontsize=8)
    fig.suptitle(f"{scores.method} coreset: selected images (score above each)")
    fig.tight_layout()
    return fig
