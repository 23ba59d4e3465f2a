"""Looking at a compression results table: accuracy against size, and an explorer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lcc_utils.constants import PAPER_A_PQ_BEST

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Columns the explorer and its static table show.
EXPLORER_COLUMNS = ["variant", "accuracy", "cr_paper", "cr", "cr_disk", "size_bytes",
                    "sparsity", "mean_bits", "artefact_match"]
_MARKERS = {"fixed_prune": "o", "fixed_quant": "s", "lap": "^", "laq": "v", "pq": "D"}


def pareto_frontier(results: pd.DataFrame, x: str = "size_bytes",
                    y: str = "accuracy") -> pd.DataFrame:
    """Rows no other row beats on both axes: smaller ``x`` and higher ``y``, sorted by ``x``."""
    df = results.sort_values([x, y], ascending=[True, False])
    keep, best = [], -np.inf
    for idx, val in zip(df.index, df[y], strict=True):
        if val > best:
            keep.append(idx)
            best = val
    return df.loc[keep]


def _size_ticks(lo: float, hi: float) -> list[float]:
    ticks = [m * 10.0 ** e for e in range(0, 10) for m in (1, 2, 5)]
    return [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]


def _kb(v: float) -> str:
    # three significant digits: "4.73 MB", not "4.72661 MB"
    return f"{v / 1e6:.3g} MB" if v >= 1e6 else f"{v / 1e3:.3g} kB"


def plot_accuracy_vs_size(results: pd.DataFrame, paper: pd.DataFrame | None = None,
                          title: str = "") -> Figure:
    """Accuracy (%) against the artefact's on-disk size (log axis), with the Pareto frontier.

    One marker per method (hollow markers: fine-tuned, beyond the paper); the grey line is
    the frontier of our post-training variants, the dashed line fp32. ``paper`` (rows of
    ``paper_a_table2.csv`` with ``accuracy`` and ``cr``) adds paper A's points, placed at our
    fp32 size divided by the paper's CR (its model and dataset differ from ours: the points
    show what the paper's ratio would mean for this model, not a like-for-like comparison).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(10, 5))
    base = results[results["method"] == "none"]
    fp32_bytes = float(base["size_bytes"].iloc[0]) if not base.empty else float("nan")
    if not base.empty:
        ax.axhline(float(base["accuracy"].iloc[0]), color="grey", ls="--", lw=1,
                   label=f"fp32 ({_kb(fp32_bytes)})")
    comp = results[results["method"] != "none"]
    ft = comp["method"].astype(str).str.endswith("+ft")
    for method, grp in comp[~ft].groupby("method", sort=False):
        ax.scatter(grp["size_bytes"], grp["accuracy"], marker=_MARKERS.get(method, "x"),
                   label=method, alpha=0.8)
    for method, grp in comp[ft].groupby("method", sort=False):
        ax.scatter(grp["size_bytes"], grp["accuracy"], marker=_MARKERS.get(method[:-3], "x"),
                   facecolors="none", edgecolors="black", s=70, label=f"{method} (fine-tuned)")
    front = pareto_frontier(pd.concat([base, comp[~ft]]))
    ax.step(front["size_bytes"], front["accuracy"], where="post", color="0.3", lw=1.2,
            label="Pareto frontier (post-training)")
    sizes = list(results["size_bytes"])
    if paper is not None and not paper.empty and np.isfinite(fp32_bytes):
        px = fp32_bytes / paper["cr"].astype(float)
        ax.scatter(px, paper["accuracy"], marker="*", s=50, color="black", alpha=0.5,
                   label="paper A (ConvNeXt-T, UC Merced) at our fp32 size / its CR")
        sizes += list(px)
    else:
        ax.scatter([fp32_bytes / PAPER_A_PQ_BEST["cr"]], [PAPER_A_PQ_BEST["accuracy"]],
                   marker="*", s=160, color="black", label="paper A P->Q best (CR 9.0)")
    ax.set_xscale("log")
    ticks = _size_ticks(min(sizes), max(sizes))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([_kb(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("on-disk size of the .lcc artefact (log scale)")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.set_title(title or "Accuracy vs on-disk size")
    ax.grid(True, which="major", alpha=0.3)
    # outside the axes: inside, it hid the collapsed variants in the lower right
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_cr(results: pd.DataFrame, title: str = "") -> Figure:
    """Accuracy (%) against our computed compression ratio (log axis), one marker per method."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = results[results["method"] == "none"]
    if not base.empty:
        ax.axhline(float(base["accuracy"].iloc[0]), color="grey", ls="--", lw=1, label="fp32")
    for method, grp in results[results["method"] != "none"].groupby("method", sort=False):
        ax.scatter(grp["cr"], grp["accuracy"], marker=_MARKERS.get(method, "x"), label=method)
    ax.scatter([PAPER_A_PQ_BEST["cr"]], [PAPER_A_PQ_BEST["accuracy"]], marker="*", s=160,
               color="black", label="paper A P->Q best")
    ax.set_xscale("log")
    hi = max(float(results["cr"].max()), PAPER_A_PQ_BEST["cr"])
    ax.set_xticks([t for t in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if t <= hi * 1.2])
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("compression ratio (ours, computed)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Accuracy vs compression ratio")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def explorer_table(results: pd.DataFrame) -> str:
    """The explorer's rows as a static HTML table (what an executed notebook keeps)."""
    cols = [c for c in EXPLORER_COLUMNS if c in results]
    return results[cols].round(3).to_html(index=False)


def compression_explorer(results: pd.DataFrame):
    """An ipywidgets explorer of a results table: method, level, bits, budget, grid, fine-tune.

    It only looks rows up in ``results`` (no recomputation). Returns the widget, or None
    when ipywidgets is not installed (the notebook then just shows the table).
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        return None
    cols = [c for c in EXPLORER_COLUMNS if c in results]

    def options(col: str) -> list:
        return sorted(results[col].dropna().unique().tolist()) if col in results else []

    sliders = {}
    for col, desc in (("level", "prune level"), ("bits", "bits"), ("budget", "budget CR")):
        opts = options(col)
        if opts:
            sliders[col] = widgets.SelectionSlider(options=opts, description=desc,
                                                   continuous_update=False)
    filters = {}
    for col, desc in (("granularity", "scales"), ("levels", "grid")):
        opts = [o for o in options(col) if isinstance(o, str)]
        if opts:
            filters[col] = widgets.Dropdown(options=["any", *opts], description=desc)
    if "finetuned" in results:
        filters["finetuned"] = widgets.Dropdown(options=["any", "no", "yes"],
                                                description="fine-tuned")
    # An HTML widget updated by observers: no Output widget and no clear_output, which made
    # headless execution (papermill / nbclient) hang now and then.
    table = widgets.HTML()

    def show(_change: Any = None) -> None:
        parts = [results[results[col] == s.value] for col, s in sliders.items()]
        if not parts:
            table.value = "<p>no level / bits / budget variants in this table</p>"
            return
        df = pd.concat(parts)
        for col, w in filters.items():
            if w.value == "any":
                continue
            if col == "finetuned":
                df = df[df[col].fillna(False).astype(bool) == (w.value == "yes")]
            else:
                df = df[df[col].isna() | (df[col] == w.value)]
        table.value = df[cols].round(3).to_html(index=False)

    for w in [*sliders.values(), *filters.values()]:
        w.observe(show, names="value")
    show()
    return widgets.VBox([*sliders.values(), *filters.values(), table])


def display_explorer(results: pd.DataFrame) -> None:
    """Show the explorer in a notebook: a static HTML table first, then the live widget.

    The executed notebook keeps the table (the widget needs a live kernel); the widget's
    plain-text fallback is a sentence, not its repr.
    """
    from IPython.display import HTML, display

    display(HTML(explorer_table(results)))
    box = compression_explorer(results)
    if box is None:
        return
    bundle = box._repr_mimebundle_() if hasattr(box, "_repr_mimebundle_") else None
    if isinstance(bundle, tuple):
        bundle = bundle[0]
    if not bundle:
        display(box)
        return
    bundle = dict(bundle)
    bundle["text/plain"] = "(interactive explorer: open this notebook in JupyterLab)"
    display(bundle, raw=True)
