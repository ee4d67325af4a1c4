"""Reliability diagram (DeGroot & Fienberg 1983; Niculescu-Mizil & Caruana 2005; Guo et al. 2017).

Top panel: accuracy against mean confidence per bin, one line per series, the diagonal being
perfect calibration.  Bottom panel: how many predictions fall in each bin -- a point from a
bin of three predictions means little, so the counts are always shown.

At small n, fixed-width bins leave one or two items in most bins and the curve zigzags on
noise; ``min_count`` merges adjacent bins (left to right) until each plotted bin holds at
least that many items (an adaptive-width diagram in the spirit of equal-mass binning,
Nixon et al. 2019), while the legend keeps the run's own ECE on the original bins.  The
legend goes below the figure, never over the curves.

matplotlib is imported only here, only when a plot is asked for, and never through
``pyplot``'s global state: the figure gets its own Agg canvas, so this works headless, in
threads, and without touching whatever backend the caller chose.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.metrics.calibration import ReliabilityData


def merge_sparse_bins(data: ReliabilityData, min_count: int) -> ReliabilityData:
    """Adjacent bins merged left to right until each holds >= ``min_count`` items (the rest joins the last).

    Counts are summed and the mean confidence and accuracy are count-weighted, so each
    merged bin is exactly the bin its items would have formed; empty bins disappear into
    their neighbours.  With fewer than ``min_count`` items in all, one bin remains.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = np.asarray(data.counts, dtype=np.float64)
    conf = np.where(counts > 0, np.nan_to_num(data.mean_confidence) * counts, 0.0)  # (k,) sums per bin
    acc = np.where(counts > 0, np.nan_to_num(data.accuracy) * counts, 0.0)
    groups: list[list[int]] = [[]]
    for i in range(len(counts)):
        groups[-1].append(i)
        if counts[groups[-1]].sum() >= min_count:
            groups.append([])
    if not groups[-1]:
        groups.pop()
    if len(groups) > 1 and counts[groups[-1]].sum() < min_count:
        groups[-2].extend(groups.pop())
    edges = [float(data.edges[0])] + [float(data.edges[g[-1] + 1]) for g in groups]
    n = np.array([counts[g].sum() for g in groups])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(n > 0, np.array([conf[g].sum() for g in groups]) / n, np.nan)
        accuracy = np.where(n > 0, np.array([acc[g].sum() for g in groups]) / n, np.nan)
    return ReliabilityData(np.array(edges), n.astype(np.int64), mean_conf, accuracy)


def plot_reliability(data: ReliabilityData | Sequence[ReliabilityData], labels: Sequence[str] | None = None,
                     ax=None, title: str | None = None, min_count: int | None = None):
    """Draw one or more reliability diagrams with their bin counts; return the matplotlib Figure.

    ``data``: a :class:`ReliabilityData` or a list of them (e.g. before and after
    calibration).  ``labels``: one per series (default "series 1", ...); the legend adds each
    series' ECE and n.  ``ax``: draw the curves into this Axes and the counts onto a twin axis
    at its bottom; otherwise a new two-panel Figure (Agg canvas) is made.  ``min_count``:
    merge sparse bins first (:func:`merge_sparse_bins`); None draws the bins as given.
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
        ece_txt = f"ECE {d.ece():.3f}, n={d.n}" if d.n else "n=0"  # on the bins as given, before merging
        if min_count is not None and d.n:
            d = merge_sparse_bins(d, min_count)
        nz = np.asarray(d.counts) > 0
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
    if own:  # below the figure: a legend inside the axes covers a curve sooner or later
        ax_rel.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=fig.transFigure,
                      fontsize=8, frameon=False)
    else:
        ax_rel.legend(loc="best", fontsize=8)
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
