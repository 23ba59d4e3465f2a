"""What the paper profile costs on a GPU, per stage and backbone: FLOPs, images, estimated minutes.

For every run the ``paper`` profile plans (:func:`lcc_utils.study.profile_runs`) of notebooks
03 (proxy scoring), 04 (training) and 05 (compression), this counts the images each run passes
through its network and the forward FLOPs per image (:func:`lcc_utils.metrics.count_flops`:
``torch.utils.flop_counter``, a multiply-add is 2 FLOPs, convolutions and matrix products only),
and turns them into GPU minutes at a **stated** sustained rate (``--tflops``, default 50 TFLOP/s
under AMP, about 5 % of an H100/H200's dense BF16 peak: ConvNeXt-T would train at ~1,900 images/s at
224 px). A training image costs three forward
passes (forward + backward), an evaluated image one.

These are **estimates**, upper bounds on images: every 04 run is counted at its full epoch
budget (paper A's early stopping ends some earlier), validation after every epoch, one pass over
the test split and one over the coreset; 03 counts its proxy's epochs over the training split; 05 one pass over the test
split per compression variant plus its fine-tune steps. Data loading, checkpoints and the CPU
work of 05 (compression itself) are not counted. ``scripts/gpu_check.py`` measures the real
images/s of ConvNeXt-T at 224 px; where it differs from the rate here, scale the minutes.

Usage: ``python scripts/gpu_costs.py [--tflops 50] [--out docs/gpu_costs.md]``.
"""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from lcc_utils import metrics, models, runs, study  # noqa: E402
from lcc_utils.compression.variants import make_variants  # noqa: E402

#: Images per dataset and the split's shares (``data.get_split``: test 0.2, val 0.1, train the rest).
DATASET_IMAGES = {"eurosat": 27_000, "ucmerced": 2_100}
CLASSES = {"eurosat": 10, "ucmerced": 21}
TEST_SHARE, VAL_SHARE = 0.2, 0.1
TRAIN_PASSES = 3  # forward + backward of a training image, in forward passes


def split_sizes(dataset: str) -> tuple[int, int, int]:
    """(train, val, test) images of a dataset's split (rounded; the split is stratified per class)."""
    n = DATASET_IMAGES[dataset]
    test, val = round(n * TEST_SHARE), round(n * VAL_SHARE)
    return n - test - val, val, test


@cache
def gflops(model: str, image_size: int, num_classes: int) -> float:
    """Forward GFLOPs of one RGB image of ``image_size`` px through ``model`` (random weights)."""
    net = models.create_model(model, num_classes=num_classes, in_chans=3, pretrained=False, image_size=image_size)
    return metrics.count_flops(net, (3, image_size, image_size)) / 1e9


def _rows_03(profile: str) -> list[dict]:
    out = []
    for p in study.profile_runs(runs.notebook_path("03"), profile):
        p = runs.resolve_params(runs.notebook_path("03"), p)
        train, _, _ = split_sizes(p["dataset"])
        out.append({"stage": "03 proxy scoring", "model": p["scoring_model"], "dataset": p["dataset"],
                    "image_size": p["scoring_image_size"],
                    "gflops": gflops(p["scoring_model"], p["scoring_image_size"], CLASSES[p["dataset"]]),
                    "train_images": p["scoring_epochs"] * train, "eval_images": 0})
    return out


