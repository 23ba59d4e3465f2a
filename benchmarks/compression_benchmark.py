"""Benchmark paper A's compressed artefacts against the fp32 baseline on the CPU.

For the fp32 model (``torch.save(state_dict)``) and each compressed variant (``.lcc``
artefact): file size, save time, load time (read + decode + ``load_state_dict``) and CPU
inference latency per image, with every ratio taken against the fp32 baseline of the same
run. The compressed model is decoded to dense fp32 weights, so its latency is expected to
match fp32: the artefact saves storage and transfer, not compute (no sparse or int kernels).

Usage::

    .venv/bin/python benchmarks/compression_benchmark.py                    # ConvNeXt-Tiny, random init
    .venv/bin/python benchmarks/compression_benchmark.py --run runs/train/<run>  # a trained run

Prints the table and writes ``benchmarks/results/compression_benchmark.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcc_utils import compression as C  # noqa: E402
from lcc_utils.metrics import cpu_latency_per_patch  # noqa: E402

VARIANTS = [
    {"method": "fixed_prune", "level": 1.0, "scope": "global"},
    {"method": "fixed_prune", "level": 1.5, "scope": "global"},
    {"method": "fixed_quant", "bits": 8},
    {"method": "fixed_quant", "bits": 4},
    {"method": "fixed_quant", "bits": 1},
    {"method": "lap", "importance": "magnitude", "budget": 4.0},
    {"method": "laq", "importance": "magnitude", "budget": 9.0},
    {"method": "pq", "importance": "magnitude", "budget": 9.0, "sparsity": 0.5},
]


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str, int, int]:
    if args.run:
        from lcc_utils.trained import reopen_trained

        model, info = reopen_trained(args.run)  # retrained into cache/rerun/ if no checkpoint
        params = info["params"]
        in_chans = next(m for m in C.prunable_layers(model).values()).weight.shape[1]
        return model, f"{params['model']} ({args.run})", in_chans, int(params.get("image_size")
                                                                        or args.image_size)
    from lcc_utils.models import create_model

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, pretrained=False,
                         image_size=args.image_size).eval()
    return model, f"{args.model} (random init)", 3, args.image_size


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="convnext_tiny", help="lcc_utils.models name")
    ap.add_argument("--run", default="", help="trained run folder (uses checkpoints/best.pt)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less noise)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"
                                         / "compression_benchmark.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, label, in_chans, size = build_model(args)
    shape = (in_chans, size, size)
    importance = {"magnitude": C.layer_importance(model, "magnitude")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32_path = tmp / "fp32.pt"
        save_s, _ = timed(lambda: torch.save(model.state_dict(), fp32_path), args.repeats)

        def load_fp32():
            state = torch.load(fp32_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return model

        load_s, _ = timed(load_fp32, args.repeats)
        lat = cpu_latency_per_patch(model, shape, args.batch_size, args.repeats)
        base = {"size_bytes": fp32_path.stat().st_size, "save_s": save_s, "load_s": load_s,
                "latency_ms": lat}
        rows.append({"variant": "fp32", "cr_computed": 1.0, **base})
        for spec in VARIANTS:
            name = C.variant_name(spec)
            cmodel, report = C.apply_variant(model, spec, importance)
            path = tmp / f"{name}{C.ARTEFACT_SUFFIX}"
            save_s, _ = timed(partial(C.save_compressed, cmodel, report, path), args.repeats)
            load_s, loaded = timed(partial(C.load_compressed, path, model), args.repeats)
            lat = cpu_latency_per_patch(loaded, shape, args.batch_size, args.repeats)
            rows.append({"variant": name, "cr_computed": C.compression_ratio(report),
                         "size_bytes": path.stat().st_size, "save_s": save_s, "load_s": load_s,
                         "latency_ms": lat})
            print(f"  {name}: {rows[-1]['size_bytes'] / 1e6:.2f} MB", flush=True)
    df = pd.DataFrame(rows)
    df["cr_disk"] = base["size_bytes"] / df["size_bytes"]
    df["load_x"] = df["load_s"] / base["load_s"]
    df["latency_x"] = df["latency_ms"] / base["latency_ms"]
    df.insert(0, "model", label)
    df["image_size"], df["batch_size"], df["threads"] = size, args.batch_size, args.threads
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    df.to_csv(tmp_out, index=False)
    os.replace(tmp_out, out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["model"]).round(4).to_string(index=False))
    print(f"model: {label}; written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
