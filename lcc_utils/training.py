"""Training engine shared by both papers: one loop, named recipes, resumable runs.

Paper A fine-tunes timm backbones with AdamW (lr 5e-4, weight decay 0.01), gradient
clipping at 1.0, a 3-epoch warm-up, at most 10 epochs, early stopping on validation
accuracy, class-weighted cross-entropy and the best checkpoint kept. Paper B trains its
small CNN with Adam (lr 1e-3, batch 32) and an L2 penalty of 1e-3, early stopping on
validation loss. Both are entries of :data:`RECIPES`; :func:`train` is the only loop.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lcc_utils.files import broken, load_torch, read_json
from lcc_utils.inference import mixed_precision as _autocast
from lcc_utils.inference import predict, resolve_device
from lcc_utils.paths import atomic_path, atomic_write, disk_full
from lcc_utils.progress import tqdm
from lcc_utils.runs import params_hash, portable_data_dir, read_run_json

CHECKPOINT_DIR = "checkpoints"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint (``last.pt`` / ``best.pt``), or an error naming it and the remedy.

    Checkpoints are never committed and always rebuildable: a broken one (a zero-byte
    ``best.pt``, a ``last.pt`` cut short by a full disk) is deleted with its folder, and the run
    trains again from the first epoch.

    Raises:
        BrokenFileError: the file is empty, truncated or not a checkpoint.

    """
    path = Path(path)
    remedy = (f"Delete the folder {path.parent} (checkpoints are not committed): running the run "
              "again, or lcc_utils.trained.reopen_trained, trains it from the first epoch")
    ckpt = load_torch(path, remedy)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise broken(path, "holds no model state (not a checkpoint of lcc_utils.training)", remedy)
    return ckpt
HISTORY_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds",
)


@dataclass(frozen=True)
class Recipe:
    """A training protocol: optimiser, schedule, stopping rule and loss of one paper.

    Attributes:
        name: Recipe key in :data:`RECIPES`.
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"adam"``.
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay of AdamW (0 for Adam).
        l2: Keras-style L2 penalty ``l2 * sum(w**2)`` added to the loss, on weight
            tensors with >= 2 dims (conv kernels, linear weights; not biases/norms).
        grad_clip: Max global gradient norm, or None.
        warmup_epochs: Linear warm-up length, in epochs of ``max_epochs``.
        warmup_fraction: Instead, the warm-up as a share of the run's optimizer steps
            (one-cycle style; used by step-budgeted runs).
        schedule: After warm-up, ``"cosine"`` decay to 0 or ``"constant"``.
        max_epochs: Epoch budget.
        patience: Validations without improvement before stopping, counted only once the
            warm-up has ended (paper A: "a warm-up of 3 epochs is followed by early
            stopping"); None never stops early.
        monitor: ``"val_accuracy"`` (higher is better) or ``"val_loss"`` (lower is better).
        class_weighted: Cross-entropy weights ``N / (K * n_k)`` from the training subset.
        batch_size: Images per step.
        augment: Training augmentation: ``"trivial"`` (TrivialAugmentWide on RGB, the
            8 flips/rotations otherwise) or ``"dihedral"`` (the 8 flips/rotations only).

    """

    name: str
    optimizer: str
    lr: float
    weight_decay: float = 0.0
    l2: float = 0.0
    grad_clip: float | None = None
    warmup_epochs: float = 0.0
    warmup_fraction: float | None = None
    schedule: str = "constant"
    max_epochs: int = 10
    patience: int | None = None
    monitor: str = "val_accuracy"
    class_weighted: bool = False
    batch_size: int = 64
    augment: str = "trivial"