def _rows_04(profile: str) -> list[dict]:
    out = []
    for p in study.profile_runs(runs.notebook_path("04"), profile):
        p = runs.resolve_params(runs.notebook_path("04"), p)
        train, val, test = split_sizes(p["dataset"])
        kept = round(train * p["fraction"])
        steps = p["steps"] if p["fraction"] < 1 and p["steps"] > 0 else 0
        epochs = p["epochs"] if not steps else -(-steps * p["batch_size"] // max(kept, 1))
        seen = steps * p["batch_size"] if steps else epochs * kept
        out.append({"stage": "04 training", "model": p["model"], "dataset": p["dataset"],
                    "image_size": p["image_size"], "gflops": gflops(p["model"], p["image_size"], CLASSES[p["dataset"]]),
                    "train_images": seen, "eval_images": epochs * val + test + kept})  # + 04's fit on its coreset
    return out


def _rows_05(profile: str) -> list[dict]:
    out = []
    for p in study.profile_runs(runs.notebook_path("05"), profile):
        p = runs.resolve_params(runs.notebook_path("05"), p)
        t = runs.resolve_params(runs.notebook_path("04"), p["train_run"])
        _, _, test = split_sizes(t["dataset"])
        budget = ({m: [2.0, 4.0, 8.0] for m in ("lap", "laq", "pq")} if p["budget"] == "paper"
                  else p["budget"])  # "paper": three CRs per adaptive method (paper A's Table 2)
        n_variants = len(make_variants(p["methods"], levels=p["levels"], bits=p["bits"], importance=p["importance"],
                                       budget=budget, scope=p["scope"], pq_sparsity=p["pq_sparsity"],
                                       granularity=p["granularity"], quant_levels=p["quant_levels"],
                                       budget_cr=p["budget_cr"]))
        n_variants += len(p["extra_variants"]) + len(p["finetune"]) + 1  # + fine-tuned ones, + the fp32 model
        evaluated = p["max_test_images"] or test
        out.append({"stage": "05 compression", "model": t["model"], "dataset": t["dataset"],
                    "image_size": t["image_size"], "gflops": gflops(t["model"], t["image_size"], CLASSES[t["dataset"]]),
                    "train_images": len(p["finetune"]) * p["finetune_steps"] * 64,
                    "eval_images": n_variants * evaluated})
    return out


def stage_costs(profile: str = "paper", tflops: float = 50.0) -> pd.DataFrame:
    """Per stage and backbone: runs, forward GFLOPs per image, images, PFLOPs and estimated GPU minutes."""
    rows = pd.DataFrame(_rows_03(profile) + _rows_04(profile) + _rows_05(profile))
    rows["pflop"] = rows["gflops"] * (TRAIN_PASSES * rows["train_images"] + rows["eval_images"]) / 1e6
    table = rows.groupby(["stage", "model"], sort=False).agg(
        runs=("gflops", "size"), image_px=("image_size", lambda s: "/".join(map(str, sorted(set(s))))),
        gflops_per_image=("gflops", "max"), train_images=("train_images", "sum"),
        eval_images=("eval_images", "sum"), pflop=("pflop", "sum")).reset_index()
    table["est_gpu_minutes"] = table["pflop"] * 1e15 / (tflops * 1e12) / 60
    return table


def markdown(table: pd.DataFrame, tflops: float, profile: str) -> str:
    """The table as ``docs/gpu_costs.md``."""
    total = table["est_gpu_minutes"].sum()
    head = [f"# GPU costs of the `{profile}` profile (estimates)", "",
            f"Written by `python scripts/gpu_costs.py` from `profiles/*.json`. **Estimated** GPU time at an "
            f"assumed sustained {tflops:g} TFLOP/s (AMP; about 5 % of an H100/H200's dense BF16 peak), not "
            "measured: `make gpu-check` measures ConvNeXt-T's images/s at 224 px on the machine at hand; scale "
            "the minutes by the ratio. Not counted, and likely larger than the GPU time: starting a notebook "
            "kernel per run (about 10 s each), the loader (on CUDA `BatchLoader`'s device path reads the "
            "stored uint8 pixels on the CPU and augments, resizes and normalises them on the GPU; "
            "`gpu-check` reports the loader's stall, docs/data.md its CPU side's images/s), checkpoints, "
            "and 05's compression "
            "itself (CPU). Upper bounds on images: every training run at its full epoch budget "
            "(early stopping ends some sooner), validation every epoch, one pass over the test split and "
            "one over the coreset; a training image is 3 forward passes. "
            "FLOPs per image: forward, `torch.utils.flop_counter` "
            "(`lcc_utils.metrics.count_flops`; convolutions and matrix products, a multiply-add is 2), at "
            "the largest image size of the row. 05 compresses on the CPU; only its evaluations are counted.",
            "", "| stage | model | runs | px | GFLOPs / image (fwd) | training images | evaluated images "
            "| PFLOP | est. GPU minutes |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    body = [f"| {r.stage} | {r.model} | {r.runs} | {r.image_px} | {r.gflops_per_image:.2f} | {r.train_images:,} "
            f"| {r.eval_images:,} | {r.pflop:,.1f} | {r.est_gpu_minutes:.1f} |" for r in table.itertuples()]
    return "\n".join(head + body + [f"| **total** | | {table['runs'].sum()} | | | "
                                    f"{table['train_images'].sum():,} | {table['eval_images'].sum():,} | "
                                    f"{table['pflop'].sum():,.1f} | **{total:.1f}** |", ""])


def main(argv: list[str] | None = None) -> int:
    """Write the cost table of a profile as markdown."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper", choices=study.PROFILES)
    ap.add_argument("--tflops", type=float, default=50.0, help="assumed sustained TFLOP/s of the GPU")
    ap.add_argument("--out", default=str(ROOT / "docs" / "gpu_costs.md"))
    args = ap.parse_args(argv)
    text = markdown(stage_costs(args.profile, args.tflops), args.tflops, args.profile)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
