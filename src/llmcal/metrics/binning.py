"""Confidence binning for the metrics: per-bin statistics on the bins of :mod:`llmcal.core.bins`.

The edges and bin membership are decided in ``core/bins.py`` (shared with histogram
binning); this module adds the fast equal-width path and the per-bin sums.  Conventions
(the same as netcal's and numpy's ``histogram``):

* ``strategy="uniform"``: ``n_bins`` equal-width bins, edges ``np.linspace(0, 1, n_bins + 1)``
  (Naeini et al. 2015; Guo et al. 2017).
* ``strategy="quantile"``: equal-mass bins, edges ``np.quantile(confidence, linspace(0, 1, n_bins + 1))``
  with the outer edges pinned to 0 and 1 (the adaptive binning of Nixon et al. 2019, "ACE").
* A bin is closed on the left and open on the right, ``[e_i, e_{i+1})``, except the last one,
  which also holds its right edge: a confidence of exactly 1.0 lands in the last bin and 0.0 in
  the first (torchmetrics once put 1.0 into an extra, (n_bins+1)-th bin).  Equal quantile edges
  (ties in the data) give empty bins, which carry no weight.

The uniform case is the hot path (15-bin ECE on 10 million predictions): the bin of ``x`` is
``floor(x * n_bins)``, replaced by the bin from the exact edges only where ``x * n_bins`` lies
within 1e-9 of an integer (so the result is exactly that of the edges), computed block by
block in cache-sized buffers and counted with ``np.bincount`` -- no sort, no searchsorted, no
per-bin Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmcal.core.bins import bin_index, edges_for, quantile_edges, uniform_edges
from llmcal.core.validation import as_confidence, check_n_bins, check_strategy

__all__ = ["BinStats", "bin_index", "bin_stats", "edges_for", "quantile_edges", "uniform_bin_index",
           "uniform_edges"]

_BLOCK = 1 << 15  # elements per block: 32768 float64 = 256 KiB; the block and its buffers stay in L2
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


def uniform_bin_index(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each value; identical to ``bin_index(x, uniform_edges(n_bins))``, faster."""
    n_bins = check_n_bins(n_bins)
    f = x * n_bins
    g = np.floor(f)
    frac = f - g
    idx = g.astype(np.intp)
    near = (frac < _TOL) | (frac > 1.0 - _TOL)
    if near.any():
        sel = np.flatnonzero(near)
        idx[sel] = bin_index(x[sel], uniform_edges(n_bins))
    return idx


def _uniform_pass(x: np.ndarray, c: np.ndarray, n_bins: int, gap_only: bool, check_range: bool = False):
    """One blocked pass over the data with equal-width bins.

    Per block (in cache-sized buffers): ``f = x * n_bins``, ``g = floor(f)``; where ``f`` is
    within ``_TOL`` of an integer (checked with one min and one max of ``f - g``) the bin is
    taken from the exact edges instead.  Then either

    * ``gap_only``: one weighted ``np.bincount`` of ``x - correct`` per bin -- all that the
      l1 ECE needs, since (n_b / n) * |acc_b - conf_b| = |sum_b (x - correct)| / n; or
    * counts and confidence sums per (bin, correct) from two ``np.bincount`` calls on
      ``key = 2 * bin + correct``.

    ``check_range``: check each block for values outside [0, 1] (NaN included) while it is in
    cache, instead of a separate pass over the whole array, and raise as ``as_confidence``.
    """
    edges = uniform_edges(n_bins)
    n = len(x)
    size = min(_BLOCK, n)
    f = np.empty(size)
    g = np.empty(size)
    key = np.empty(size, dtype=np.intp)
    nk = n_bins if gap_only else 2 * n_bins
    counts = np.zeros(nk, dtype=np.int64)
    sums = np.zeros(nk)
    for start in range(0, n, size):
        xb = x[start : start + size]
        cb = c[start : start + size]
        m = len(xb)
        if m != size:
            f, g, key = f[:m], g[:m], key[:m]
        if check_range and not (xb.min() >= 0.0 and xb.max() <= 1.0):
            as_confidence(x)  # raises the precise message
        np.multiply(xb, n_bins, out=f)
        np.floor(f, out=g)
        np.subtract(f, g, out=f)  # fractional part
        if f.min() < _TOL or f.max() > 1.0 - _TOL:  # on or next to an edge (0.0, 1.0, 0.2, ...)
            sel = np.flatnonzero((f < _TOL) | (f > 1.0 - _TOL))
            g[sel] = bin_index(xb[sel], edges)
        if gap_only:
            np.copyto(key, g, casting="unsafe")
            np.subtract(xb, cb, out=f)
            sums += np.bincount(key, weights=f, minlength=nk)
            continue
        np.add(g, g, out=g)
        np.add(g, cb, out=g)
        np.copyto(key, g, casting="unsafe")
        counts += np.bincount(key, minlength=nk)
        sums += np.bincount(key, weights=xb, minlength=nk)
    if gap_only:
        return sums
    return counts.reshape(n_bins, 2), sums.reshape(n_bins, 2)