#: Named training protocols. Choices the papers leave open are ours and are listed here.
RECIPES: dict[str, Recipe] = {
    # Paper A. Open choices (ours): warm-up is linear per step from lr/steps to lr over 3
    # epochs, then cosine decay to 0 at max_epochs (the paper only says "warm-up");
    # early-stopping patience 3 epochs; batch size 64 (paper not stated for all models).
    "paper_a": Recipe(
        name="paper_a", optimizer="adamw", lr=5e-4, weight_decay=0.01, grad_clip=1.0,
        warmup_epochs=3, schedule="cosine", max_epochs=10, patience=3,
        monitor="val_accuracy", class_weighted=True, batch_size=64,
    ),
    # Paper B. Open choices (ours): "L2 1e-3" is read as a Keras kernel_regularizer
    # (penalty in the loss, not Adam's coupled weight_decay); constant lr; at most
    # 50 epochs with patience 5 on validation loss; unweighted cross-entropy.
    "paper_b": Recipe(
        name="paper_b", optimizer="adam", lr=1e-3, l2=1e-3, max_epochs=50, patience=5,
        monitor="val_loss", class_weighted=False, batch_size=32,
    ),
    # Paper A's coreset comparison on the CPU (ours). Every method at a fraction trains the
    # same number of optimizer steps with the same one-cycle schedule (10 % linear warm-up,
    # cosine to 0) and NO early stopping: a run that stops early trains fewer steps than its
    # rival, and the comparison then measures the stopping rule. The best-validation
    # checkpoint is kept, as in paper A. AdamW with paper A's clipping and class weights;
    # peak lr 3e-3 and weight decay 0.05 suit BatchNorm CNNs trained from scratch (pilot in
    # docs/paper_a.md). Flips and 90-degree rotations: overhead images have no "up", and on a
    # 32-px image TrivialAugmentWide's colour and shear ops cost more than they teach.
    "fair_cpu": Recipe(
        name="fair_cpu", optimizer="adamw", lr=3e-3, weight_decay=0.05, grad_clip=1.0,
        warmup_fraction=0.1, schedule="cosine", max_epochs=15, patience=None,
        monitor="val_accuracy", class_weighted=True, batch_size=64, augment="dihedral",
    ),
}


def get_recipe(name: str | Recipe) -> Recipe:
    """Return the recipe called ``name`` (a Recipe passes through) or list the choices."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes:
        history: One row per epoch (:data:`HISTORY_COLUMNS`).
        best_epoch: Epoch (1-based) of the kept checkpoint.
        best_metric: Its monitored validation value.
        best_state: Its model state dict (CPU tensors).
        stopped_early: Whether early stopping ended the run before the epoch budget.
        seconds: Training wall time summed over all sessions of a resumed run.
        device: Device the run trained on.
        correctness: ``(epochs, N_train)`` bool, whether each training image was
            classified correctly when its minibatch was presented (Toneva et al. 2018);
            None unless ``record_correctness=True``.
        correctness_indices: Dataset indices of the columns of ``correctness``.
        resumed: Whether this session continued a checkpoint (or returned a finished run).

    """

    history: pd.DataFrame
    best_epoch: int
    best_metric: float
    best_state: dict[str, torch.Tensor]
    stopped_early: bool
    seconds: float
    device: str
    correctness: np.ndarray | None = None
    correctness_indices: np.ndarray | None = None
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (call before building a model for a reproducible init)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``N / (K * n_k)`` of the labels actually trained on.

    On a coreset this is computed on the coreset, not on the full training split. A class
    absent from the training labels has no defined weight: that is an error, not a zero.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels hold class {labels.max()} but num_classes={num_classes}")
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"class-weighted loss: classes {missing} have no training images")
    return torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)


def warmup_steps(recipe: Recipe, epochs: int, steps_per_epoch: int, total: int | None = None) -> int:
    """Optimizer steps of the linear warm-up of a run of ``epochs`` (or ``total`` steps)."""
    total = epochs * steps_per_epoch if total is None else total
    if recipe.warmup_fraction is not None:
        return int(round(recipe.warmup_fraction * total))
    # When a run gets fewer epochs than the recipe's budget, the warm-up keeps its share
    # of the budget (3 of 10 epochs -> 30 %): our choice, so short CPU runs still decay.
    warm_epochs = recipe.warmup_epochs * min(1.0, epochs / recipe.max_epochs)
    return int(round(warm_epochs * steps_per_epoch))


def warmup_end_epoch(recipe: Recipe, epochs: int, steps_per_epoch: int, total: int | None = None) -> int:
    """The last epoch that contains warm-up steps (0 without warm-up): no early stop before it ends."""
    return math.ceil(warmup_steps(recipe, epochs, steps_per_epoch, total) / steps_per_epoch)


