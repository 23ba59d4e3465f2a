"""Data-pipeline throughput: lcc's decode-once BatchLoader vs ImageFolder + PIL + DataLoader.

Every pipeline yields one training epoch's batches of the same seeded subset of EuroSAT RGB's
training split (the real tree); no model runs. The ratio of images/s (ours / baseline) in the
same run is the result: absolute numbers depend on the machine and on its other load.

What each side delivers, per image:

* **baseline** (``ImageFolder`` + PIL + ``DataLoader``, 0 or 2 worker processes): decode the
  JPEG, resize to the model's size, TrivialAugmentWide, float, normalise: a float32
  (B, 3, S, S) batch ready for the model.
* **lcc CPU path** (:class:`lcc_utils.data.BatchLoader`, ``device=None``, what a CPU run
  trains on): the same float32 batch, the same transforms (TrivialAugmentWide batched, at the
  smaller of stored and model size), from the decode-once memmap. Equal work but the decode.
* **lcc device path, CPU side** (``BatchLoader(device=...)``, what a CUDA run gets from
  :func:`lcc_utils.data.make_loaders`): the stored uint8 (B, 64, 64, 3) batch, read one batch
  ahead in a thread (into pinned memory on a CUDA machine). Resize, TrivialAugmentWide and
  normalisation are deferred to the GPU, so this row is the CPU's share of a GPU run, not
  equal work: on a CPU-only machine that work moves into the training step, and the CPU-path
  row is the ratio to read.

* **floor: one bilinear resize** (not a pipeline): the stored uint8 batch as float, resized to
  the model's size (channels-last, as the CPU path resizes), nothing else. The CPU path must do
  at least this; the baseline's rate over it bounds what any equal-work loader on one thread can
  reach against the baseline (at 224 px the upsample is most of the CPU path's time).

Threads: training pins torch to ``training.CPU_TRAIN_THREADS`` (1) threads, and DataLoader
workers run one thread each, so every pipeline here runs on one torch thread; one extra row
runs the CPU path at torch's default thread count. On a 2-core machine with one core busy
elsewhere, that pool of 2 threads waits at every op for the thread whose core is taken: that
row is the "64 px regression" of issue 25 (2.26x where a quiet machine gave 3.44x).

Allocator: each setting of ``--allocators`` runs in a process of its own (glibc reads its
settings at start), every pipeline and the baseline inside it: ``lcc`` is what every kernel lcc
starts gets (:data:`lcc_utils.runs.KERNEL_ENV`: freed blocks are reused, so a 38.5 MB float32
batch at 224 px is not page-faulted in again), ``system`` is glibc's default. The ratios to read
are within one allocator; the two allocators' rows side by side say what the setting buys.

Usage: python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--image-sizes 64 224]
       [--images 4096] [--batch-size 64] [--workers 0 2] [--repeats 3] [--allocators lcc system]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from lcc_utils import data, training
from lcc_utils.runs import KERNEL_ENV

COLUMNS = ["allocator", "image_size", "pipeline", "delivers", "torch_threads", "images_per_s", "lcc_cpu_path_vs_this",
           "lcc_device_path_cpu_side_vs_this"]


def baseline_loader(root: Path, indices: np.ndarray, image_size: int, batch_size: int, workers: int):
    tf = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True),
                     v2.TrivialAugmentWide(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return DataLoader(Subset(ds, indices.tolist()), batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=False)


class StoredBatches:
    """An epoch of the device path's CPU side: the stored uint8 batches, read ahead in a thread."""

    def __init__(self, loader: data.BatchLoader):
        self.loader = loader

    def __iter__(self):
        return self.loader.stored_batches()


class ResizeFloor:
    """The stored batches as float, resized to ``size``: the least work an equal-work loader does."""

    def __init__(self, loader: data.BatchLoader, size: int):
        self.loader, self.size = loader, size

    def __iter__(self):
        for host, idx in self.loader.stored_batches():
            x = host.permute(0, 3, 1, 2).float()  # the CPU path's memory layout (channels-last)
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=self.size < x.shape[-1],
                                  align_corners=False)
            yield x, idx


