"""Reopen a trained model from its run folder: the one way, for notebooks 05, 06 and 08.

A trained folder is a notebook-04 run (``runs/train/<run>``) or one network of a paper-B
evaluation run (``runs/evaluation/<run>/models/<key>``). Both hold ``params.json`` and, on the
machine that trained them, ``checkpoints/best.pt``. Checkpoints are not committed, so in a
fresh clone the folder is trained again from its ``params.json`` (deterministic on the CPU) by
the paper module that made it, into the folder's staging folder in the cache
(:func:`lcc_utils.runs.rerun_dir`, outside the tracked tree): a committed run folder is never
written into. This module sits above both paper modules, so neither paper module imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lcc_utils import paper_a, paper_b, runs, training
from lcc_utils.paths import project_root


def trained_folder(folder: str | os.PathLike, model: str = "lightweight_cnn") -> Path:
    """The folder holding the network: ``folder`` itself, or ``folder/models/<model>`` of a paper-B run."""
    folder = Path(folder)
    if not (folder / "params.json").is_file():
        raise FileNotFoundError(f"{folder}: no params.json (not a run folder)")
    if (folder / "models").is_dir():
        sub = folder / "models" / model
        if not sub.is_dir():
            have = sorted(p.name for p in (folder / "models").iterdir() if p.is_dir())
            raise FileNotFoundError(f"{folder} holds no network {model!r}; it has: {', '.join(have)}")
        return sub
    return folder


def staged_folder(folder: str | os.PathLike) -> Path:
    """Where a trained folder's rebuilt checkpoint lives: its run's staging folder in the cache.

    ``rerun_dir(<run>)`` for a notebook-04 run, ``rerun_dir(<run>)/models/<key>`` for one
    network of a paper-B run (:func:`paper_b.retrain_model` rebuilds it there).
    """
    d = Path(folder)
    if d.parent.name == "models":
        return runs.rerun_dir(d.parent.parent) / "models" / d.name
    return runs.rerun_dir(d)


def _rebuilt(staged: Path, folder: Path) -> bool:
    """Whether ``staged`` holds a completed rebuild of ``folder`` (same parameters, training finished)."""
    ckpt = staged / training.CHECKPOINT_DIR
    if not ((ckpt / "best.pt").is_file() and (ckpt / "last.pt").is_file() and (staged / "params.json").is_file()):
        return False

    def key(d: Path) -> str:
        info = runs.read_run_json(d, "params.json")
        return runs.params_hash(info.get("params", info))

    if key(staged) != key(folder):
        return False
    return bool(training.read_checkpoint(ckpt / "last.pt").get("finished"))


def checkpoint_folder(
    folder: str | os.PathLike, rebuild: bool = True, data_dir: str | os.PathLike | None = None
) -> Path:
    """The folder whose ``checkpoints/best.pt`` holds a trained folder's kept model.

    The trained folder itself on the machine that trained it, else its staging folder in the
    cache (:func:`staged_folder`), retrained there first when no finished rebuild is there.
    A rebuild holds a lock on the staging folder, so two runs that need the same model at the
    same time (two workers of one study) train it once: the second waits, then reads it.
    """
    from filelock import FileLock

    d = Path(folder)
    if (d / training.CHECKPOINT_DIR / "best.pt").is_file():
        return d
    staged = staged_folder(d)
    if _rebuilt(staged, d):
        return staged
    if not rebuild:
        raise FileNotFoundError(f"{d / training.CHECKPOINT_DIR / 'best.pt'} is missing (checkpoints are "
                                "not committed); reopen_trained(..., rebuild=True) retrains it")
    staged.mkdir(parents=True, exist_ok=True)
    with FileLock(str(staged) + ".lock"):
        if not _rebuilt(staged, d):  # another process may have rebuilt it while we waited
            if d.parent.name == "models":
                paper_b.retrain_model(d, data_dir=data_dir, out=staged.parent.parent)
            elif runs.read_run_json(d, "params.json").get("stage") == "train":
                paper_a.retrain_run(d, data_dir=data_dir, out=staged)
            else:
                raise ValueError(f"{d}: not a trained folder of notebook 04 or 06")
    return staged


def reopen_trained(
    folder: str | os.PathLike,
    model: str = "lightweight_cnn",
    rebuild: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The kept (best-validation) model of a trained folder, retrained first if its checkpoint is gone.

    The checkpoint is read from the folder (the machine that trained it), else from the
    folder's staging folder in the cache (:func:`staged_folder`), where a rebuild writes: the
    trained folder itself is only read.

    Args:
        folder: A ``runs/train/...`` run, a ``runs/evaluation/...`` run (then ``model`` picks
            the network) or a ``models/<key>`` folder.
        model: The network of a paper-B evaluation run.
        rebuild: Retrain when no checkpoint exists (else raise).
        data_dir: Data root of a retraining (default: the run's, else ``LCC_DATA_DIR``).

    Returns:
        ``(model in eval mode on the CPU, info)`` with ``info["params"]`` (the folder's
        parameters), ``info["source"]`` (the folder, relative to the project) and, for paper-B networks,
        ``info["normalization"]`` (bands, train mean / std, classes the model expects).

    """
    d = trained_folder(folder, model)
    net, params = training.load_checkpoint(checkpoint_folder(d, rebuild=rebuild, data_dir=data_dir))
    # relative to the project, or runs/... for a runs folder elsewhere (the tests' temporary
    # roots): no machine's path in a metric; a folder outside both stays as given
    inside = any(d.resolve().is_relative_to(r.resolve()) for r in (runs.runs_root(), project_root()))
    info: dict[str, Any] = {"params": params, "source": runs.shown_path(d) if inside else str(d)}
    # a rebuilt paper-B network writes its normalization beside its checkpoint, in the cache
    for src in (d, checkpoint_folder(d, rebuild=False)):
        if (src / "normalization.json").is_file():
            info["normalization"] = runs.read_run_json(src, "normalization.json")
            break
    return net, info


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
    ckpt = checkpoint_folder(folder, data_dir=data_dir) / training.CHECKPOINT_DIR / "best.pt"
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
