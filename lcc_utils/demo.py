"""``make demo``: every notebook once, small, on the real data, in about ten minutes on two cores.

A newcomer's first command after ``make setup``: it runs 01 -> 09 in dependency order (the
order of ``make study``), each notebook once with the smoke profile's settings, and prints one
line per run and a closing table: each notebook's headline number, where its executed notebook
and figures are, and what the full (quick) study adds.

Nothing tracked is touched: the runs go to ``cache/demo/runs/`` and the figures they publish to
``cache/demo/figures/`` (both wiped at the start, so the demo always computes), the decoded
datasets to the usual cache. ``git status`` stays clean.

Usage: ``python -m lcc_utils.demo [--data-dir DIR]`` (or ``lcc demo``, ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from .paths import cache_dir, project_root, resolve_data_dir


def demo_root() -> Path:
    """The demo's scratch folder: ``cache/demo`` (``runs/`` and ``figures/`` inside)."""
    return cache_dir() / "demo"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


#: Each notebook's headline: a short text made from its ``metrics.json``.
HEADLINES: dict[str, Callable[[dict], str]] = {
    "01": lambda m: f"{m['images']:,} images, {m['classes']} classes, split {m['train']}/{m['val']}/{m['test']}",
    "02": lambda m: f"{m['eurosat_ms_binary_patches']:,} EuroSAT MS patches, {m['scene_patches']} scene patches",
    "03": lambda m: f"{m['n_scored']} images scored, proxy val acc {_pct(m['proxy_final_val_accuracy'])}",
    "04": lambda m: f"test accuracy {_pct(m['test_accuracy'])} ({m['train_size']} training images)",
    "05": lambda m: (f"fp32 {m['fp32_accuracy']:.1f} % -> {m['best_accuracy_cr9']:.1f} % at CR "
                     f"{m['best_cr_cr9']:.1f} ({m['n_variants']} variants)"),
    "06": lambda m: (f"OA: CNN {_pct(m['lightweight_cnn_oa'])}, RF {_pct(m['random_forest_oa'])}, "
                     f"NDVI {_pct(m['ndvi_threshold_oa'])}"),
    "07": lambda m: f"OA A1 {_pct(m['A1_oa_mean'])}, A2 {_pct(m['A2_oa_mean'])}",
    "08": lambda m: (f"{m['pixels'] / 1e6:.1f} Mpx mapped, vegetation {_pct(m['share_vegetation'])}, "
                     f"OA vs SCL {_pct(m['scl_oa'])}"),
    "09": lambda m: f"Table 1 from {m['runs_found']}/{m['runs_expected']} runs, Table 2 from "
                    f"{m['compression_runs_found']}/{m['compression_runs_expected']}",
}


def headline(stage: str, metrics: dict) -> str:
    """The headline of notebook ``stage`` (two digits); a metric missing says so instead of failing."""
    try:
        return HEADLINES[stage](metrics)
    except (KeyError, TypeError, ValueError) as err:
        return f"(no headline: {type(err).__name__} {err})"


def _shown(p: Path) -> str:
    try:
        return p.resolve().relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(p)


def summary(rows: list[dict], width: int = 120) -> str:
    """The closing table of the demo: one block per notebook, every line at most ``width`` columns."""
    from .study import notebooks, profile_runs

    full = {nb.stem[:2]: len(profile_runs(nb, "quick")) for nb in notebooks()}
    lines = [f"{'notebook':<26} {'s':>4}  headline"]
    for r in rows:
        stage = r["notebook"][:2]
        if r.get("error"):
            head = f"FAILED: {r['error']}"
        else:
            head = headline(stage, json.loads((Path(r["run_dir"]) / "metrics.json").read_text()))
        lines.append(f"{r['notebook']:<26} {r['seconds']:>4.0f}  {head}")
        where = f"{_shown(Path(r['run_dir']))}/" if r.get("run_dir") else "no run folder"
        lines.append(f"{'':<33}{where} | quick study: {full.get(stage, 0)} run(s)")
    figs = demo_root() / "figures"
    n_figs = len(list(figs.glob("*.png"))) if figs.is_dir() else 0
    total = sum(r["seconds"] for r in rows)
    lines += [
        f"demo: {len(rows)} runs in {total / 60:.1f} min; {n_figs} published figures in {_shown(figs)}/",
        f"make study (quick profile, {sum(full.values())} runs): the CPU-sized study on real data, about a day "
        "on 2 cores (most of it the UC Merced and converged regimes of 04; the README's time table has each "
        "stage); it resumes from finished runs. PROFILE=paper is GPU work. The demo's numbers come from a few "
        "epochs on small samples: they show the pipeline works, not the papers' results.",
    ]
    out = []
    for line in lines:
        out += textwrap.wrap(line, width, subsequent_indent=" " * 33, break_on_hyphens=False) or [""]
    return "\n".join(out)


def run_demo(data_dir: str | None = None) -> list[dict]:
    """Run the demo; return one row per notebook (notebook, run_dir, executed, seconds[, error])."""
    from .cluster import worker_environment
    from .study import demo_runs, execute_run, notebooks, prepare_data, study_plan

    root = demo_root()
    shutil.rmtree(root, ignore_errors=True)  # a demo always computes
    os.environ["LCC_RUNS_DIR"] = str(root / "runs")
    os.environ["LCC_FIGURES_DIR"] = str(root / "figures")
    os.environ["LCC_PUBLISH_FIGURES"] = "1"
    data = resolve_data_dir(data_dir)
    prepare_data(data_dir, names=("eurosat_ms",))
    order = [nb for nb, _ in study_plan("smoke")]
    books = list(dict.fromkeys(order)) or notebooks()
    plan = [(nb, p) for nb in books for p in demo_runs(nb)]
    print(f"demo: {len(plan)} runs of {len(books)} notebooks on the data in {data}; runs in {_shown(root / 'runs')}/",
          flush=True)
    env, rows = worker_environment(), []
    for i, (nb, params) in enumerate(plan, 1):
        t0 = time.perf_counter()
        try:
            row = execute_run(str(nb), params, str(data), env)
            print(f"[{i}/{len(plan)}] {nb.stem:<26} {row['seconds']:>5.0f} s  -> {_shown(Path(row['run_dir']))}",
                  flush=True)
        except Exception as err:  # later notebooks may still run (those reading this one fail too)
            row = {"notebook": nb.stem, "run_dir": "", "executed": False,
                   "seconds": round(time.perf_counter() - t0, 1), "error": f"{type(err).__name__}: {err}"[:300]}
            print(f"[{i}/{len(plan)}] {nb.stem:<26} FAILED: {row['error'][:80]}", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``make demo``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="data root (default: $LCC_DATA_DIR, data/ or ../shared/data)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = run_demo(args.data_dir)
    print(summary(rows))
    print(f"demo wall time: {(time.perf_counter() - t0) / 60:.1f} min")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
