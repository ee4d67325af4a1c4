"""Confidence binning: the one place where bin edges and bin membership are decided.

Conventions (the same as netcal's and numpy's ``histogram``):

* ``strategy="uniform"``: ``n_bins`` equal-width bins, edges ``np.linspace(0, 1, n_bins + 1)``
  (Naeini et al. 2015; Guo et al. 2017).
* ``strategy="quantile"``: equal-mass bins, edges ``np.quantile(confidence, linspace(0, 1, n_bins + 1))``
  with the outer edges pinned to 0 and 1 (the adaptive binning of Nixon et al. 2019, "ACE").
* A bin is closed on the left and open on the right, ``[e_i, e_{i+1})``, except the last one,
  which also holds its right edge: a confidence of exactly 1.0 lands in the last bin and 0.0 in
  the first (torchmetrics once put 1.0 into an extra, (n_bins+1)-th bin).  Equal quantile edges
  (ties in the data) give empty bins, which carry no weight.

The uniform case is the hot path (15-bin ECE on 10 million predictions): the bin of ``x`` is
``floor(x * n_bins)``, checked against the exact edges only where ``x * n_bins`` lies within
1e-9 of an integer, computed block by block in cache-sized buffers and counted with
``np.bincount`` -- no sort, no per-bin Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmcal.metrics._validation import check_n_bins, check_strategy

_BLOCK = 1 << 13  # elements per block: 8192 float64 = 64 KiB, stays in L2 with its temporaries
_TOL = 1e-9  # |x*n_bins - round(x*n_bins)| below this: decide the bin from the exact edges


@dataclass(frozen=True)
class BinStats:
    """Per-bin sufficient statistics: everything a binned calibration metric needs."""

    edges: np.ndarray  # (n_bins + 1,)
    counts: np.ndarray  # (n_bins,) int64
    sum_confidence: np.ndarray  # (n_bins,) float64
    sum_correct: np.ndarray  # (n_bins,) int64

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def uniform_edges(n_bins: int) -> np.ndarray:
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


def uniform_bin_index(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each value; identical to ``bin_index(x, uniform_edges(n_bins))``, faster."""
    n_bins = check_n_bins(n_bins)
    f = x * n_bins
    idx = f.astype(np.intp)
    near = np.abs(f - np.rint(f)) < _TOL
    if near.any():
        sel = np.flatnonzero(near)
        idx[sel] = bin_index(x[sel], uniform_edges(n_bins))
    return idx


def _uniform_stats(x: np.ndarray, c: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts per (bin, correct) and confidence sums per (bin, correct), block by block."""
    edges = uniform_edges(n_bins)
    n = len(x)
    size = min(_BLOCK, n)
    f = np.empty(size)
    g = np.empty(size)
    key = np.empty(size, dtype=np.intp)
    near = np.empty(size, dtype=bool)
    counts = np.zeros(2 * n_bins, dtype=np.int64)
    sums = np.zeros(2 * n_bins)
    for start in range(0, n, size):
        xb = x[start : start + size]
        cb = c[start : start + size]
        m = len(xb)
        if m != size:
            f, g, key, near = f[:m], g[:m], key[:m], near[:m]
        np.multiply(xb, n_bins, out=f)
        np.copyto(key, f, casting="unsafe")  # truncation == floor, x >= 0
        np.rint(f, out=g)
        np.subtract(f, g, out=g)
        np.abs(g, out=g)
        np.less(g, _TOL, out=near)
        if near.any():  # on or next to an edge (0.0, 1.0, 0.2, ...): decide from the exact edges
            sel = np.flatnonzero(near)
            key[sel] = bin_index(xb[sel], edges)
        np.multiply(key, 2, out=key)
        np.add(key, cb, out=key, casting="unsafe")
        counts += np.bincount(key, minlength=2 * n_bins)
        sums += np.bincount(key, weights=xb, minlength=2 * n_bins)
    return counts.reshape(n_bins, 2), sums.reshape(n_bins, 2)


def bin_stats(x: np.ndarray, c: np.ndarray, n_bins: int = 15, strategy: str = "uniform") -> BinStats:
    """Per-bin counts, confidence sums and correct counts of validated ``x`` (float64) and ``c`` (bool)."""
    n_bins = check_n_bins(n_bins)
    check_strategy(strategy)
    if strategy == "uniform":
        counts2, sums2 = _uniform_stats(x, c, n_bins)
        return BinStats(uniform_edges(n_bins), counts2.sum(axis=1), sums2.sum(axis=1), counts2[:, 1].copy())
    edges = quantile_edges(x, n_bins)
    return stats_for_index(x, c, bin_index(x, edges), edges)


def stats_for_index(x: np.ndarray, c: np.ndarray, idx: np.ndarray, edges: np.ndarray) -> BinStats:
    n_bins = len(edges) - 1
    return BinStats(
        edges,
        np.bincount(idx, minlength=n_bins),
        np.bincount(idx, weights=x, minlength=n_bins),
        np.bincount(idx, weights=c, minlength=n_bins).astype(np.int64),
    )


def helm_equal_mass_edges(x: np.ndarray, num_bins: int = 10) -> np.ndarray:
    """HELM's equal-mass bin boundaries (``calibration.get_equal_bins``, used by ``ece_10_bin``).

    Sort the confidences, split them into ``min(num_bins, n)`` consecutive chunks as
    ``np.array_split`` does (the first ``n % k`` chunks one longer), put a boundary halfway
    between the last value of a chunk and the first of the next, add 1.0, and drop
    duplicates.  These are *upper* boundaries of right-closed bins: a value equal to a
    boundary belongs to the lower bin (``np.searchsorted(bounds, x, side="left")``).
    """
    xs = np.sort(x)
    n = len(xs)
    k = min(int(num_bins), n)
    q, r = divmod(n, k)
    sizes = np.full(k, q, dtype=np.int64)
    sizes[:r] += 1
    starts = np.cumsum(sizes)[:-1]  # first index of chunks 1..k-1
    mids = (xs[starts - 1] + xs[starts]) / 2.0
    return np.unique(np.append(mids, 1.0))
