"""Redraw published figures from the committed CSVs of the quick study's runs (no run is recomputed).

For presentation fixes of the plotting functions (issue 24: units on axes, tick labels that do not
overlap, panels on one scale): the figures below are drawn by the same package function and with
the same title as the notebook that made them, from the tables that notebook saved in its run
folder. The run folders are only read.

Usage: ``python scripts/redraw_figures.py``
"""

from __future__ import annotations

import json
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lcc_utils import metrics, paper_a, plots  # noqa: E402
from lcc_utils.paths import figures_dir, project_root  # noqa: E402

RUNS = project_root() / "runs"


def _save(fig, name: str) -> None:
    """Replace a published figure (only one the study published: no new file appears)."""
    if (figures_dir() / f"{name}.png").is_file():
        plots.save_figure(fig, figures_dir() / name)
        print(f"redrawn: figures/{name}.png, .pdf")
    plt.close(fig)


def bands() -> None:
    """01's band statistics of each dataset (``band_statistics.csv``)."""
    for d in sorted((RUNS / "data").glob("*/band_statistics.csv")):
        name = json.loads((d.parent / "params.json").read_text())["params"]["dataset"]
        stats = pd.read_csv(d)
        title = f"{name}: {'reflectance' if len(stats) > 3 else 'scaled value'} per band"
        _save(plots.plot_band_statistics(stats, title=title), f"data_{name}_bands")


def ndvi_errors() -> None:
    """06's error rate per NDVI bin (``ndvi_errors.csv``, histogram from ``predictions.csv``)."""
    for d in sorted((RUNS / "evaluation").glob("*/ndvi_errors.csv")):
        p = json.loads((d.parent / "params.json").read_text())["params"]
        err, preds = pd.read_csv(d), pd.read_csv(d.parent / "predictions.csv")
        names = list(dict.fromkeys(err["model"]))
        first_key, seed = p["models"][0], p["seeds"][0]
        correct = preds[f"pred_{first_key}_seed{seed}"] == preds["y_true"]
        title = f"{p['task']}: error rate per NDVI bin (seed mean); histogram: {names[0]} seed {seed}"
        fig = metrics.plot_ndvi_errors({n: err[err.model == n].reset_index(drop=True) for n in names},
                                       ndvi=preds["ndvi"], correct=correct, title=title)
        _save(fig, f"evaluation_{p['task']}_ndvi_errors")


def table1() -> None:
    """09's Table 1 figure (``paper_a_table1.csv``), for the model most runs trained (as 09 picks it)."""
    for d in sorted((RUNS / "paper_a_tables").glob("*/paper_a_table1.csv")):
        models = Counter(json.loads(f.read_text())["params"]["model"] for f in (RUNS / "train").glob("*/params.json"))
        _save(paper_a.plot_table1(pd.read_csv(d), model=models.most_common(1)[0][0]), "paper_a_tables_paper_a_table1")


if __name__ == "__main__":
    bands()
    ndvi_errors()
    table1()
