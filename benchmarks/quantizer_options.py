"""Which quantizer reproduces paper A's pattern? Accuracy of every scale x grid x bit-width.

Paper A: 1-4 bit post-training quantization at chance, 8 bit lossless. For a trained run
(default: the full-data EuroSAT plain CNN), fixed-bit quantization at 1-8 bits with per-tensor
and per-channel scales on the 2^b-1 and 2^b grids, plus the paper's four pruning levels,
evaluated on a seeded sample of test images; both CRs on every row.

    LCC_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/quantizer_options.py \\
        --out benchmarks/results/quantizer_options.csv
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from lcc_utils import compression as C
from lcc_utils import paper_a, trained
from lcc_utils.compression.variants import _cached_batches, _predicted_labels

RUN = "runs/train/eurosat-plain-cnn-random-1.0-0-306d86f6"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=RUN, help="notebook-04 run folder")
    ap.add_argument("--test-images", type=int, default=2000, help="seeded test sample; 0: all")
    ap.add_argument("--out", default="", help="CSV to write")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = trained.reopen_trained(args.run)
    setup = paper_a.prepare_compression(args.run, model, max_test_images=args.test_images)
    loader = _cached_batches(setup.loaders["test"])

    def accuracy(m: torch.nn.Module) -> float:
        pred, y = _predicted_labels(m, loader, progress=False)
        return 100.0 * float((pred == y).mean())

    rows = [{"method": "fp32", "accuracy": accuracy(setup.model), "cr_paper": 1.0, "cr": 1.0}]
    for g in C.GRANULARITIES:
        for lv in C.LEVELS:
            for b in range(1, 9):
                qm, rep = C.quantize(setup.model, b, g, lv)
                rows.append({"method": "fixed_quant", "granularity": g, "levels": lv, "bits": b,
                             "accuracy": accuracy(qm), "cr_paper": C.paper_compression_ratio(rep),
                             "cr": C.compression_ratio(rep), "sparsity": rep.sparsity})
    for level in (0.25, 0.5, 1.0, 1.5):
        pm, rep = C.prune_by_level(setup.model, level)
        rows.append({"method": "fixed_prune", "level": level, "accuracy": accuracy(pm),
                     "cr_paper": C.paper_compression_ratio(rep), "cr": C.compression_ratio(rep),
                     "sparsity": rep.sparsity})
    df = pd.DataFrame(rows)
    df["run"], df["n_test"] = setup.model_name + " " + args.run.rstrip("/").split("/")[-1], \
        sum(len(b[1]) for b in loader)
    wide = df[df["method"] == "fixed_quant"].pivot_table(
        index=["granularity", "levels"], columns="bits", values="accuracy")
    print(wide.round(1).to_string())
    print(df[df["method"] != "fixed_quant"].round(3).to_string(index=False))
    if args.out:
        df.round(4).to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
