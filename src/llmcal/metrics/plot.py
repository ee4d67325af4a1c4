"""Reliability diagram (DeGroot & Fienberg 1983; Niculescu-Mizil & Caruana 2005; Guo et al. 2017).

Top panel: accuracy against mean confidence per bin, one line per series, the diagonal being
perfect calibration.  Bottom panel: how many predictions fall in each bin -- a point from a
bin of three predictions means little, so the counts are always shown.

matplotlib is imported only here, only when a plot is asked for, and never through
``pyplot``'s global state: the figure gets its own Agg canvas, so this works headless, in
threads, and without touching whatever backend the caller chose.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.metrics.calibration import ReliabilityData


def plot_reliability(data: ReliabilityData | Sequence[ReliabilityData], labels: Sequence[str] | None = None,
                     ax=None, title: str | None = None):
    """Draw one or more reliability diagrams with their bin counts; return the matplotlib Figure.

    ``data``: a :class:`ReliabilityData` or a list of them (e.g. before and after
    calibration).  ``labels``: one per series (default "series 1", ...); the legend adds each
    series' ECE and n.  ``ax``: draw the curves into this Axes and the counts onto a twin axis
    at its bottom; otherwise a new two-panel Figure (Agg canvas) is made.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [data] if isinstance(data, ReliabilityData) else list(data)
    if not series or not all(isinstance(d, ReliabilityData) for d in series):
        raise ValueError("data must be a ReliabilityData or a non-empty list of them")
    if labels is None:
        labels = ["reliability"] if len(series) == 1 else [f"series {i + 1}" for i in range(len(series))]
    labels = list(labels)
    if len(labels) != len(series):
        raise ValueError(f"labels: expected {len(series)} labels, got {len(labels)}")

    if ax is None:
        fig = Figure(figsize=(5.5, 6.0))
        FigureCanvasAgg(fig)
        ax_rel, ax_cnt = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
        own = True
    else:
        fig = ax.figure
        ax_rel, ax_cnt = ax, ax.twinx()
        own = False

    colors = [f"C{i}" for i in range(10)]
    ax_rel.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    max_count = 1
    for i, (d, lab) in enumerate(zip(series, labels, strict=True)):
        col = colors[i % len(colors)]
        nz = np.asarray(d.counts) > 0
        ece_txt = f"ECE {d.ece():.3f}, n={d.n}" if d.n else "n=0"
        ax_rel.plot(d.mean_confidence[nz], d.accuracy[nz], marker="o", markersize=4, color=col,
                    label=f"{lab} ({ece_txt})")
        counts = np.asarray(d.counts, dtype=float)
        max_count = max(max_count, float(counts.max()) if counts.size else 1)
        ax_cnt.stairs(counts, d.edges, color=col, fill=len(series) == 1, alpha=0.35 if len(series) == 1 else 0.9,
                      linewidth=1.2, label=lab)
        if len(series) == 1 and len(counts) <= 20 and own:
            centers = (d.edges[:-1] + d.edges[1:]) / 2
            for xc, cn in zip(centers, counts, strict=True):
                if cn > 0:
                    ax_cnt.annotate(f"{int(cn)}", (xc, cn), ha="center", va="bottom", fontsize=7,
                                    xytext=(0, 1), textcoords="offset points")

    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1)
    ax_rel.set_ylabel("accuracy")
    ax_rel.grid(alpha=0.3)
    ax_rel.legend(loc="upper left", fontsize=8)
    if title:
        ax_rel.set_title(title)
    if own:
        ax_cnt.set_ylim(0, max_count * 1.25)
        ax_cnt.set_xlabel("confidence")
        ax_cnt.set_ylabel("count")
        ax_cnt.grid(alpha=0.3)
    else:  # counts along the bottom quarter of the caller's axes
        ax_cnt.set_ylim(0, max_count * 4)
        ax_cnt.set_ylabel("count")
        ax_rel.set_xlabel("confidence")
    return fig
