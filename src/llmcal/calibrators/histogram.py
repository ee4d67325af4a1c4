"""Histogram binning (Zadrozny & Elkan 2001, "Obtaining calibrated probability estimates from
decision trees and naive Bayesian classifiers", ICML).

Split the confidence range into bins and replace every confidence by the accuracy of its bin
on the calibration set.  ``strategy="quantile"`` (default, as in the paper: equal-frequency
bins) or ``"uniform"`` (equal width).  Bins left empty by the calibration data are merged into
a neighbour rather than given an arbitrary value, so every output value is an observed
accuracy.  Bins are left-closed, ``[e_i, e_{i+1})``, like the metrics' bins.
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
        self.edges_ = inner.astype(np.float64)
        self.values_ = hits / counts

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return self.values_[np.searchsorted(self.edges_, p, side="right")]
