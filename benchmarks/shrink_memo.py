"""The CPU loader's shrink-once memo: a training step with it, relative to shrinking every batch.

Paper A's quick coreset runs train the plain CNN at 32 px on a few dozen to a few hundred real
images (UC Merced 256 px, EuroSAT 64 px) for 3000 optimizer steps. Augmentation happens at the
smaller size, so every batch was first shrunk from the stored size; the shrunk image does not
depend on the epoch, and :class:`lcc_utils.data.BatchLoader` now shrinks each image once and keeps
it. This script times what a run pays per optimizer step (the loader's batch plus forward,
backward and optimizer step of the plain CNN under the ``fair_cpu`` recipe, by
:func:`lcc_utils.training.seconds_per_step`, pinned to training's threads; its warm-up steps build
the memo) with the memo and with it switched off, on the quick profile's coreset sizes,
alternating the two in one process. The ratio (anew / memo) is the result; the seconds depend on
the machine and its other load. It also checks that both give bit-identical batches (else the
ratio would compare different work).

Writes ``benchmarks/results/shrink_memo.csv``.

    .venv/bin/python benchmarks/shrink_memo.py [--data-dir ../shared/data] [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lcc_utils import data
from lcc_utils.models import create_model
from lcc_utils.training import seconds_per_step, seed_everything

RESULTS = Path(__file__).resolve().parent / "results" / "shrink_memo.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("LCC_DATA_DIR", "../shared/data"))
    ap.add_argument("--steps", type=int, default=60, help="timed optimizer steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name in ("ucmerced", "eurosat"):
        ds = data.load_dataset(name, args.data_dir)
        split = data.get_split(ds, seed=0)
        for fraction in (0.05, 0.1):
            n = max(1, round(fraction * len(split.train)))
            coreset = np.random.default_rng(0).choice(split.train, n, replace=False)
            loaders = {}
            for memo in (True, False):
                loaders[memo] = data.make_loaders(ds, split, 32, 64, seed=0, train_indices=coreset)["train"]
                loaders[memo]._memo_on = memo
            for (xa, _, _), (xb, _, _) in zip(loaders[True], loaders[False], strict=True):
                assert torch.equal(xa, xb) and xa.stride() == xb.stride(), "memo and anew batches differ"
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for memo in (True, False):
                    seed_everything(0)
                    model = create_model("plain_cnn", num_classes=len(ds.classes), in_chans=3, image_size=32).train()
                    # warm-up steps build the memo (once per run, as on a run's first epoch)
                    times[memo].append(seconds_per_step(model, loaders[memo], "fair_cpu", n_steps=args.steps,
                                                        device="cpu", warmup=2))
            best = {m: min(t) for m, t in times.items()}
            rows.append({"dataset": name, "fraction": fraction, "coreset_images": n,
                         "stored_px": ds.images.shape[1], "sec_per_step_memo": round(best[True], 4),
                         "sec_per_step_anew": round(best[False], 4),
                         "speedup_anew_over_memo": round(best[False] / best[True], 3),
                         "steps": args.steps, "repeats": args.repeats, "threads": 1,
                         "load_avg_1min": round(os.getloadavg()[0], 2), "cpu": platform.machine()})
            print(rows[-1], flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(RESULTS, index=False)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
