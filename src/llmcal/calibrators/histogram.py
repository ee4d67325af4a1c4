"""Histogram binning (Zadrozny & Elkan 2001, "Obtaining calibrated probability estimates from
decision trees and naive Bayesian classifiers", ICML).

Split the confidence range into bins and replace every confidence by the accuracy of its bin
on the calibration set.  ``strategy="quantile"`` (default, as in the paper: equal-frequency
bins) or ``"uniform"`` (equal width).  Bins left empty by the calibration data are merged into
a neighbour rather than given an arbitrary value, so every output value is an observed
accuracy.  Bins are left-closed, ``[e_i, e_{i+1})``, like the metrics' bins.

Bin accuracies that fall as confidence rises (noise in a bin of a few items) are pooled
with their neighbours, weighted by their counts (pool-adjacent-violators over the bins,
as isotonic regression does over single items): the map is non-decreasing, so a higher
confidence never comes out lower and the ranking of answers is never inverted, only tied
(issue #15).  Every output value is still an observed accuracy, of the pooled bins.
"""

from __future__ import annotations

import numpy as np

from llmcal.calibrators.base import Calibrator
from llmcal.core.bins import bin_index, edges_for
from llmcal.core.validation import check_n_bins, check_strategy


class HistogramBinning(Calibrator):
    """Histogram binning; learned interior bin edges ``edges_`` and per-bin accuracies ``values_``."""

    name = "histogram"
    _params = ("n_bins", "strategy")
    _state = ("edges_", "values_")
    _array_state = ("edges_", "values_")
    _probability_state = ("values_",)  # outputs: probabilities

    def __init__(self, n_bins: int = 10, strategy: str = "quantile"):
        self.n_bins = check_n_bins(n_bins)
        self.strategy = check_strategy(strategy)

    @property
    def min_samples(self) -> int:  # type: ignore[override]
        return max(2, self.n_bins)

    def _fit(self, p: np.ndarray, c: np.ndarray) -> None:
        edges = np.unique(edges_for(p, self.n_bins, self.strategy))
        idx = bin_index(p, edges)
        counts = np.bincount(idx, minlength=len(edges) - 1)
        # keep an interior edge only if it separates two non-empty stretches
        interior = edges[1:-1]
        before = np.cumsum(counts)[:-1]
        keep = (counts[1:] > 0) & (before > 0)
        inner = interior[keep]
        full = np.concatenate([[0.0], inner, [1.0]])
        idx = bin_index(p, full)
        counts = np.bincount(idx, minlength=len(full) - 1)
        hits = np.bincount(idx, weights=c, minlength=len(full) - 1)
        values, weights = hits / counts, counts.astype(np.float64)
        pooled = pool_adjacent_violators(values, weights)
        # bins merged into one value need no edge between them
        keep_edge = np.diff(pooled) != 0.0
        self.edges_ = inner[keep_edge].astype(np.float64)
        self.values_ = np.concatenate([pooled[:1], pooled[1:][keep_edge]])

    def state_problem(self) -> str | None:
        """Loaded bin accuracies must be probabilities and non-decreasing (one per bin)."""
        problem = super().state_problem()
        if problem or not hasattr(self, "values_"):
            return problem
        v = np.asarray(self.values_, dtype=np.float64)
        if v.size != np.asarray(self.edges_).size + 1:
            return f"field 'state.values_': {v.size} values for {np.asarray(self.edges_).size + 1} bins"
        if v.size > 1 and np.any(np.diff(v) < 0):
            return "field 'state.values_': decreasing bin accuracies (the map would invert the ranking)"
        return None

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return self.values_[np.searchsorted(self.edges_, p, side="right")]


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence (m,) closest to ``values`` (m,) in ``weights``-weighted squared
    error: adjacent blocks that decrease are replaced by their weighted mean, until none does."""
    blocks: list[list[float]] = []  # [weighted mean, total weight, number of entries]
    for v, w in zip(np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks]) if blocks else np.zeros(0)
