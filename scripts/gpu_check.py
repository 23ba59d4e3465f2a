"""First check on a GPU (issue 25): ConvNeXt-T with recipe ``paper_a`` at 224 px, then a Table 1 slice.

Two segments, no network and no pretrained weights (random initialisation throughout):

1. **throughput**: ``--steps`` optimizer steps of ConvNeXt-T on UC Merced's training split
   through the study's own loader (:func:`lcc_utils.data.make_loaders`: on CUDA its device path,
   uint8 batches pinned and copied non-blocking, TrivialAugmentWide, resize and normalisation on
   the GPU) and the training loop's own step (:func:`lcc_utils.training.training_step`: the
   recipe's optimizer and loss, bf16 autocast, channels_last);
2. **table1**: a slice of paper A's Table 1 made by the code of notebook 04
   (:func:`lcc_utils.paper_a.prepare_training` + :func:`lcc_utils.training.train`): UC Merced,
   random / forgetting / margin coresets at 5 % and 10 % (scores by ConvNeXt-T itself as the
   proxy at 112 px, as the paper profile does) and full data, seed 0, ``--epochs`` epochs.

Every row records images/s, the share of the time the GPU was busy (sampled every 0.2 s with
``torch.cuda.utilization()`` or ``nvidia-smi``; NaN where neither answers), the seconds the
training loop waited for its next batch (loader stall), and the peak GPU memory, in
``benchmarks/results/gpu_check_<device>.csv``: a first look at whether the 224-px pipeline keeps
the GPU busy, before the paper profile's hours. Not yet timed on a GPU: from its FLOPs
(``docs/gpu_costs.md``) the check should take a few minutes of its eight on an H100/H200, most
of it the full-data run and the CPU-side loader; ``--steps`` and ``--epochs`` shorten it.

``--dry-run`` runs the same code on the CPU at toy size (32 px, 3 steps, one epoch), into
``gpu_check_dry_run.csv``: what CI runs (``tests/test_gpu_check.py``).

Usage: ``python scripts/gpu_check.py [--data-dir DIR] [--dry-run]`` (``make gpu-check``).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lcc_utils import coresets, data, models, paper_a, training  # noqa: E402

MODEL = "convnext_tiny"
#: The Table 1 slice: (coreset, fraction); fraction 1.0 is the full-data row.
SLICE = [(c, f) for c in ("random", "forgetting", "margin") for f in (0.05, 0.1)] + [("random", 1.0)]
COLUMNS = ["segment", "device", "image_size", "batch_size", "steps", "images", "seconds", "images_per_s",
           "gpu_busy_share", "loader_stall_s", "peak_gpu_mem_gb", "test_accuracy"]


class GpuBusy:
    """Samples the GPU's utilisation in a background thread: the share of samples it was busy.

    ``torch.cuda.utilization()`` (needs pynvml), else ``nvidia-smi``; on the CPU, or when
    neither answers, the share is NaN.
    """

    def __init__(self, device: torch.device, every_s: float = 0.2):
        self.device, self.every_s = device, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no pynvml: ask nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      f"--id={self.device.index or 0}"], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return None
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            s = self._sample()
            if s is None:
                return
            self.samples.append(s)

    def __enter__(self) -> GpuBusy:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def share(self) -> float:
        """Mean sampled utilisation as a share in [0, 1] (NaN: no samples)."""
        return sum(self.samples) / (100.0 * len(self.samples)) if self.samples else math.nan


class StallTimer:
    """A batch loader whose iteration also adds up the seconds spent waiting for each batch."""

    def __init__(self, loader):
        self.loader, self.stall_s, self.batches = loader, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.stall_s += time.perf_counter() - t0
            self.batches += 1
            yield batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else math.nan


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def throughput_segment(ds, split, image_size: int, steps: int, warmup: int, device: torch.device) -> dict:
    """``steps`` timed optimizer steps of ConvNeXt-T under recipe paper_a (after ``warmup``)."""
    rec = training.get_recipe("paper_a")
    # the study's loaders for this device: on CUDA the device path (uint8 pinned, non-blocking
    # copies, TrivialAugmentWide / resize / normalisation on the GPU), on the CPU the CPU path
    loader = data.make_loaders(ds, split, image_size=image_size, batch_size=rec.batch_size, seed=0,
                               augment=rec.augment, device=device)["train"]
    training.seed_everything(0)
    net = models.create_model(MODEL, num_classes=len(ds.classes), in_chans=3, pretrained=False,
                              image_size=image_size)
    # the training loop's own parts: channels-last, bf16 autocast, the recipe's loss, clipping, schedule
    trainer = training.make_trainer(net, rec, device, epochs=rec.max_epochs, steps_per_epoch=len(loader),
                                    total_steps=rec.max_epochs * len(loader),
                                    class_weight=training.class_weights(loader.labels, len(ds.classes)))
    net.train()

    def batches():
        epoch = 0
        while True:
            epoch += 1
            loader.set_epoch(epoch)
            yield from loader

    it, stall, done = batches(), 0.0, 0
    _reset_peak(device)
    with GpuBusy(device) as busy:
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t0, stall, busy.samples = time.perf_counter(), 0.0, []
            w = time.perf_counter()
            x, y, _ = next(it)
            stall += time.perf_counter() - w
            training.training_step(trainer, x, y.to(device, non_blocking=True))
            done += len(y) if i >= warmup else 0
        _sync(device)
        seconds = time.perf_counter() - t0
    return {"segment": "throughput", "steps": steps, "images": done, "seconds": round(seconds, 2),
            "images_per_s": round(done / seconds, 1), "gpu_busy_share": round(busy.share, 3),
            "loader_stall_s": round(stall, 2), "peak_gpu_mem_gb": _peak_gb(device), "test_accuracy": math.nan,
            "batch_size": rec.batch_size}


def table1_row(coreset: str, fraction: float, args, device: torch.device) -> dict:
    """One Table 1 cell trained as notebook 04 trains it (UC Merced, seed 0)."""
    setup = paper_a.prepare_training(
        dataset="ucmerced", data_dir=args.data_dir or "", model=MODEL, coreset=coreset, fraction=fraction,
        seed=0, epochs=args.epochs, steps=0, image_size=args.image_size, batch_size=64, device=str(device),
        pretrained=False, weights="", backbone_run={}, recipe="paper_a", scoring_model=MODEL,
        scoring_epochs=args.scoring_epochs, scoring_image_size=args.scoring_image_size)
    loaders = dict(setup.loaders, train=StallTimer(setup.loaders["train"]))
    _reset_peak(device)
    with GpuBusy(device) as busy:
        t0 = time.perf_counter()
        result = training.train(setup.model, loaders, setup.recipe, **setup.budget, device=device, seed=0)
        _sync(device)
        seconds = time.perf_counter() - t0
    probs, y_true, _ = training.predict(setup.model, setup.loaders["test"], device)
    images = int(result.history["epoch"].max()) * len(setup.train_indices) if len(result.history) else 0
    return {"segment": f"table1 {coreset} {fraction:g}", "steps": int(result.extra.get("steps", 0)),
            "images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
            "gpu_busy_share": round(busy.share, 3), "loader_stall_s": round(loaders["train"].stall_s, 2),
            "peak_gpu_mem_gb": _peak_gb(device), "test_accuracy": round(float((probs.argmax(1) == y_true).mean()), 4),
            "batch_size": setup.recipe.batch_size}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``make gpu-check``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="data root holding UC Merced (default: the project's)")
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU at toy size (CI)")
    ap.add_argument("--image-size", type=int, default=None, help="pixels (default 224; dry run 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed throughput steps (default 300; dry run 3)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of each Table 1 run (default 10; dry run 1)")
    ap.add_argument("--out", default=None, help="CSV (default benchmarks/results/gpu_check_<device>.csv)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    args.image_size = args.image_size or (32 if dry else 224)
    args.steps = args.steps or (3 if dry else 300)
    args.epochs = args.epochs or (1 if dry else 10)
    args.scoring_epochs, args.scoring_image_size = (2, 32) if dry else (4, 112)
    if dry:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run for the CPU toy check", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    tag = "dry_run" if dry else name.replace("NVIDIA ", "").replace(" ", "_").lower()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu_check_{tag}.csv"

    t_start = time.perf_counter()
    ds = data.load_dataset("ucmerced", args.data_dir)
    split = data.get_split(ds, seed=0)
    print(f"gpu_check on {name}: {MODEL}, recipe paper_a, {args.image_size} px, UC Merced "
          f"({len(split.train)} training images); no pretrained weights", flush=True)
    rows = [throughput_segment(ds, split, args.image_size, args.steps, 1 if dry else 20, device)]
    print(f"  throughput: {rows[0]['images_per_s']} img/s, GPU busy {rows[0]['gpu_busy_share']}, "
          f"loader stall {rows[0]['loader_stall_s']} s of {rows[0]['seconds']} s", flush=True)
    # The proxy's scores once, as 04 computes them (same cache key), but without timing the target
    # against the proxy (coresets.target_training_seconds: 4 x 3 steps of each model, 45 s of the
    # 120-s dry run): the check reports no cost ratio, so 04's own call finds the scores cached.
    coresets.get_scores(ds, split, "forgetting", MODEL, args.scoring_epochs, args.scoring_image_size, seed=0,
                        device=str(device))
    for coreset, fraction in SLICE:
        rows.append(table1_row(coreset, fraction, args, device))
        r = rows[-1]
        print(f"  {r['segment']}: test accuracy {r['test_accuracy']}, {r['seconds']} s, "
              f"{r['images_per_s']} img/s, GPU busy {r['gpu_busy_share']}, stall {r['loader_stall_s']} s", flush=True)
    for r in rows:
        r.update(device=name, image_size=args.image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"gpu_check: {len(rows)} rows -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out.name} "
          f"in {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
