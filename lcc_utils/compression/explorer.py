"""Looking at a compression results table: accuracy against ratio, and a slider explorer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from lcc_utils.constants import PAPER_A_PQ_BEST

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_accuracy_vs_cr(results: pd.DataFrame, title: str = "") -> Figure:
    """Accuracy (%) against compression ratio (log axis), one marker per method.

    The fp32 baseline is a dashed line; the paper's P->Q best (CR 9.0, 98.10 %) is a star.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    base = results[results["method"] == "none"]
    if not base.empty:
        ax.axhline(float(base["accuracy"].iloc[0]), color="grey", ls="--", lw=1, label="fp32")
    markers = {"fixed_prune": "o", "fixed_quant": "s", "lap": "^", "laq": "v", "pq": "D"}
    for method, grp in results[results["method"] != "none"].groupby("method", sort=False):
        ax.scatter(grp["cr"], grp["accuracy"], marker=markers.get(method, "x"), label=method)
    ax.scatter([PAPER_A_PQ_BEST["cr"]], [PAPER_A_PQ_BEST["accuracy"]], marker="*", s=160,
               color="black", label="paper A P->Q best")
    ax.set_xscale("log")
    # plain tick labels (1, 2, 4, ...) instead of 2 x 10^0 on the log axis
    hi = max(float(results["cr"].max()), PAPER_A_PQ_BEST["cr"])
    ax.set_xticks([t for t in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if t <= hi * 1.2])
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("compression ratio (paper's definition, computed)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Accuracy vs compression ratio")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compression_explorer(results: pd.DataFrame):
    """An ipywidgets explorer of a results table: sliders for level, bits and budget.

    It only looks rows up in ``results`` (no recomputation). Returns the widget, or None
    when ipywidgets is not installed (the notebook then just shows the table).
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        return None
    cols = ["variant", "accuracy", "cr", "cr_disk", "sparsity", "mean_bits", "artefact_match"]

    def options(col: str) -> list:
        return sorted(results[col].dropna().unique().tolist()) if col in results else []

    sliders = {}
    for col, desc in (("level", "prune level"), ("bits", "bits"), ("budget", "budget CR")):
        opts = options(col)
        if opts:
            sliders[col] = widgets.SelectionSlider(options=opts, description=desc,
                                                   continuous_update=False)
    # An HTML widget updated by slider observers: no Output widget and no clear_output,
    # which made headless execution (papermill / nbclient) hang now and then.
    table = widgets.HTML()

    def show(_change: Any = None) -> None:
        parts = [results[results[col] == s.value] for col, s in sliders.items()]
        table.value = (pd.concat(parts)[cols].round(3).to_html(index=False) if parts
                       else "<p>no level / bits / budget variants in this table</p>")

    for s in sliders.values():
        s.observe(show, names="value")
    show()
    return widgets.VBox([*sliders.values(), table])
