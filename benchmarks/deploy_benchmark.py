"""Does a compressed model run faster on this CPU? fp32 against int8, in one run.

Loads a trained notebook-04 run (default: the full-data EuroSAT plain CNN at 96.8 %), exports
it to int8 (:func:`lcc_utils.compression.export_int8`, x86 kernels, calibrated on 8 training
batches) and measures, on the same EuroSAT test images and in the same process:

* latency per image at batch 1 (median over ``--b1-images`` single images) and at batch 64
  (median batch time / 64), and throughput (images/s at batch 64);
* peak memory: the rise of the peak RSS while a fresh subprocess (torch already imported, peak
  reset through ``/proc/self/clear_refs``) loads the form from its file and classifies one
  batch of 64 (``VmHWM`` after minus ``VmRSS`` before; Linux only);
* file size and test accuracy (the whole test split).

Forms: ``fp32`` (eager PyTorch, how notebooks run it), ``fp32-ts`` (the same traced and
frozen with TorchScript: the fair fp32 baseline of a frozen int8 graph), ``lcc`` (the packed
``.lcc`` storage artefact decoded back to fp32: smaller file, same speed) and ``int8``.
Timing forms alternate round by round so that load from other processes hits all of them.

    LCC_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/deploy_benchmark.py \\
        --out benchmarks/results/deploy_benchmark.csv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lcc_utils import compression as C
from lcc_utils import paper_a, trained

RUN = "runs/train/eurosat-plain-cnn-random-1.0-0-306d86f6"

_MEMORY_CHILD = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS")
kind, path = sys.argv[1], sys.argv[2]
if kind in ("int8", "fp32-ts"):
    torch.backends.quantized.engine = "x86"
    m = torch.jit.load(path)
else:
    m = torch.load(path, weights_only=False)
m.eval()
with torch.no_grad():
    m(torch.randn(64, 3, int(sys.argv[4]), int(sys.argv[4])))
print(json.dumps({"peak_mb": status("VmHWM") - base}))
"""


def _accuracy(model, loader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y, *_ in loader:
            correct += int((model(x).argmax(1) == torch.as_tensor(y)).sum())
            total += len(x)
    return 100.0 * correct / total


def _peak_mb(kind: str, path: Path, threads: int, size: int) -> float:
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, kind, str(path), str(threads),
                          str(size)], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=RUN, help="notebook-04 run folder to deploy")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--b1-images", type=int, default=100, help="single images per round")
    ap.add_argument("--b64-batches", type=int, default=4, help="batches of 64 per round")
    ap.add_argument("--out", default="", help="CSV to write (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = trained.reopen_trained(args.run)
    setup = paper_a.prepare_compression(args.run, model)
    test = [(x, y) for x, y, *_ in setup.loaders["test"]]
    size = int(test[0][0].shape[-1])
    tmp = Path(tempfile.mkdtemp(prefix="deploy-"))
    forms, files = {}, {}
    fp32 = setup.model.eval()
    forms["fp32"], files["fp32"] = fp32, tmp / "fp32.pt"
    torch.save(fp32, files["fp32"])
    with torch.no_grad():
        ts = torch.jit.freeze(torch.jit.trace(fp32, test[0][0][:1]))
    forms["fp32-ts"], files["fp32-ts"] = ts, tmp / "fp32-ts.pt"
    torch.jit.save(ts, str(files["fp32-ts"]))
    q8, rep8 = C.quantize(fp32, 8, "channel", "2^b-1")
    files["lcc"] = C.save_compressed(q8, rep8, tmp / "q8.lcc", model_name=setup.model_name)
    forms["lcc"] = C.load_compressed(files["lcc"], fp32)
    t0 = time.perf_counter()
    int8 = C.export_int8(fp32, setup.loaders["train"], num_batches=8)
    export_s = time.perf_counter() - t0
    files["int8"] = C.save_int8(int8, tmp / "int8.pt")
    forms["int8"] = C.load_int8(files["int8"])
    singles = torch.cat([x for x, _ in test])[: args.b1_images]
    b64 = [x for x, _ in test if len(x) == 64][: args.b64_batches]
    lat1 = {k: [] for k in forms}
    lat64 = {k: [] for k in forms}
    with torch.no_grad():
        for f in forms.values():  # warm-up
            f(singles[:1])
            f(b64[0])
        for _ in range(args.rounds):
            for k, f in forms.items():
                for i in range(len(singles)):
                    t = time.perf_counter()
                    f(singles[i:i + 1])
                    lat1[k].append(time.perf_counter() - t)
                for x in b64:
                    t = time.perf_counter()
                    f(x)
                    lat64[k].append(time.perf_counter() - t)
    rows = []
    for k, f in forms.items():
        per64 = float(np.median(lat64[k])) / 64
        rows.append({
            "form": k, "accuracy": _accuracy(f, test), "n_test": sum(len(y) for _, y in test),
            "latency_b1_ms": 1000 * float(np.median(lat1[k])),
            "latency_b64_ms_per_image": 1000 * per64, "throughput_img_s": 1.0 / per64,
            "peak_mb": _peak_mb("int8" if k == "int8" else "fp32-ts" if k == "fp32-ts"
                                else "fp32", files[k] if k != "lcc" else files["fp32"],
                                args.threads, size),
            "file_bytes": files[k].stat().st_size,
        })
    df = pd.DataFrame(rows)
    for ref in ("fp32", "fp32-ts"):
        r = df.set_index("form").loc[ref]
        df[f"speedup_b1_vs_{ref}"] = r["latency_b1_ms"] / df["latency_b1_ms"]
        df[f"throughput_x_vs_{ref}"] = df["throughput_img_s"] / r["throughput_img_s"]
    df["accuracy_drop_vs_fp32"] = df.loc[df["form"] == "fp32", "accuracy"].item() - df["accuracy"]
    df["threads"], df["image_size"], df["run"] = args.threads, size, Path(args.run).name
    df["int8_export_s"] = export_s
    df["torch"], df["machine"] = torch.__version__, _cpu_name()
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(3).to_string(index=False))
    if args.out:
        df.round(4).to_csv(args.out, index=False)
        print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
