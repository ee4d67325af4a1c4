"""Bin edges and bin membership of confidences: the one definition both the binned metrics
(``metrics/binning.py``, ECE and friends) and histogram binning (``calibrators/histogram.py``)
use, so a calibrator's bins and a metric's bins never disagree.  It sits in ``core`` because
neither of the two packages may import the other.

* ``strategy="uniform"``: ``n_bins`` equal-width bins, edges ``np.linspace(0, 1, n_bins + 1)``
  (Naeini et al. 2015; Guo et al. 2017).
* ``strategy="quantile"``: equal-mass bins, edges ``np.quantile(confidence, linspace(0, 1, n_bins + 1))``
  with the outer edges pinned to 0 and 1 (the adaptive binning of Nixon et al. 2019, "ACE").
* A bin is closed on the left and open on the right, ``[e_i, e_{i+1})``, except the last one,
  which also holds its right edge.
"""

from __future__ import annotations

import numpy as np

from llmcal.core.validation import check_n_bins, check_strategy


def uniform_edges(n_bins: int) -> np.ndarray:
    """(n_bins + 1,) equal-width edges over [0, 1]."""
    return np.linspace(0.0, 1.0, check_n_bins(n_bins) + 1)


def quantile_edges(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass edges: linear-interpolated quantiles, outer edges pinned to 0 and 1 (as netcal)."""
    edges = np.quantile(x, np.linspace(0.0, 1.0, check_n_bins(n_bins) + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return np.maximum.accumulate(edges)  # guard against a last-ulp dip from interpolation


def edges_for(x: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    check_strategy(strategy)
    return uniform_edges(n_bins) if strategy == "uniform" else quantile_edges(x, n_bins)


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value for arbitrary increasing edges (left-closed bins, last bin closed)."""
    n_bins = len(edges) - 1
    idx = np.searchsorted(edges, x, side="right") - 1
    np.clip(idx, 0, n_bins - 1, out=idx)
    return idx
