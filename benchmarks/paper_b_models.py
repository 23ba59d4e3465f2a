"""Cost of paper B's models: parameters, FLOPs and CPU milliseconds per 6x32x32 patch.

LightweightCNN ablation variants A1-A4 and ResNet-18 (6-band stem), untrained
(weights do not change the cost), measured in ONE process so the CPU times are
comparable; each row also gives its ratio to ResNet-18.

Usage:
    python benchmarks/paper_b_models.py [--threads 1] [--batch 64] [--repeats 10]
                                        [--classes 2] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import pandas as pd
import torch

from lcc_utils import metrics, models
from lcc_utils.constants import PAPER_B_ABLATION, PAPER_B_BANDS


def benchmark(threads: int = 1, batch: int = 64, repeats: int = 10, classes: int = 2,
              size: int = 32) -> pd.DataFrame:
    torch.set_num_threads(threads)
    shape = (len(PAPER_B_BANDS), size, size)
    specs = [(f"LightweightCNN {v}", "lightweight_cnn", kw) for v, kw in PAPER_B_ABLATION.items()]
    specs.append(("ResNet-18", "resnet18", {}))
    rows = []
    for name, key, kw in specs:
        torch.manual_seed(0)
        net = models.create_model(key, num_classes=classes, in_chans=len(PAPER_B_BANDS), **kw)
        rows.append({
            "model": name,
            "params": models.count_parameters(net),
            "flops": metrics.count_flops(net, shape),
            "cpu_ms_per_patch": metrics.cpu_latency_per_patch(net, shape, batch_size=batch,
                                                              repeats=repeats, warmup=2),
        })
    df = pd.DataFrame(rows).set_index("model")
    ref = df.loc["ResNet-18"]
    for c in ("params", "flops", "cpu_ms_per_patch"):
        df[f"{c}_vs_resnet18"] = df[c] / ref[c]
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batch", type=int, default=64, help="patches per timed forward pass")
    ap.add_argument("--repeats", type=int, default=10, help="timed passes (median is reported)")
    ap.add_argument("--classes", type=int, default=2, help="output classes (2: binary task)")
    ap.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    df = benchmark(args.threads, args.batch, args.repeats, args.classes)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), batch {args.batch}, median of {args.repeats} passes, "
          f"{os.cpu_count()} CPUs visible (timings are noisy on a shared machine)")
    with pd.option_context("display.width", 200):
        print(df.round(4).to_string())
    if args.csv:
        tmp = args.csv + ".tmp"
        df.to_csv(tmp)
        os.replace(tmp, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
