"""Training throughput (images/s) of every model on this machine, relative to a baseline.

One forward + backward + AdamW step per batch on random inputs (the data pipeline is not
timed), after warm-up steps. Prints a table and writes
``benchmarks/results/train_throughput_<device>_<size>px.csv``.

    .venv/bin/python benchmarks/train_throughput.py --image-size 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from lcc_utils.models import MODELS, count_parameters, create_model
from lcc_utils.training import resolve_device, seed_everything


def throughput(name: str, image_size: int, batch_size: int, steps: int, warmup: int,
               device: torch.device, in_chans: int, num_classes: int) -> dict:
    seed_everything(0)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans,
                         image_size=image_size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    x = torch.randn(batch_size, in_chans, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"model": name, "params_m": count_parameters(model) / 1e6,
            "images_per_s": steps * batch_size / sec, "sec_per_step": sec / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=sorted(MODELS))
    ap.add_argument("--baseline", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    names = list(dict.fromkeys([args.baseline, *args.models]))
    rows = []
    for name in names:
        r = throughput(name, args.image_size, args.batch_size, args.steps, args.warmup, device,
                       args.in_chans, args.num_classes)
        rows.append(r)
        print(f"{name:18s} {r['images_per_s']:8.1f} img/s", flush=True)
    df = pd.DataFrame(rows)
    base = df.loc[df["model"] == args.baseline, "images_per_s"].iloc[0]
    df["relative_to_" + args.baseline] = df["images_per_s"] / base
    df["image_size"], df["batch_size"], df["device"] = args.image_size, args.batch_size, str(device)
    df["threads"] = torch.get_num_threads()
    # the machine is shared: the 1-minute load average says how contended the numbers are
    df["load_avg_1min"] = os.getloadavg()[0]
    df["cpu"] = platform.processor() or platform.machine()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_throughput_{device.type}_{args.image_size}px.csv"
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, float_format="%.4g")
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