def _lr_factor(recipe: Recipe, epochs: int, steps_per_epoch: int,
               total: int | None = None) -> Callable[[int], float]:
    total = max(1, epochs * steps_per_epoch if total is None else total)
    warm = warmup_steps(recipe, epochs, steps_per_epoch, total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if recipe.schedule == "cosine":
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"recipe {recipe.name!r}: unknown optimizer {recipe.optimizer!r} (adamw, adam)")


def _l2_penalty(model: nn.Module) -> torch.Tensor:
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    return sum((p.pow(2).sum() for p in weights), torch.zeros((), device=weights[0].device))


def _num_classes(model: nn.Module, loaders: Mapping[str, Any]) -> int:
    k = getattr(model, "num_classes", None)
    if isinstance(k, int) and k > 0:
        return k
    return int(max(loaders["train"].labels.max(), loaders["val"].labels.max())) + 1


def _atomic_torch_save(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # a full disk: torch's zip writer says "unexpected pos", naming no file
            if "inline_container" not in str(err) and "unexpected pos" not in str(err):
                raise
            raise disk_full(path, err) from err


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _embedded(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run parameters a checkpoint embeds: the data root named as ``params.json`` names it."""
    out = dict(params or {})
    if "data_dir" in out:
        out["data_dir"] = portable_data_dir(out["data_dir"])
    return out


def _fingerprint(recipe: Recipe, epochs: int, seed: int, train_indices: np.ndarray,
                 steps: int | None = None, val_every: int = 1) -> dict:
    """What a checkpoint must match to be resumed (a different run must not continue it)."""
    return {"recipe": asdict(recipe), "epochs": epochs, "seed": seed, "steps": steps,
            "val_every": val_every,
            "n_train": int(len(train_indices)),
            "train_sum": int(np.asarray(train_indices, dtype=np.int64).sum())}


def _history_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


# --------------------------------------------------------------------------- inference
def evaluate(model: nn.Module, loader: Any, device: str | torch.device = "auto") -> dict[str, float]:
    """Overall accuracy and mean (unweighted) cross-entropy of ``model`` on a loader."""
    probs, labels, _ = predict(model, loader, device)
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "loss": float(-np.log(p_true).mean()),
        "n": int(len(labels)),
    }


# --------------------------------------------------------------------------- the loop
#: CPU training runs on this many threads: the summation order of convolution kernels depends
#: on the thread count, so a run rebuilt with another count drifts by float rounding (seen:
#: 1e-4 weight differences that flip a few quantized predictions). One thread makes a run
#: bit-reproducible on any machine of the same CPU type, which `trained.reopen_trained` relies on.
#: ``LCC_CPU_THREADS`` changes it: ``make reproduce`` uses that to measure how far a changed float
#: summation order (what another processor's kernels do) moves a run's metrics.
CPU_TRAIN_THREADS = int(os.environ.get("LCC_CPU_THREADS", "1"))
if CPU_TRAIN_THREADS < 1:
    raise ValueError(f"LCC_CPU_THREADS={CPU_TRAIN_THREADS} must be a positive integer")


def _pinned_cpu_threads(fn: Callable) -> Callable:
    """Run ``fn`` with :data:`CPU_TRAIN_THREADS` torch threads when its ``device`` resolves to the CPU."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        if resolve_device(bound.arguments["device"]).type != "cpu":
            return fn(*args, **kwargs)
        previous = torch.get_num_threads()
        torch.set_num_threads(CPU_TRAIN_THREADS)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


@dataclass
class TrainState:
    """Where a run stands after an epoch: what ``last.pt`` keeps besides model and optimiser.

    Attributes:
        epoch: Last finished epoch (0 before the first).
        step: Optimizer steps so far.
        period: Training loss sum, correct and seen images since the last history row.
        history: One row per validation (:data:`HISTORY_COLUMNS`).
        correctness: Per epoch, whether each training image was right when presented.
        true_margins: Per epoch, each training image's AUM margin when presented.
        best_metric: Best monitored validation value so far.
        best_epoch: Its epoch.
        since_best: Validations without improvement, counted after the warm-up.
        best_state: The kept model state (CPU tensors).
        seconds_before: Training seconds of earlier sessions of a resumed run.
        finished: The run ended (budget spent or stopped early).
        stopped_early: The stop rule ended it before its budget.
        resumed: This session continued a checkpoint.

    """

    epoch: int = 0
    step: int = 0
    period: list = field(default_factory=lambda: [0.0, 0, 0])
    history: list[dict] = field(default_factory=list)
    correctness: list[np.ndarray] = field(default_factory=list)
    true_margins: list[np.ndarray] = field(default_factory=list)
    best_metric: float = math.inf
    best_epoch: int = 0
    since_best: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds_before: float = 0.0
    finished: bool = False
    stopped_early: bool = False
    resumed: bool = False


@dataclass
class Trainer:
    """The fixed parts of one run: model, optimiser, schedule, loss, device and recipe."""

    model: nn.Module
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    device: torch.device


def make_trainer(model: nn.Module, recipe: Recipe, device: torch.device, epochs: int, steps_per_epoch: int,
                 total_steps: int, class_weight: torch.Tensor | None) -> Trainer:
    """Move ``model`` to ``device`` (channels-last on CUDA) and build the recipe's optimiser and schedule."""
    if device.type == "cpu":
        # Same seed -> same result on the CPU; GPU kernels are not bitwise reproducible.
        torch.use_deterministic_algorithms(True)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(recipe, epochs, steps_per_epoch, total_steps))
    # bf16 needs no loss scaling; fp16 (GPUs without bf16) does
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    weight = None if class_weight is None else class_weight.to(device)
    return Trainer(model, recipe, optimizer, scheduler, scaler, nn.CrossEntropyLoss(weight=weight), device)


def training_step(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch: bf16 autocast on CUDA, the recipe's L2 and clipping, the schedule.

    ``y`` is on the device already. Returns the (detached) loss, L2 included, and the logits.
    """
    x = x.to(t.device, non_blocking=True)  # a no-op for the loader's device path
    if t.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    t.optimizer.zero_grad(set_to_none=True)
    with _autocast(t.device):
        logits = t.model(x)
        loss = t.criterion(logits.float(), y)
    if t.recipe.l2:
        loss = loss + t.recipe.l2 * _l2_penalty(t.model)
    t.scaler.scale(loss).backward()
    if t.recipe.grad_clip:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.model.parameters(), t.recipe.grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    return loss.detach(), logits.detach()


def train_one_epoch(t: Trainer, loader: Any, state: TrainState, epoch: int, total_steps: int,
                    record_correctness: bool = False) -> None:
    """One pass over ``loader`` (or what is left of the step budget), accumulated into ``state``.

    The running loss and accuracy stay on the device until the epoch ends: without per-sample
    records (forgetting scores) a step never waits for the GPU. The sums are the ones Python
    floats gave (float64, in the same order), so a CPU run is bit-identical to the former loop.
    """
    loader.set_epoch(epoch)
    t.model.train()
    train_idx = np.asarray(loader.indices, dtype=np.int64)
    order = np.argsort(train_idx, kind="stable")
    sorted_idx = train_idx[order]
    seen = np.zeros(len(train_idx), dtype=bool) if record_correctness else None
    seen_margin = np.zeros(len(train_idx), dtype=np.float32) if record_correctness else None
    loss_sum = torch.tensor(float(state.period[0]), dtype=torch.float64, device=t.device)
    correct = torch.tensor(int(state.period[1]), dtype=torch.int64, device=t.device)
    images = int(state.period[2])
    # the per-batch bar only in a terminal: nested bars move the cursor with ANSI escapes,
    # which a notebook's stderr cannot render (the epoch bar shows progress there)
    for x, y, idx in tqdm(loader, desc=f"epoch {epoch}", leave=False, unit="batch",
                          mininterval=10, disable=not sys.stderr.isatty()):
        if state.step >= total_steps:
            break
        y = y.to(t.device, non_blocking=True)
        loss, logits = training_step(t, x, y)
        state.step += 1
        hit = logits.argmax(1) == y
        if seen is not None:
            pos = order[np.searchsorted(sorted_idx, idx.numpy())]
            seen[pos] = hit.cpu().numpy()
            with torch.no_grad():  # AUM: true-class logit minus the largest other logit
                lg = logits.float()
                true = lg.gather(1, y.view(-1, 1)).squeeze(1)
                other = lg.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
                seen_margin[pos] = (true - other).cpu().numpy()
        loss_sum += loss.double() * len(y)
        correct += hit.sum()
        images += len(y)
    state.period = [float(loss_sum), int(correct), images]
    if seen is not None:
        state.correctness.append(seen)
        state.true_margins.append(seen_margin)


def validation_pass(t: Trainer, loader: Any, state: TrainState, epoch: int, started: float) -> dict:
    """Validate, append the history row (training figures averaged since the last row) and return it.

    ``started``: ``time.perf_counter()`` at the epoch's start (the row's seconds include validation).
    """
    val = evaluate(t.model, loader, t.device)
    period = state.period
    row = {
        "epoch": epoch, "step": state.step, "lr": t.optimizer.param_groups[0]["lr"],
        "train_loss": period[0] / period[2], "train_accuracy": period[1] / period[2],
        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "seconds": time.perf_counter() - started,
    }
    state.history.append(row)
    state.period = [0.0, 0, 0]
    return row


def keep_best(t: Trainer, state: TrainState, row: dict, epoch: int, warm_end: int) -> bool:
    """Keep the model if the monitored value improved; else count the validation against patience.

    Patience only counts once the warm-up has ended (paper A: warm-up, then early stopping).
    """
    metric = row[t.recipe.monitor]
    higher = t.recipe.monitor == "val_accuracy"
    improved = metric > state.best_metric if higher else metric < state.best_metric
    if improved:
        state.best_metric, state.best_epoch, state.since_best = metric, epoch, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    elif epoch > warm_end:
        state.since_best += 1
    return improved


def should_stop(recipe: Recipe, state: TrainState, last: bool) -> bool:
    """The budget and stop rule: set ``state.finished`` (and ``stopped_early``); True when the run ends.

    ``last``: the epoch or step budget is spent. Early stopping: ``patience`` validations without
    improvement after the warm-up, unless the budget ended the run anyway.
    """
    state.stopped_early = recipe.patience is not None and state.since_best >= recipe.patience and not last
    state.finished = state.stopped_early or last
    return state.finished


def save_checkpoints(t: Trainer, state: TrainState, run_dir: Path, improved: bool, k: int, fingerprint: dict,
                     params: Mapping[str, Any] | None, seconds: float) -> None:
    """Write ``best.pt`` (when improved), ``last.pt`` (everything a resume needs) and ``history.csv``."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if improved:
        _atomic_torch_save({"model": state.best_state, "epoch": state.epoch, "metric": state.best_metric,
                            "monitor": t.recipe.monitor, "num_classes": k,
                            "params": _embedded(params)}, ckpt_dir / "best.pt")
    _atomic_torch_save({
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
        "epoch": state.epoch, "step": state.step, "period": state.period, "history": state.history,
        "correctness": state.correctness, "true_margins": state.true_margins,
        "best_metric": state.best_metric, "best_epoch": state.best_epoch, "since_best": state.since_best,
        "seconds": seconds, "finished": state.finished, "stopped_early": state.stopped_early,
        "rng": _rng_state(), "fingerprint": fingerprint, "params": _embedded(params),
        "num_classes": k,
    }, ckpt_dir / "last.pt")
    atomic_write(Path(run_dir) / "history.csv", _history_frame(state.history).to_csv(index=False))


def resume_checkpoints(t: Trainer, run_dir: Path, fingerprint: dict, record_correctness: bool) -> TrainState:
    """Restore model, optimiser, schedule, RNG states and the :class:`TrainState` from ``last.pt``."""
    last_path = Path(run_dir) / CHECKPOINT_DIR / "last.pt"
    ckpt = read_checkpoint(last_path)
    if ckpt["fingerprint"] != fingerprint:
        raise ValueError(
            f"{last_path} belongs to a different run (recipe, epochs, seed or training "
            "subset differ); use a new run_dir or delete that checkpoints folder"
        )
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        t.scaler.load_state_dict(ckpt["scaler"])
    state = TrainState(
        epoch=ckpt["epoch"], step=ckpt.get("step", 0), period=list(ckpt.get("period", [0.0, 0, 0])),
        history=list(ckpt["history"]), correctness=[np.asarray(c) for c in ckpt["correctness"]],
        true_margins=[np.asarray(c) for c in ckpt.get("true_margins", [])],
        best_metric=ckpt["best_metric"], best_epoch=ckpt["best_epoch"], since_best=ckpt["since_best"],
        seconds_before=ckpt["seconds"], finished=ckpt["finished"], stopped_early=ckpt["stopped_early"],
        resumed=True)
    if record_correctness and len(state.correctness) != len(state.history):
        raise ValueError(f"{last_path} was trained without record_correctness: its per-epoch "
                         "correctness cannot be completed; use a new run_dir")
    _set_rng_state(ckpt["rng"])
    state.best_state = read_checkpoint(last_path.parent / "best.pt")["model"]
    return state


@_pinned_cpu_threads
def train(
    model: nn.Module,
    loaders: Mapping[str, Any],
    recipe: str | Recipe = "paper_a",
    epochs: int | None = None,
    device: str | torch.device = "auto",
    run_dir: str | os.PathLike | None = None,
    seed: int = 0,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    record_correctness: bool = False,
    params: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    steps: int | None = None,
    val_every: int = 1,
) -> TrainResult:
    """Train ``model`` with a recipe, keep the best checkpoint and restore it into ``model``.

    With ``run_dir``, ``history.csv`` is written every epoch, ``checkpoints/last.pt``
    (model, optimiser, scheduler, history, best metric, RNG states, ``params``) and
    ``checkpoints/best.pt`` too. A run whose ``last.pt`` exists is resumed from it (on
    the CPU a resumed run ends with exactly the metrics of an uninterrupted one); a run
    that already finished is returned as stored, without training.

    The loop reads as timm's and torchgeo's: :func:`train_one_epoch` (of
    :func:`training_step`), :func:`validation_pass`, :func:`keep_best` and :func:`should_stop`
    (the budget and stop rule), :func:`save_checkpoints` / :func:`resume_checkpoints`.

    Args:
        model: Any classifier from :func:`lcc_utils.models.create_model`.
        loaders: ``{"train", "val"}`` batch loaders yielding ``(x, y, idx)``.
        recipe: Recipe name or object (:data:`RECIPES`).
        epochs: Epoch budget; default the recipe's ``max_epochs``.
        device: ``"auto"`` (CUDA with AMP and channels_last if present, else CPU with
            deterministic algorithms), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        run_dir: Folder for history and checkpoints; None keeps everything in memory.
        seed: Seeds the RNGs at the start of a fresh run (dropout, etc.).
        on_epoch_end: Called as ``f(epoch, row)`` after each epoch's checkpoint is saved.
        record_correctness: Keep the per-sample correctness matrix (forgetting scores).
        params: Run parameters embedded in the checkpoints.
        num_classes: Output classes; default ``model.num_classes``.
        steps: Optimizer-step budget instead of ``epochs``: the run trains exactly this many
            steps (the last epoch may be partial) and the schedule spans them. Runs on
            coresets of one size then get identical budgets whatever the method.
        val_every: Validate (and consider a checkpoint / early stop) every this many epochs,
            and always after the last one. One history row per validation; its training
            loss and accuracy average the epochs since the previous row.

    Returns:
        A :class:`TrainResult`; ``model`` holds the best checkpoint's weights.

    """
    recipe = get_recipe(recipe)
    epochs = recipe.max_epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    if steps is not None and (isinstance(steps, bool) or int(steps) < 1):
        raise ValueError(f"steps={steps!r} must be a positive number of optimizer steps (or None)")
    if isinstance(val_every, bool) or int(val_every) < 1:
        raise ValueError(f"val_every={val_every!r} must be a positive number of epochs")
    val_every = int(val_every)
    for part in ("train", "val"):
        if part not in loaders:
            raise ValueError(f"loaders must have a {part!r} loader; got {sorted(loaders)}")
    if recipe.monitor not in ("val_accuracy", "val_loss"):
        raise ValueError(f"recipe {recipe.name!r}: monitor must be val_accuracy or val_loss")
    dev = resolve_device(device)
    train_loader, val_loader = loaders["train"], loaders["val"]
    train_idx = np.asarray(train_loader.indices, dtype=np.int64)
    k = num_classes or _num_classes(model, loaders)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the train loader yields no batches (empty training subset?)")
    if steps is not None:
        steps = int(steps)
        epochs = math.ceil(steps / steps_per_epoch)
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    warm_end = warmup_end_epoch(recipe, epochs, steps_per_epoch, total_steps)
    fingerprint = _fingerprint(recipe, epochs, seed, train_idx, steps, val_every)
    if run_dir is not None:
        (Path(run_dir) / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)

    weight = class_weights(train_loader.labels, k) if recipe.class_weighted else None
    t = make_trainer(model, recipe, dev, epochs, steps_per_epoch, total_steps, weight)
    if run_dir is not None and (Path(run_dir) / CHECKPOINT_DIR / "last.pt").exists():
        state = resume_checkpoints(t, Path(run_dir), fingerprint, record_correctness)
    else:
        state = TrainState(best_metric=-math.inf if recipe.monitor == "val_accuracy" else math.inf)
        seed_everything(seed)

    t_session, elapsed = time.perf_counter(), 0.0
    # advanced by hand after each epoch: a bar iterated over stops one short when the loop breaks
    # on its last epoch (``50% 1/2`` after both epochs ran)
    epoch_bar = tqdm(desc=f"train {recipe.name}", unit="epoch", initial=state.epoch, total=epochs,
                     disable=state.finished)
    for epoch in range(state.epoch + 1, epochs + 1):
        if state.finished:
            break
        t0 = time.perf_counter()
        train_one_epoch(t, train_loader, state, epoch, total_steps, record_correctness)
        state.epoch = epoch
        last = epoch == epochs or state.step >= total_steps
        row, improved = None, False
        if last or epoch % val_every == 0:
            row = validation_pass(t, val_loader, state, epoch, started=t0)
            improved = keep_best(t, state, row, epoch, warm_end)
            epoch_bar.set_postfix(val_acc=f"{row['val_accuracy']:.3f}", best=state.best_epoch)
        elapsed = time.perf_counter() - t_session
        should_stop(recipe, state, last)
        if run_dir is not None:
            save_checkpoints(t, state, Path(run_dir), improved, k, fingerprint, params, state.seconds_before + elapsed)
        if on_epoch_end is not None and row is not None:
            on_epoch_end(epoch, row)
        epoch_bar.update(1)
        if state.stopped_early:  # a finished run, not an aborted one: the final line says so (100 % of what ran)
            epoch_bar.total = epoch
            epoch_bar.set_postfix(val_acc=f"{row['val_accuracy']:.3f}" if row else "-", best=state.best_epoch,
                                  stopped=f"early at {epoch}/{epochs} (patience {recipe.patience})")
        if state.finished:
            break
    epoch_bar.close()

    extra: dict[str, Any] = {"steps": state.step, "warmup_end_epoch": warm_end, "epochs_planned": epochs}
    if record_correctness:  # coreset scoring wants the final weights too (margins)
        extra["final_state"] = {k_: v.detach().cpu().clone() for k_, v in model.state_dict().items()}
        extra["true_margins"] = np.stack(state.true_margins) if state.true_margins else None
    model.load_state_dict(state.best_state)
    return TrainResult(
        history=_history_frame(state.history), best_epoch=state.best_epoch, best_metric=float(state.best_metric),
        best_state=state.best_state, stopped_early=state.stopped_early,
        seconds=float(state.seconds_before + elapsed), device=str(dev),
        correctness=np.stack(state.correctness) if record_correctness and state.correctness else None,
        correctness_indices=train_idx if record_correctness else None, resumed=state.resumed,
        extra=extra,
    )


@_pinned_cpu_threads
def seconds_per_step(model: nn.Module, loader: Any, recipe: str | Recipe = "paper_a",
                     n_steps: int = 12, device: str | torch.device = "auto", warmup: int = 2) -> float:
    """Measured seconds of one optimizer step of ``model`` on ``loader`` (batching included).

    ``warmup`` untimed steps first (allocator, kernels, the optimizer's state), then ``n_steps``
    timed ones, with the same thread pinning as :func:`train`. The model's weights change: pass
    a throwaway model.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an integer >= 0")
    recipe = get_recipe(recipe)
    dev = resolve_device(device)
    model.to(dev).train()
    optimizer = _make_optimizer(model, recipe)
    criterion = nn.CrossEntropyLoss()
    batches = iter(loader)
    t0, done = time.perf_counter(), 0
    for i in range(n_steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        try:
            x, y, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y, _ = next(batches)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dev):
            loss = criterion(model(x.to(dev)).float(), y.to(dev))
        loss.backward()
        if recipe.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        done += i >= warmup
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / max(1, done)


# --------------------------------------------------------------------------- reopening
#: Architecture options recorded in a trained folder's ``params.json`` (paper B's ablation).
ARCH_KEYS = ("depth", "filters", "kernel_size", "dropout")


def rebuilt(staged: Path, folder: Path) -> bool:
    """Whether ``staged`` holds a finished rebuild of the trained ``folder`` (same parameters)."""
    ckpt = staged / CHECKPOINT_DIR
    if not ((ckpt / "best.pt").is_file() and (ckpt / "last.pt").is_file() and (staged / "params.json").is_file()):
        return False

    def key(d: Path) -> str:
        info = read_run_json(d, "params.json")
        return params_hash(info.get("params", info))

    return key(staged) == key(folder) and bool(read_checkpoint(ckpt / "last.pt").get("finished"))


def checkpoint_source(folder: str | os.PathLike, staged: str | os.PathLike,
                      retrain: Callable[[], None] | None) -> Path:
    """Where a trained folder's ``best.pt`` is: the folder itself, else its staging folder.

    The staging folder is retrained first (``retrain``) when it holds no finished rebuild; the
    rebuild holds a lock on it, so two runs that need the same model at once (two workers of a
    study, or two UC Merced runs on one backbone) train it once: the second waits, then reads it.
    ``retrain`` None: a missing checkpoint is an error.
    """
    from filelock import FileLock

    folder, staged = Path(folder), Path(staged)
    if (folder / CHECKPOINT_DIR / "best.pt").is_file():
        return folder
    if rebuilt(staged, folder):
        return staged
    if retrain is None:
        raise FileNotFoundError(f"{folder / CHECKPOINT_DIR / 'best.pt'} is missing (checkpoints are not "
                                "committed); reopen it with rebuild=True to retrain it")
    staged.mkdir(parents=True, exist_ok=True)
    with FileLock(str(staged) + ".lock"):
        if not rebuilt(staged, folder):  # another process may have rebuilt it while we waited
            retrain()
    return staged


def load_checkpoint(folder: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The best model of a trained folder (``params.json`` + ``checkpoints/best.pt``) and its params.

    The engine half of reopening a run: it rebuilds the architecture from the recorded
    parameters (model name, classes, input bands, image size, ablation options) and loads the
    kept weights. Retraining a folder whose checkpoint is gone (checkpoints are not committed)
    is study knowledge: :func:`lcc_utils.trained.reopen_trained` does both.

    Raises:
        FileNotFoundError: no ``params.json`` or no ``checkpoints/best.pt`` in ``folder``.

    """
    from lcc_utils import models

    folder = Path(folder)
    pfile = folder / "params.json"
    if not pfile.is_file():
        raise FileNotFoundError(f"{folder}: no params.json (not a run folder)")
    from lcc_utils.runs import run_file_remedy

    info = read_json(pfile, run_file_remedy(folder))
    params = dict(info.get("params", info))
    best = folder / CHECKPOINT_DIR / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} is missing (checkpoints are not committed)")
    ckpt = read_checkpoint(best)
    num_classes = int(ckpt.get("num_classes") or len(params["classes"]))
    in_chans = int(params.get("in_chans") or ckpt.get("in_chans") or _first_conv_in_chans(ckpt["model"]))
    arch = {k: params[k] for k in ARCH_KEYS if k in params}
    net = models.create_model(params["model"], num_classes=num_classes, in_chans=in_chans,
                              image_size=params.get("image_size"), **arch)
    net.load_state_dict(ckpt["model"])
    return net.eval(), params


def _first_conv_in_chans(state: Mapping[str, torch.Tensor]) -> int:
    for v in state.values():
        if v.ndim == 4:
            return int(v.shape[1])
    raise ValueError("cannot infer in_chans: no convolution weights in the checkpoint")


def plot_learning_curves(history: pd.DataFrame, best_epoch: int | None = None, title: str = ""):
    """Loss and accuracy per epoch for training and validation, the kept epoch marked."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(history["epoch"], history[f"train_{key}"], "o-", label="train (augmented)")
        ax.plot(history["epoch"], history[f"val_{key}"], "s-", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