def uniform_gap_sums(x: np.ndarray, c: np.ndarray, n_bins: int, check_range: bool = False) -> np.ndarray:
    """Per equal-width bin, the sum of ``confidence - correct`` (float64 / bool or 0/1 ints)."""
    return _uniform_pass(x, c, check_n_bins(n_bins), gap_only=True, check_range=check_range)


def bin_stats(x: np.ndarray, c: np.ndarray, n_bins: int = 15, strategy: str = "uniform") -> BinStats:
    """Per-bin counts, confidence sums and correct counts of validated ``x`` (float64) and ``c`` (bool)."""
    n_bins = check_n_bins(n_bins)
    check_strategy(strategy)
    if strategy == "uniform":
        counts2, sums2 = _uniform_pass(x, c, n_bins, gap_only=False)
        return BinStats(uniform_edges(n_bins), counts2.sum(axis=1), sums2.sum(axis=1), counts2[:, 1].copy())
    # equal-mass: one sort gives both the quantiles and contiguous bins
    xs, cs = sort_with_correct(x, c)
    edges = quantile_edges(xs, n_bins)
    starts = np.searchsorted(xs, edges[:-1], side="left")  # bin i holds e_i <= x < e_{i+1}
    starts[0] = 0
    return stats_for_sorted(xs, cs, starts, edges)


def sort_with_correct(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` sorted ascending and ``c`` in the same order, from one ``np.sort`` of a uint64 key.

    The key is the confidence's bit pattern (for non-negative floats it orders like the
    value) shifted left by one, with the correct bit below it: no argsort, no gather.
    ``x`` must be float64 in [0, 1] without -0.0.
    """
    key = x.view(np.uint64) << np.uint64(1)
    np.bitwise_or(key, c, out=key, dtype=np.uint64, casting="unsafe")
    key.sort()
    cs = (key & np.uint64(1)).astype(np.int64)
    key >>= np.uint64(1)
    return key.view(np.float64), cs


def stats_for_sorted(xs: np.ndarray, cs: np.ndarray, starts: np.ndarray, edges: np.ndarray) -> BinStats:
    """Bin statistics when bin i is the slice ``xs[starts[i]:starts[i+1]]`` of sorted data."""
    n = len(xs)
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    nz = counts > 0
    sum_x = np.zeros(len(starts))
    sum_c = np.zeros(len(starts), dtype=np.int64)
    if nz.any():
        s = starts[nz]  # reduceat over the non-empty slices only (it mishandles empty ones)
        sum_x[nz] = np.add.reduceat(xs, s)
        sum_c[nz] = np.add.reduceat(cs, s)
    return BinStats(edges, counts, sum_x, sum_c)


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
