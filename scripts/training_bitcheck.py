"""Bit-identity check of the training loop on the CPU: short trainings saved, then compared exactly.

Used when ``training.train`` was split into its parts (issue 25): run ``save`` on the code before
a change and on the code after it, then ``compare`` the two folders. Six short runs on the real
EuroSAT RGB and UC Merced data (``LCC_DATA_DIR``) and on synthetic float data cover the loop's
branches: TrivialAugmentWide at 32/64 px, dihedral at 48 px, UC Merced at 160 px (torchvision's
per-image TrivialAugmentWide), ``record_correctness``, a patience stop, a step budget with
``val_every=2``, an interrupted and resumed run, paper B's L2 on float data. Everything a run
produces is compared with ``torch.equal`` / exact frames: history (but its seconds), kept and
final model states, ``best.pt`` and ``last.pt`` (model, optimiser, scheduler, period, RNG),
correctness and margins. About 15 s.

    git worktree add ../old <commit> && cp scripts/training_bitcheck.py ../old/scripts/
    python ../old/scripts/training_bitcheck.py save /tmp/before   # imports the old checkout's lcc_utils
    python scripts/training_bitcheck.py save /tmp/after
    python scripts/training_bitcheck.py compare /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lcc_utils import data, models, training  # noqa: E402

TINY = training.Recipe(name="tiny", optimizer="adamw", lr=5e-3, weight_decay=0.01, grad_clip=1.0, warmup_epochs=1,
                       schedule="cosine", max_epochs=4, patience=1, monitor="val_accuracy", class_weighted=True,
                       batch_size=16)


class Interrupted(Exception):
    """Raised from ``on_epoch_end`` to cut a run short (a killed kernel, as far as the run knows)."""


def image_loaders(ds, n: int, size: int, augment: str, batch_size: int = 16) -> tuple[dict, int]:
    rng = np.random.default_rng(1)
    split = data.get_split(ds, seed=0)
    tr = np.sort(rng.choice(split.train, n, replace=False))
    va = np.sort(rng.choice(split.val, 48, replace=False))
    mean, std = data.normalization(ds, split)
    common = dict(image_size=size, mean=mean, std=std)
    return {"train": data.BatchLoader(ds.images, ds.labels, tr, batch_size, augment=augment, shuffle=True, seed=0,
                                      **common),
            "val": data.BatchLoader(ds.images, ds.labels, va, batch_size, **common)}, len(ds.classes)


def float_loaders() -> tuple[dict, int]:
    rng = np.random.default_rng(0)
    labels = np.arange(96) % 3
    images = rng.normal(0, 1, (96, 16, 16, 4)).astype(np.float32)
    images[..., 0] += labels[:, None, None]
    return {"train": data.BatchLoader(images, labels, np.arange(64), 16, augment=True, shuffle=True, seed=3),
            "val": data.BatchLoader(images, labels, np.arange(64, 96), 16)}, 3


def run(out: Path, name: str, loaders: dict, k: int, recipe, in_chans: int = 3, interrupt: int | None = None,
        **kw) -> None:
    """Train a small CNN on ``loaders`` into a temporary run folder; pickle what it produced."""
    def build():
        training.seed_everything(0)
        return models.create_model("lightweight_cnn", num_classes=k, in_chans=in_chans, depth=2, filters=(4, 8))

    net, folder = build(), Path(tempfile.mkdtemp())
    try:
        if interrupt:
            def stop(epoch, row):
                if epoch == interrupt:
                    raise Interrupted
            try:
                training.train(net, loaders, recipe, device="cpu", run_dir=folder, on_epoch_end=stop, **kw)
            except Interrupted:
                pass
            training.seed_everything(123)  # a resumed run must not depend on the RNG state around it
            net = build()
        res = training.train(net, loaders, recipe, device="cpu", run_dir=folder, **kw)
        last = torch.load(folder / "checkpoints" / "last.pt", weights_only=False)
        best = torch.load(folder / "checkpoints" / "best.pt", weights_only=False)
    finally:
        shutil.rmtree(folder)
    blob = {"history": res.history.drop(columns=["seconds"]), "best_epoch": res.best_epoch,
            "best_metric": res.best_metric, "best_state": res.best_state, "stopped_early": res.stopped_early,
            "correctness": res.correctness, "extra": dict(res.extra), "model": net.state_dict(),
            "last_model": last["model"], "last_opt": last["optimizer"], "last_sched": last["scheduler"],
            "last_period": last["period"], "last_step": last["step"],
            "last_hist": [{c: v for c, v in r.items() if c != "seconds"} for r in last["history"]],
            "last_rng_torch": last["rng"]["torch"], "best_ckpt": best["model"], "best_ckpt_epoch": best["epoch"]}
    with open(out / f"{name}.pkl", "wb") as f:
        pickle.dump(blob, f)
    print(f"{name}: best epoch {res.best_epoch} ({res.best_metric:.6f}), {res.extra['steps']} steps, "
          f"stopped early {res.stopped_early}", flush=True)


def save(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    eurosat, ucmerced = data.load_dataset("eurosat"), data.load_dataset("ucmerced")
    run(out, "eurosat32_paper_a_correctness", *image_loaders(eurosat, 160, 32, "trivial"), "paper_a", epochs=3,
        record_correctness=True)
    run(out, "eurosat64_patience_stop", *image_loaders(eurosat, 160, 64, "trivial"), TINY, epochs=4)
    run(out, "eurosat48_fair_cpu_steps", *image_loaders(eurosat, 160, 48, "dihedral"), "fair_cpu", steps=23,
        val_every=2, record_correctness=True)
    run(out, "eurosat32_interrupted_resumed", *image_loaders(eurosat, 160, 32, "trivial"), "paper_a", epochs=3,
        interrupt=2, record_correctness=True)
    run(out, "ucmerced160_torchvision_taw", *image_loaders(ucmerced, 48, 160, "trivial"),
        dataclasses.replace(training.get_recipe("paper_a"), class_weighted=False), epochs=2)
    run(out, "float_paper_b_l2", *float_loaders(), "paper_b", in_chans=4, epochs=5)


def equal(a, b, path: str = "") -> None:
    """Raise AssertionError naming the first value that differs by as much as one bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, rtol=0, atol=0, obj=path)
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            equal(u, v, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), (path, a, b)  # NaN equals NaN here


def compare(a: Path, b: Path) -> int:
    names = sorted(p.name for p in a.glob("*.pkl"))
    if not names or sorted(p.name for p in b.glob("*.pkl")) != names:
        print(f"{a} and {b} do not hold the same runs")
        return 1
    for name in names:
        with open(a / name, "rb") as fa, open(b / name, "rb") as fb:
            equal(pickle.load(fa), pickle.load(fb), name[:-4])
        print(f"bit-identical: {name[:-4]}")
    print(f"{len(names)} runs bit-identical")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("save").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "save":
        save(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
