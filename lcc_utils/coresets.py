"""Coresets (paper A): keep 5 % or 10 % of the training images, chosen by a score.

Every method is class-balanced (each class keeps its share of the training split). The
papers' names stay the papers' names; the other entries are ours, named for what they do.

* ``random``: a seeded uniform sample (the baseline).
* ``forgetting`` (paper A's wording, "ranks samples by the number of times they are
  misclassified during training"): the number of proxy epochs in which the image was
  misclassified; the most often misclassified are kept.
* ``forgetting_events`` (Toneva et al. 2018's statistic): learned -> forgotten transitions
  (correct at epoch t-1, wrong at t); never-learned images rank above every count.
* ``margin`` (paper A, Settles 2009): ``p(top1) - p(top2)`` of the final proxy's softmax
  on the un-augmented image; the smallest margins are kept.
* ``forgetting_easy``, ``forgetting_events_easy``, ``margin_easy``: the same rankings
  reversed (easiest first; Hacohen et al. 2022 find "typical first" wins at small budgets).
* ``ccs`` (Zheng et al. 2023, coverage-centric coreset selection): drop the hardest
  ``beta`` of each class by the area under the margin (AUM, Pleiss et al. 2020: the
  true-class logit minus the largest other logit, averaged over the proxy epochs), then
  sample evenly across ``strata`` equal-width score bins.

Scores come from a cheap proxy model trained on the training split (selection via proxy,
Coleman et al. 2020); :func:`score_dataset` records its cost against one full training of
the target model, measured in the same process.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lcc_utils.files import broken, read_json, read_npz
from lcc_utils.paths import atomic_path, atomic_write

#: Score kinds one proxy training yields, and whether a HIGHER value means a harder image.
SCORES: dict[str, bool] = {
    "misclassified": True,
    "forgetting_events": True,
    "margin": False,
    "aum": False,
}

#: CCS defaults. beta = 0.3 with 50 strata is the setting of Zheng et al.'s own example for a
#: 90 % pruning rate on CIFAR-10 (their repository's README: ``--mis-ratio 0.3``, AUM scores);
#: our budgets (5-10 % kept) are 90-95 % pruning. Fixed, not tuned on our validation set.
CCS_BETA = 0.3
CCS_STRATA = 50

#: The proxy must have classified all but this share of training images correctly at least
#: once: a never-learned image has no forgetting history, only a "hard" label.
MAX_NEVER_LEARNED = 0.05
#: Goal for the proxy's cost, as a share of one full training of the target model.
MAX_COST_RATIO = 0.10


@dataclass(frozen=True)
class CoresetMethod:
    """A coreset selection rule.

    Attributes:
        name: Registry key.
        score: The score kind it ranks by (a key of :data:`SCORES`), None for random.
        keep: ``"random"``, ``"hardest"`` first, ``"easiest"`` first, or ``"ccs"``.
        description: What it keeps, for tables and plots.

    """

    name: str
    score: str | None
    keep: str
    description: str

    @property
    def needs_scores(self) -> bool:
        """Whether selection needs a proxy model's scores."""
        return self.score is not None


#: Coreset methods: paper A's three, their easy-first reverses, Toneva's statistic and CCS.
CORESETS: dict[str, CoresetMethod] = {m.name: m for m in (
    CoresetMethod("random", None, "random", "seeded uniform sample (paper A's baseline)"),
    CoresetMethod("forgetting", "misclassified", "hardest",
                  "paper A: most often misclassified over the proxy epochs first"),
    CoresetMethod("forgetting_events", "forgetting_events", "hardest",
                  "Toneva: most learned->forgotten events first, never learned on top"),
    CoresetMethod("margin", "margin", "hardest", "paper A: smallest softmax margin first"),
    CoresetMethod("forgetting_easy", "misclassified", "easiest",
                  "reverse of forgetting: least often misclassified first"),
    CoresetMethod("forgetting_events_easy", "forgetting_events", "easiest",
                  "reverse of forgetting_events: fewest events first"),
    CoresetMethod("margin_easy", "margin", "easiest", "reverse of margin: largest margin first"),
    CoresetMethod("ccs", "aum", "ccs",
                  f"Zheng et al.: drop the hardest beta by AUM, stratified sampling "
                  f"(beta {CCS_BETA}, {CCS_STRATA} strata)"),
)}