def timed(loader, repeats: int, threads: int) -> tuple[int, float]:
    """Images and seconds of the fastest of ``repeats`` epochs (the least disturbed by other load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = None
    try:
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            for batch in loader:
                n += len(batch[0])
            dt = time.perf_counter() - t0
            best = (n, dt) if best is None or dt < best[1] else best
    finally:
        torch.set_num_threads(previous)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--images", type=int, default=4096, help="images per epoch (a seeded subset of train)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                    help="DataLoader worker counts of the baseline (0 = the plain default DataLoader)")
    ap.add_argument("--repeats", type=int, default=3, help="epochs per pipeline; the fastest counts")
    ap.add_argument("--allocators", nargs="+", choices=["lcc", "system"], default=["lcc", "system"],
                    help="lcc: the malloc settings of lcc's kernels (KERNEL_ENV); system: glibc's defaults")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_pipeline.csv"))
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)  # set for the per-allocator processes
    args = ap.parse_args()
    if args.worker_out:
        rows, machine = measure(args)
        Path(args.worker_out).write_text(json.dumps({"rows": rows, "machine": machine}))
        return
    rows, machines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for allocator in args.allocators:
            env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
            if allocator == "lcc":
                env.update(KERNEL_ENV)
            print(f"allocator {allocator}: " + (", ".join(f"{k}={v}" for k, v in KERNEL_ENV.items())
                                                if allocator == "lcc" else "glibc defaults"), flush=True)
            res = Path(tmp) / f"{allocator}.json"
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker-out", str(res)], env=env,
                           check=True)
            got = json.loads(res.read_text())
            rows += [{"allocator": allocator, **r} for r in got["rows"]]
            machines.append(f"{allocator}: {got['machine']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {Path(__file__).name}", "", *(f"* {m}" for m in machines), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md').name}")


def measure(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Every pipeline at every size in this process: the rows and a line on the machine's load."""
    torch.manual_seed(0)
    one, default_threads = training.CPU_TRAIN_THREADS, torch.get_num_threads()

    ds = data.load_dataset("eurosat", args.data_dir)
    split = data.get_split(ds, seed=0)
    idx = np.sort(np.random.default_rng(0).choice(split.train, size=min(args.images, len(split.train)),
                                                  replace=False))
    load = os.getloadavg()[0]
    print(f"EuroSAT RGB, {len(idx)} training images per epoch, batch {args.batch_size}, best of {args.repeats}; "
          f"{os.cpu_count()} CPUs, torch default threads {default_threads}, load average before {load:.2f}")
    rows = []
    h, w = ds.images.shape[1:3]
    for size in args.image_sizes:
        common = dict(image_size=size, augment=True, mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD,
                      shuffle=True, seed=0)
        cpu_path = data.BatchLoader(ds.images, ds.labels, idx, args.batch_size, **common)
        device_path = data.BatchLoader(ds.images, ds.labels, idx, args.batch_size, device="cpu", **common)
        float_batch = f"float32 (B, 3, {size}, {size}), augmented, normalised"
        runs = [(f"ImageFolder+PIL DataLoader, {w} workers", float_batch + " (JPEG decoded per image)", one,
                 baseline_loader(ds.root, idx, size, args.batch_size, w)) for w in args.workers]
        runs += [("lcc BatchLoader, CPU path", float_batch, one, cpu_path),
                 ("lcc BatchLoader, CPU path, torch default threads", float_batch, default_threads, cpu_path),
                 ("lcc BatchLoader, device path, CPU side", f"uint8 (B, {h}, {w}, 3) stored pixels; resize, "
                  "augmentation, normalisation deferred to the device", one, StoredBatches(device_path)),
                 ("floor: one bilinear resize, nothing else", f"float32 (B, 3, {size}, {size}), neither augmented "
                  "nor normalised", one, ResizeFloor(device_path, size))]
        size_rows = []
        for name, delivers, threads, loader in runs:
            n, s = timed(loader, args.repeats, threads)
            size_rows.append({"image_size": size, "pipeline": name, "delivers": delivers, "torch_threads": threads,
                              "images_per_s": round(n / s, 1)})
            print(f"  {size:>3} px  {name:<50} {n / s:>9.1f} img/s", flush=True)
        ours = {r["pipeline"]: r["images_per_s"] for r in size_rows}
        for r in size_rows:
            r["lcc_cpu_path_vs_this"] = round(ours["lcc BatchLoader, CPU path"] / r["images_per_s"], 2)
            r["lcc_device_path_cpu_side_vs_this"] = round(
                ours["lcc BatchLoader, device path, CPU side"] / r["images_per_s"], 2)
        rows += size_rows
    machine = (f"{os.cpu_count()} CPUs, torch default threads {default_threads}, load average "
               f"{load:.2f} before and {os.getloadavg()[0]:.2f} after; {len(idx)} images per epoch, batch "
               f"{args.batch_size}, best of {args.repeats} epochs")
    print(machine, flush=True)
    return rows, machine


if __name__ == "__main__":
    main()
