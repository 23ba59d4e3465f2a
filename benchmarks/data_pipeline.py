"""Data-pipeline throughput: lcc's decode-once BatchLoader vs ImageFolder + PIL + DataLoader.

Both pipelines produce one training epoch's worth of batches with the paper-A transforms
(resize, TrivialAugmentWide, normalisation) from the real EuroSAT RGB tree; no model runs.
The ratio of images/s (ours / baseline) is the result: absolute numbers depend on the machine.

Usage: python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--image-size 224]
       [--images 4096] [--batch-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from lcc_utils import data


def baseline_loader(root: Path, indices: np.ndarray, image_size: int, batch_size: int, workers: int):
    tf = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True),
                     v2.TrivialAugmentWide(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return DataLoader(Subset(ds, indices.tolist()), batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=False)


def timed(loader) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for batch in loader:
        n += len(batch[0])
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=4096, help="images per epoch (a seeded subset of train)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_pipeline.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    ds = data.load_dataset("eurosat", args.data_dir)
    load_s = time.perf_counter() - t0
    split = data.get_split(ds, seed=0)
    idx = np.sort(np.random.default_rng(0).choice(split.train, size=min(args.images, len(split.train)),
                                                  replace=False))
    ours = data.BatchLoader(ds.images, ds.labels, idx, args.batch_size, image_size=args.image_size, augment=True,
                            mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD, shuffle=True, seed=0)
    base = baseline_loader(ds.root, idx, args.image_size, args.batch_size, args.workers)
    rows = []
    for name, loader in (("ImageFolder+PIL DataLoader", base), ("lcc BatchLoader (decode-once memmap)", ours)):
        n, s = timed(loader)
        rows.append({"pipeline": name, "images": n, "seconds": round(s, 2), "images_per_s": round(n / s, 1)})
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    for r in rows:
        r["ratio_vs_baseline"] = round(r["images_per_s"] / rows[0]["images_per_s"], 2)
    print(f"EuroSAT RGB, {len(idx)} training images, resize to {args.image_size}, TrivialAugmentWide, "
          f"batch {args.batch_size}, baseline workers {args.workers}, torch threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"(dataset load from the decode cache: {load_s:.1f} s)")
    for r in rows:
        print(f"  {r['pipeline']:<38} {r['images_per_s']:>9.1f} img/s  ({r['ratio_vs_baseline']:.2f}x)")
    print(f"ratio (lcc / ImageFolder+PIL): {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["image_size", "batch_size", "workers"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "image_size": args.image_size, "batch_size": args.batch_size, "workers": args.workers})


if __name__ == "__main__":
    main()