def get_coreset_method(name: str) -> CoresetMethod:
    """Return the coreset method called ``name`` or raise a ValueError listing the choices."""
    if name not in CORESETS:
        raise ValueError(f"unknown coreset {name!r}; choose one of: {', '.join(CORESETS)}")
    return CORESETS[name]


# --------------------------------------------------------------------------- scores
def _correctness(correctness: np.ndarray) -> np.ndarray:
    c = np.asarray(correctness)
    if c.ndim != 2:
        raise ValueError(f"correctness must be (epochs, N); got shape {c.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise ValueError("correctness must be boolean (or 0/1)")
        c = c.astype(bool)
    return c


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
    c = _correctness(correctness)
    epochs = c.shape[0]
    events = (c[:-1] & ~c[1:]).sum(axis=0).astype(np.float64)
    events[~c.any(axis=0)] = epochs + 1
    return events


def misclassified_counts(correctness: np.ndarray) -> np.ndarray:
    """Paper A's wording of forgetting: in how many epochs each sample was misclassified."""
    return (~_correctness(correctness)).sum(axis=0).astype(np.float64)


def never_learned(correctness: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: samples never classified correctly in any epoch."""
    return ~_correctness(correctness).any(axis=0)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """Softmax margin ``p(top1) - p(top2)`` of each sample (small = near a decision boundary)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) with K >= 2; got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or inf")
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def aum_scores(true_margins: np.ndarray) -> np.ndarray:
    """Area under the margin (Pleiss et al. 2020): mean over epochs of the true-class margin.

    Args:
        true_margins: ``(epochs, N)``: logit of the true class minus the largest other logit,
            recorded when the sample's minibatch was presented.

    """
    m = np.asarray(true_margins, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise ValueError(f"true_margins must be a finite (epochs, N) array; got shape {m.shape}")
    return m.mean(axis=0)


@dataclass
class CoresetScores:
    """Scores of the training split's images for one score kind.

    Attributes:
        method: Score kind (a key of :data:`SCORES`).
        scores: ``(N,)`` score of each training image.
        indices: ``(N,)`` dataset indices the scores belong to (the split's train part).
        labels: ``(N,)`` their labels.
        meta: Provenance: seed, scoring model, epochs, image size, split and dataset
            hashes, cost in seconds and relative to the target's training, never-learned
            share, device.

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
    remedy = ("Delete it and its .json (a score file of the cache, or `make clean-cache`): notebook 03 "
              "computes the scores again")
    arrays = read_npz(path, remedy, ("scores", "indices", "labels"))
    meta = read_json(meta_path, remedy)
    if "method" not in meta:
        raise broken(meta_path, "score metadata without its 'method'", remedy)
    return CoresetScores(meta.pop("method"), arrays["scores"], arrays["indices"],
                         arrays["labels"], meta)


def scores_path(
    dataset_name: str, dataset_hash: str, split_hash: str, score: str, scoring_model: str,
    scoring_epochs: int, image_size: int | None, seed: int, pretrained: bool = False,
    weights_tag: str = "",
) -> Path:
    """Cache location of a score file: one file per (data, split, score kind, proxy, seed).

    ``weights_tag`` names a proxy's local initial weights (an in-project backbone).
    """
    from lcc_utils.paths import cache_dir

    init = "-pretrained" if pretrained else f"-{weights_tag}" if weights_tag else ""
    name = (f"{dataset_name}-{dataset_hash[:8]}-split{split_hash[:8]}-{score}-{scoring_model}"
            f"{init}-e{scoring_epochs}-px{image_size}-seed{seed}-v2.npz")
    return cache_dir() / "coreset_scores" / name


#: What a target spec (the model whose full training the proxy's cost is compared with) holds.
TARGET_KEYS = ("model", "image_size", "epochs", "batch_size", "recipe")


def target_training_seconds(ds: Any, split: Any, target: Mapping[str, Any], proxy: Any,
                            proxy_loader: Any, proxy_recipe: Any, proxy_seconds_per_step: float,
                            device: str = "auto", seed: int = 0, rounds: int = 3,
                            steps_per_round: int = 2) -> dict[str, float]:
    """Estimate one full training of the target model here, timed against the proxy.

    Steps of the freshly built target (full training split, its augmentation and image size)
    and of the proxy are timed in alternation (``rounds`` x ``steps_per_round`` each, after
    two untimed warm-up steps in the first round and one, for the fresh optimizer, in each later
    one), so both see the same machine load; their ratio, times the
    proxy's own seconds per step during its training, times the steps of a full target
    training (``epochs`` x batches per epoch) is the estimate. Another job slowing the
    machine during the proxy's training thus slows the estimate alike, and the cost ratio
    compares like with like. The target's validation passes are left out (its estimate is
    low, the ratio errs on the expensive side); the proxy's seconds per step include its
    own validation passes (about 4 % of its time at 16 px).
    """
    from lcc_utils import data, models, training

    missing = [k for k in TARGET_KEYS if k not in target]
    if missing:
        raise ValueError(f"target spec lacks {missing}; it needs {', '.join(TARGET_KEYS)}")
    rec = replace(training.get_recipe(target["recipe"]), batch_size=int(target["batch_size"]))
    loaders = data.make_loaders(ds, split, image_size=target["image_size"],
                                batch_size=rec.batch_size, seed=seed, augment=rec.augment, device=device)
    net = models.create_model(target["model"], num_classes=len(ds.classes),
                              in_chans=ds.images.shape[-1], image_size=target["image_size"])
    t_target = t_proxy = 0.0
    # 3 rounds x 2 steps with the later warm-ups cut to one: 20 steps in all, where 4 x 3 with two
    # warm-ups each were 40. Where proxy and target are one model at toy scale (the paper-smoke
    # runs) those 40 steps had cost three to four times the proxy's own training.
    for r in range(rounds):
        warm = 2 if r == 0 else 1
        t_target += training.seconds_per_step(net, loaders["train"], rec, steps_per_round, device, warmup=warm)
        t_proxy += training.seconds_per_step(proxy, proxy_loader, proxy_recipe, steps_per_round, device,
                                             warmup=warm)
    per_step = proxy_seconds_per_step * t_target / t_proxy
    full_steps = int(target["epochs"]) * len(loaders["train"])
    return {"target_over_proxy_step": t_target / t_proxy, "target_seconds_per_step": per_step,
            "target_steps": full_steps, "target_seconds_estimate": per_step * full_steps}


def score_dataset(
    ds: Any,
    split: Any,
    scoring_model: str,
    scoring_epochs: int,
    image_size: int | None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 128,
    recipe: str = "fair_cpu",
    augment: bool = False,
    target: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    weights: Any = None,
) -> dict[str, CoresetScores]:
    """Train the proxy once on the training split; return every score kind of :data:`SCORES`.

    Per-epoch correctness and true-class logit margins are recorded while training (forgetting
    in both definitions, AUM); then the softmax of the FINAL proxy model (after the last
    epoch, not the best-validation one) on the un-augmented training images gives the
    margins. The proxy trains with ``recipe``'s schedule and no early stopping, so every
    image is seen in every epoch, WITHOUT augmentation by default (Toneva's setting for
    most of their experiments; augmentation would also cost more than the proxy itself).

    The metadata records the cost (seconds), the never-learned share (overall and per
    class) and, with ``target`` (:data:`TARGET_KEYS`), the cost relative to one full
    training of the target model timed in this process (:func:`target_training_seconds`).
    ``pretrained`` starts the proxy from ImageNet weights (the ``paper`` profile's proxy is the
    target backbone itself, fine-tuned briefly at a lower resolution); ``weights``, a
    :class:`lcc_utils.paper_a.Backbone`, from an in-project pretrained model instead.
    """
    import torch

    from lcc_utils import data, models, training

    if isinstance(scoring_epochs, bool) or not isinstance(scoring_epochs, int) or scoring_epochs < 2:
        raise ValueError(f"scoring_epochs={scoring_epochs!r}: forgetting scores need a proxy "
                         "trained for at least 2 epochs (a forgetting event spans two epochs)")
    idx = np.asarray(split.train, dtype=np.int64)
    labels = np.asarray(ds.labels)[idx]
    meta: dict[str, Any] = {
        "seed": seed, "scoring_model": scoring_model, "scoring_epochs": scoring_epochs,
        "image_size": image_size, "split_hash": split.hash, "dataset": ds.name,
        "dataset_hash": ds.hash, "n": int(len(idx)), "proxy_recipe": str(recipe),
        "proxy_batch_size": batch_size, "proxy_augment": augment,
        "proxy_weights": weights.description if weights is not None else models.describe_weights(bool(pretrained))}
    t0 = time.perf_counter()
    loaders = data.make_loaders(ds, split, image_size=image_size, batch_size=batch_size, seed=seed,
                                augment=augment, device=device)
    training.seed_everything(seed)
    model = models.create_model(scoring_model, num_classes=len(ds.classes),
                                in_chans=ds.images.shape[-1], image_size=image_size,
                                pretrained=bool(pretrained),
                                weights=weights.checkpoint if weights is not None else None)
    proxy = replace(training.get_recipe(recipe), patience=None, batch_size=batch_size)
    result = training.train(model, loaders, proxy, epochs=scoring_epochs, device=device,
                            seed=seed, record_correctness=True, num_classes=len(ds.classes))
    # `train` restores the best-validation weights; margins use the final weights instead
    model.load_state_dict(result.extra["final_state"])
    mean, std = data.normalization(ds, split)
    eval_loader = data.BatchLoader(ds.images, ds.labels, idx, batch_size=batch_size,
                                   image_size=image_size, mean=mean, std=std)
    from lcc_utils.inference import predict

    t_margin = time.perf_counter()
    threads = torch.get_num_threads()
    if result.device == "cpu":  # one thread, as the proxy and the target train (fair timing)
        torch.set_num_threads(training.CPU_TRAIN_THREADS)
    try:
        probs, _, pidx = predict(model, eval_loader, device)
    finally:
        torch.set_num_threads(threads)
    margin_seconds = time.perf_counter() - t_margin
    if not np.array_equal(pidx, idx) or not np.array_equal(result.correctness_indices, idx):
        raise RuntimeError("scoring: predictions are not aligned with the training split")
    seconds = time.perf_counter() - t0
    never = never_learned(result.correctness)
    per_class = {str(ds.classes[c]): round(float(never[labels == c].mean()), 6)
                 for c in range(len(ds.classes)) if (labels == c).any()}
    meta.update(seconds=seconds, proxy_train_seconds=float(result.seconds),
                margin_pass_seconds=margin_seconds, device=result.device,
                proxy_best_epoch=result.best_epoch,
                proxy_final_val_accuracy=float(result.history["val_accuracy"].iloc[-1]),
                proxy_final_train_accuracy=float(result.correctness[-1].mean()),
                never_learned_share=float(never.mean()), never_learned_per_class=per_class)
    if target is not None:
        proxy_steps = int(result.extra["steps"])
        est = target_training_seconds(
            ds, split, target, models.create_model(
                scoring_model, num_classes=len(ds.classes), in_chans=ds.images.shape[-1],
                image_size=image_size),
            loaders["train"], proxy, result.seconds / proxy_steps, device=device, seed=seed)
        meta.update(target={k: target[k] for k in TARGET_KEYS}, **est,
                    cost_ratio=seconds / est["target_seconds_estimate"])
    values = {
        "misclassified": misclassified_counts(result.correctness),
        "forgetting_events": forgetting_scores(result.correctness),
        "margin": margin_scores(probs),
        "aum": aum_scores(result.extra["true_margins"]),
    }
    return {k: CoresetScores(k, v, idx, labels, dict(meta)) for k, v in values.items()}


def get_scores(
    ds: Any,
    split: Any,
    method: str,
    scoring_model: str,
    scoring_epochs: int,
    image_size: int | None,
    seed: int = 0,
    device: str = "auto",
    target: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    weights: Any = None,
) -> tuple[CoresetScores, Path, bool]:
    """Load the cached scores a method (or a score kind) needs, or compute and cache all kinds.

    Returns:
        The scores, their file, and whether they were computed now (False: read from cache).

    """
    score = method if method in SCORES else get_coreset_method(method).score
    if score is None:
        raise ValueError(f"coreset {method!r} needs no scores")
    args = (scoring_model, scoring_epochs, image_size, seed, bool(pretrained),
            weights.tag if weights is not None else "")
    path = scores_path(ds.name, ds.hash, split.hash, score, *args)
    if path.is_file():
        return load_scores(path), path, False
    for name, sc in score_dataset(ds, split, *args[:3], seed=seed, device=device, target=target,
                                  pretrained=bool(pretrained), weights=weights).items():
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


def ccs_select(hardness: np.ndarray, k: int, rng: np.random.Generator, beta: float = CCS_BETA,
               strata: int = CCS_STRATA) -> np.ndarray:
    """Coverage-centric selection (Zheng et al. 2023, Algorithm 1) of ``k`` of ``len(hardness)``.

    Drop the ``floor(beta * n)`` hardest, split the rest into ``strata`` equal-width bins of
    hardness, then visit the bins from the smallest to the largest, taking from each
    ``min(size, floor(budget left / bins left))`` at random; the last bins absorb the
    remainder. Returns positions into ``hardness``.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta={beta!r} must be in [0, 1)")
    if isinstance(strata, bool) or not isinstance(strata, int) or strata < 1:
        raise ValueError(f"strata={strata!r} must be a positive integer")
    h = np.asarray(hardness, dtype=np.float64)
    n = len(h)
    order = np.lexsort((rng.permutation(n), -h))  # hardest first, seeded tie-break
    pool = np.sort(order[int(math.floor(beta * n)):])
    if k > len(pool):
        raise ValueError(f"beta={beta}: dropping the hardest {n - len(pool)} of {n} images leaves "
                         f"{len(pool)}, fewer than the {k} the coreset needs; lower beta")
    lo, hi = h[pool].min(), h[pool].max()
    edges = np.linspace(lo, hi, strata + 1)
    bins = np.clip(np.searchsorted(edges, h[pool], side="right") - 1, 0, strata - 1)
    groups = [pool[bins == b] for b in range(strata) if (bins == b).any()]
    groups.sort(key=len)
    chosen, budget = [], k
    for i, g in enumerate(groups):
        take = min(len(g), budget // (len(groups) - i))
        chosen.append(rng.choice(g, size=take, replace=False))
        budget -= take
    out = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    if len(out) != k:  # cannot happen: the largest bin comes last and takes what is left
        raise RuntimeError(f"ccs_select picked {len(out)} of {k}")
    return np.sort(out).astype(np.int64)


def select_coreset(
    scores: np.ndarray | None,
    fraction: float,
    labels: np.ndarray,
    method: str,
    balanced: bool = True,
    seed: int = 0,
    beta: float = CCS_BETA,
    strata: int = CCS_STRATA,
) -> np.ndarray:
    """Pick the coreset: positions (into ``scores``/``labels``) of the images to keep, sorted.

    ``hardest`` methods keep the hardest images by their score (:data:`SCORES` says which
    direction is hard), ``easiest`` the easiest, ``random`` a seeded sample, ``ccs``
    :func:`ccs_select` within each class. Ties are broken by a seeded permutation, so the
    same seed always gives the same coreset (counts such as forgetting take few values, so
    most of a count-based selection at a tied boundary IS this random tie-break). ``balanced``
    keeps each class's share of the training split (largest-remainder rounding) and never
    leaves a class empty; otherwise the global top of the ranking is kept.

    Args:
        scores: ``(N,)`` scores of the method's score kind; ignored (may be None) for random.
        fraction: Share of the training split to keep, in (0, 1].
        labels: ``(N,)`` class labels of the scored images.
        method: A key of :data:`CORESETS`.
        balanced: Keep class proportions (``ccs`` is always balanced).
        seed: Seed of the tie-breaking permutation / the random sample.
        beta: CCS: share of each class's hardest images dropped first, in [0, 1).
        strata: CCS: number of equal-width score bins.

    Returns:
        Sorted int64 positions.

    """
    m = get_coreset_method(method)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {labels.shape}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta={beta!r} must be in [0, 1)")
    n = len(labels)
    k = coreset_size(n, fraction)
    n_classes = len(np.unique(labels))
    if k < n_classes:
        raise ValueError(
            f"fraction={fraction} of {n} images gives a coreset of {k}, smaller than the "
            f"number of classes ({n_classes})"
        )
    hardness = np.zeros(n)
    if m.needs_scores:
        if scores is None:
            raise ValueError(f"coreset {method!r} needs scores; got scores=None")
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != labels.shape:
            raise ValueError(f"scores has shape {s.shape} but labels has {labels.shape}")
        if not np.isfinite(s).all():
            raise ValueError("scores contain NaN or inf")
        hardness = s if SCORES[m.score] else -s
    if k == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(n)
    primary = {"hardest": -hardness, "easiest": hardness}.get(m.keep, np.zeros(n))
    ranking = np.lexsort((tiebreak, primary))  # best first
    if not balanced and m.keep != "ccs":
        return np.sort(ranking[:k]).astype(np.int64)
    quotas = _class_quotas(labels, k)
    keep = []
    for c, q in quotas.items():
        members = np.flatnonzero(labels == c)
        if q > len(members):
            raise ValueError(f"fraction={fraction}: class {c} has {len(members)} images, "
                             f"fewer than its quota of {q}")
        if m.keep == "ccs":
            keep.append(members[ccs_select(hardness[members], q, rng, beta, strata)])
        else:
            keep.append(ranking[labels[ranking] == c][:q])
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
    remedy = "Delete it: the run that selected the coreset writes it again"
    d = read_json(path, remedy)
    if not isinstance(d.get("indices"), list):
        raise broken(path, "a coreset index file without its list of 'indices'", remedy)
    return np.asarray(d["indices"], dtype=np.int64)


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
    target: Mapping[str, Any] | None = None,
    pretrained: bool = False,
    weights: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Dataset indices of the training coreset, scoring the split first when needed.

    ``image_size`` is the PROXY's image size (part of the scores' cache key); ``target`` is
    the target's spec, recorded with scores computed now (:func:`score_dataset`);
    ``pretrained`` starts the proxy from ImageNet weights, ``weights`` (a
    :class:`lcc_utils.paper_a.Backbone`) from an in-project pretrained model.

    Returns:
        Sorted dataset indices and provenance (scores file, whether scores were computed now,
        scoring cost in seconds).

    """
    m = get_coreset_method(coreset)
    train_idx = np.asarray(split.train, dtype=np.int64)
    labels = np.asarray(ds.labels)[train_idx]
    info: dict[str, Any] = {"scores_file": None, "scores_computed": False, "scoring_seconds": 0.0}
    if coreset_size(len(train_idx), fraction) == len(train_idx):
        return train_idx, info  # the whole split, whatever the method
    scores = None
    if m.needs_scores:
        sc, path, computed = get_scores(ds, split, coreset, scoring_model, scoring_epochs,
                                        image_size, seed, device, target=target,
                                        pretrained=pretrained, weights=weights)
        if not np.array_equal(sc.indices, train_idx):
            raise ValueError(f"scores file {path} does not match the split's training part")
        scores = sc.scores
        info.update(scores_file=str(path), scores_computed=computed,
                    scoring_seconds=float(sc.meta.get("seconds", 0.0)))
    pos = select_coreset(scores, fraction, labels, coreset, balanced=balanced, seed=seed)
    return train_idx[pos], info


def select_fractions(
    scores: CoresetScores, method: str, fractions: Sequence[float], seed: int = 0,
    balanced: bool = True,
) -> dict[float, np.ndarray]:
    """Dataset indices of ``method``'s coresets of several fractions, from one score file."""
    m = get_coreset_method(method)
    if m.score not in (None, scores.method):
        raise ValueError(f"coreset {method!r} ranks by {m.score!r}, not by {scores.method!r}")
    return {f: scores.indices[select_coreset(scores.scores, f, scores.labels, method,
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
    fig = plt.figure(figsize=(8, 0.35 * len(classes) + 1.8))
    ax = fig.add_subplot()
    per_class = [scores.scores[scores.labels == c] for c in range(len(classes))]
    values = np.unique(scores.scores)
    y = np.arange(len(classes))
    if len(values) <= 12:
        epochs = scores.meta.get("scoring_epochs")
        never = {"forgetting_events": epochs + 1 if epochs else None,
                 "misclassified": epochs}.get(scores.method)
        cmap = matplotlib.colormaps["viridis"].resampled(len(values))
        left = np.zeros(len(classes))
        for i, v in enumerate(values):
            share = np.array([(s == v).mean() if len(s) else 0.0 for s in per_class])
            label = "never learned" if never is not None and v == never else f"{v:g}"
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
    harder = "higher" if SCORES.get(scores.method, True) else "lower"
    ax.set_title(f"{scores.meta.get('dataset', '')}: {scores.method} scores per class (proxy "
                 f"{scores.meta.get('scoring_model')}, {scores.meta.get('scoring_epochs')} epochs)"
                 f"\n{harder} = harder", fontsize=9)
    fig.tight_layout()
    return fig


def plot_score_histograms(scores: Mapping[str, CoresetScores]) -> Figure:
    """One histogram per score kind of one proxy training, the never-learned share in the title."""
    kinds = list(scores)
    fig = plt.figure(figsize=(3.2 * len(kinds), 3.0))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        v = scores[kind].scores
        values = np.unique(v)
        if len(values) <= 16:  # counts: one bar per value
            ax.bar(values, [(v == x).mean() for x in values], width=0.8)
        else:
            ax.hist(v, bins=40, weights=np.full(len(v), 1 / len(v)))
        ax.set(title=f"{kind} ({'higher' if SCORES.get(kind, True) else 'lower'} = harder)",
               xlabel="score", ylabel="share of training images")
        ax.title.set_fontsize(9)
    meta = next(iter(scores.values())).meta
    fig.suptitle(f"{meta.get('dataset', '')} seed {meta.get('seed')}: proxy "
                 f"{meta.get('scoring_model')}, {meta.get('scoring_epochs')} epochs at "
                 f"{meta.get('image_size')} px; never learned "
                 f"{100 * meta.get('never_learned_share', float('nan')):.2f} %", fontsize=10)
    fig.tight_layout()
    return fig


def plot_selected_images(
    ds: Any, scores: CoresetScores, selected: np.ndarray, n_classes: int = 6, per_class: int = 6
) -> Figure:
    """The first-ranked selected images of a few classes, titled with their scores."""
    from lcc_utils.data import rgb_composite

    pos = {int(i): p for p, i in enumerate(scores.indices)}
    fig = plt.figure(figsize=(1.4 * per_class, 1.5 * n_classes))
    axes = fig.subplots(n_classes, per_class, squeeze=False)
    keep = "highest" if SCORES.get(scores.method, True) else "lowest"  # hardest first
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
