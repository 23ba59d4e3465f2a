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

import os
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


def checkpoint_folder(
    folder: str | os.PathLike, rebuild: bool = True, data_dir: str | os.PathLike | None = None
) -> Path:
    """The folder whose ``checkpoints/best.pt`` holds a trained folder's kept model.

    The trained folder itself on the machine that trained it, else its staging folder in the
    cache (:func:`staged_folder`), retrained there first (by the paper module that made it)
    when no finished rebuild is there (:func:`lcc_utils.training.checkpoint_source`).
    """
    d = Path(folder)
    staged = staged_folder(d)

    def retrain() -> None:
        if d.parent.name == "models":
            paper_b.retrain_model(d, data_dir=data_dir, out=staged.parent.parent)
        elif runs.read_run_json(d, "params.json").get("stage") == "train":
            paper_a.retrain_run(d, data_dir=data_dir, out=staged)
        else:
            raise ValueError(f"{d}: not a trained folder of notebook 04 or 06")

    return training.checkpoint_source(d, staged, retrain if rebuild else None)


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
