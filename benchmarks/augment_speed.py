"""TrivialAugmentWide: our batched implementation vs torchvision's per-image v2 transform.

Times one batch of random uint8 RGB images at several sizes with both implementations (one
thread, as training runs), after a warm-up, and reports the ratio per size in the same run.
:class:`lcc_utils.data.BatchLoader` augments at the smaller of the native and the model's size
and picks the faster implementation for that size (``data.TAW_BATCHED_MAX_SIZE``); this
script is the measurement behind that threshold. Writes
``benchmarks/results/augment_speed.csv``.

    .venv/bin/python benchmarks/augment_speed.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

from lcc_utils.augment import trivial_augment_wide
from lcc_utils.data import TAW_BATCHED_MAX_SIZE


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224, 256])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    per_image = v2.TrivialAugmentWide()
    rows = []
    for size in args.sizes:
        x = torch.from_numpy(rng.integers(0, 256, (args.batch_size, 3, size, size), dtype=np.uint8))
        batched = best_of(lambda x=x: trivial_augment_wide(x, np.random.default_rng(1)), args.repeats)
        looped = best_of(lambda x=x: torch.stack([per_image(img) for img in x]), args.repeats)
        rows.append({"size": size, "batch": args.batch_size, "batched_ms": 1000 * batched,
                     "torchvision_per_image_ms": 1000 * looped,
                     "batched_speedup": looped / batched,
                     "used": "batched" if size <= TAW_BATCHED_MAX_SIZE else "torchvision"})
    df = pd.DataFrame(rows)
    print(df.round(2).to_string(index=False))
    out = Path(__file__).parent / "results" / "augment_speed.csv"
    df.round(3).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
