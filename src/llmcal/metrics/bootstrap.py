"""Bootstrap confidence intervals for any metric (Efron & Tibshirani 1993, percentile method).

Resample the n predictions with replacement ``n_resamples`` times, recompute the metric on
each resample, and report the ``alpha/2`` and ``1 - alpha/2`` quantiles.  The resamples
depend only on ``(seed, n, n_resamples)``: every metric of one sample sees the same
resamples, and the result is reproducible.

Named metrics from ``METRIC_SPECS`` take a vectorized path, a chunk of resamples at a time
(about two to four million draws per chunk, so memory stays bounded):

* Means (accuracy, Brier, NLL, ...): row means of the per-prediction values gathered at
  ``n`` uniform indices per resample.
* Ranking metrics (AUROC, AUPRC, AURC, HELM's selective metrics): each resample's counts per
  (distinct confidence, correct) come from one flat ``np.bincount`` over ``resample * n_keys +
  key``; closed forms then give every resample's value at once (AURC and the coverage-accuracy
  area through harmonic numbers).
* Equal-width binned metrics (ECE, MCE, RMSCE, overconfidence error): stratified, which is
  the same distribution with less work.  Drawing n indices uniformly is the same as first
  drawing how many fall in each (bin, correct) stratum -- a multinomial over 2 * n_bins cells
  -- and then drawing that many uniformly inside each stratum.  The counts and accuracies per
  bin come straight from the multinomial; only the confidence sums need the draws, gathered
  stratum by stratum and summed with ``np.add.reduceat`` (no bincount, no key gather).

The remaining names (equal-mass ``ace``, ``ece_10_bin``) and any callable loop over
:func:`bootstrap_resamples`, which yields the very resamples the vectorized path uses, so
the two paths agree value for value.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator

import numpy as np

from llmcal.core.validation import check_n_bins, confidence_and_correct
from llmcal.metrics.binning import uniform_bin_index
from llmcal.metrics.scores import _binary_log_loss
from llmcal.metrics.summary import DEFAULT_N_BINS, METRIC_SPECS, metric_functions

_CHUNK_ELEMENTS = 1 << 21


def resample_indices(n: int, n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield (rows, n) int64 index arrays, ``n_resamples`` rows in all, seeded.

    The chunking depends only on ``n``, so the sequence of resamples is a function of
    ``(seed, n, n_resamples)`` alone.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_resamples, rows):
        m = min(rows, n_resamples - start)
        yield rng.integers(0, n, size=(m, n), dtype=np.int64)


# --- vectorized kernels: each maps an index chunk (m, n) to m metric values -----------------


def _mean_kernel(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda idx: values[idx].mean(axis=1)


class _Stratified:
    """Exact bootstrap of equal-width binned metrics, stratified by (bin, correct).

    ``run`` draws, per resample, the multinomial counts of the 2 * n_bins strata and then,
    stratum by stratum, that many uniform positions inside the stratum; it yields per chunk
    the counts ``(m, 2 * n_bins)``, the confidence sums ``(m, 2 * n_bins)`` and, on request,
    the resamples as (m, n) index arrays into the original data.
    """

    _CHUNK = 1 << 22

    def __init__(self, x: np.ndarray, c: np.ndarray, n_bins: int):
        key = uniform_bin_index(x, n_bins) * 2 + c
        self.n, self.n_bins, self.k = len(x), n_bins, 2 * n_bins
        self.order = np.argsort(key, kind="stable")
        self.sizes = np.bincount(key, minlength=self.k)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.xs = x[self.order]
        ends = self.starts + self.sizes
        # strata whose confidences are all equal (e.g. many exactly 1.0) need no draws for their sums
        self.constant = np.array([s > 0 and self.xs[a] == self.xs[e - 1] and
                                  bool(np.all(self.xs[a:e] == self.xs[a]))
                                  for a, e, s in zip(self.starts, ends, self.sizes, strict=True)])

    def run(self, n_resamples: int, seed: int, want_indices: bool = False):
        n, k = self.n, self.k
        # one stream for the stratum counts and one per stratum, so skipping the draws of a
        # constant stratum changes nothing else
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k + 1)]
        counts = streams[k].multinomial(n, self.sizes / n, size=n_resamples)
        rows = max(1, self._CHUNK // n)
        for r0 in range(0, n_resamples, rows):
            mc = counts[r0 : r0 + rows]
            m = len(mc)
            sums = np.zeros((m, k))
            idx = np.empty((m, n), dtype=np.int64) if want_indices else None
            col_off = np.cumsum(mc, axis=1) - mc  # where each stratum starts in a resample's index row
            for j in np.flatnonzero(self.sizes):
                col = mc[:, j]
                d = int(col.sum())
                if d == 0:
                    continue
                if self.constant[j] and not want_indices:
                    sums[:, j] = col * self.xs[self.starts[j]]
                    continue
                a = int(self.starts[j])
                pos = streams[j].integers(a, a + int(self.sizes[j]), size=d)
                nzr = np.flatnonzero(col)
                seg = np.concatenate([[0], np.cumsum(col[nzr])[:-1]])
                sums[nzr, j] = np.add.reduceat(self.xs[pos], seg)
                if want_indices:
                    row = np.repeat(nzr, col[nzr])
                    within = np.arange(d) - np.repeat(seg, col[nzr])
                    idx.reshape(-1)[row * n + col_off[row, j] + within] = self.order[pos]
            yield mc, sums, idx

    def values(self, mc: np.ndarray, sums: np.ndarray, kind: str) -> np.ndarray:
        cnt = mc[:, 0::2] + mc[:, 1::2]
        corr = mc[:, 1::2]
        sx = sums[:, 0::2] + sums[:, 1::2]
        if kind == "l1":  # sum over bins of |sum(x - correct)| / n
            return np.sum(np.abs(sx - corr), axis=1) / self.n
        nz = cnt > 0
        safe = np.where(nz, cnt, 1).astype(np.float64)
        acc = corr / safe
        conf = sx / safe
        w = cnt / self.n
        if kind == "oe":
            return np.sum(w * conf * np.maximum(conf - acc, 0.0), axis=1)
        gap = np.where(nz, np.abs(acc - conf), 0.0)
        if kind == "l2":
            return np.sqrt(np.sum(gap * gap * w, axis=1))
        return gap.max(axis=1)


def _harmonic(n: int) -> np.ndarray:
    """H[0..n] (H[0] = 0), accumulated in extended precision."""
    h = np.zeros(n + 1, dtype=np.longdouble)
    h[1:] = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.longdouble))
    return h.astype(np.float64)


def _group_kernel(x: np.ndarray, c: np.ndarray, kind: str) -> Callable[[np.ndarray], np.ndarray]:
    # groups = distinct confidences, numbered in *descending* order (most confident first)
    values, inverse = np.unique(x, return_inverse=True)
    g = len(values)
    gid_desc = (g - 1) - inverse.reshape(-1)
    key = gid_desc * 2 + c
    nk = 2 * g
    n = len(x)
    harmonic = _harmonic(n) if kind in ("aurc", "cov_acc_area") else None
    k10 = int(0.1 * n) + 1  # HELM: accs[int(0.1 * n)], 1-based position

    def kernel(idx: np.ndarray) -> np.ndarray:
        m = idx.shape[0]
        kk = key[idx]
        kk += (np.arange(m, dtype=np.intp) * nk)[:, None]
        counts = np.bincount(kk.ravel(), minlength=m * nk).reshape(m, g, 2)
        pos = counts[:, :, 1]
        tot = counts[:, :, 0] + pos
        if kind == "auroc":
            neg = tot - pos
            # groups descending: negatives *below* a group are those after it
            neg_after = neg.sum(axis=1, keepdims=True) - np.cumsum(neg, axis=1)
            u2 = 2 * np.sum(pos * neg_after, axis=1) + np.sum(pos * neg, axis=1)
            p_, n_ = pos.sum(axis=1), neg.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where((p_ > 0) & (n_ > 0), u2 / (2.0 * p_ * n_), np.nan)
        cpos = np.cumsum(pos, axis=1)
        ctot = np.cumsum(tot, axis=1)
        if kind == "auprc":
            prec = np.divide(cpos, ctot, out=np.zeros(cpos.shape), where=ctot > 0)
            p_ = cpos[:, -1]
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(p_ > 0, np.sum(pos * prec, axis=1) / p_, np.nan)
        c_before = cpos - pos
        t_before = ctot - tot
        if kind == "acc@10":
            gi = np.sum(ctot < k10, axis=1)[:, None]
            tb = np.take_along_axis(t_before, gi, axis=1)[:, 0]
            cb = np.take_along_axis(c_before, gi, axis=1)[:, 0]
            pg = np.take_along_axis(pos, gi, axis=1)[:, 0]
            tg = np.take_along_axis(tot, gi, axis=1)[:, 0]
            return (cb + (k10 - tb) * (pg / tg)) / k10
        # sum over positions k of E[correct among top k] / k, group by group:
        # C*dH + s - (s/t)*T*dH with dH = H(T+t) - H(T)
        dh = harmonic[ctot] - harmonic[t_before]
        frac = np.divide(pos, tot, out=np.zeros(pos.shape), where=tot > 0)
        area = np.sum(c_before * dh + pos - frac * t_before * dh, axis=1) / n
        return area if kind == "cov_acc_area" else 1.0 - area

    return kernel


def _vectorized_kernel(name: str, x: np.ndarray, c: np.ndarray, n_bins: int):
    if name == "accuracy":
        return _mean_kernel(c.astype(np.float64))
    if name == "mean_confidence":
        return _mean_kernel(x)
    if name == "overconfidence":
        return _mean_kernel(x - c)
    if name == "ece_1_bin":
        k = _mean_kernel(x - c)
        return lambda idx: np.abs(k(idx))
    if name == "brier":
        return _mean_kernel((x - c) ** 2)
    if name == "nll":
        return _mean_kernel(_binary_log_loss(x, c))
    if name == "n":
        return lambda idx: np.full(idx.shape[0], float(len(x)))
    grouped = {"auroc": "auroc", "auprc": "auprc", "aurc": "aurc", "selective_cov_acc_area": "cov_acc_area",
               "selective_acc@10": "acc@10"}
    if name in grouped:
        return _group_kernel(x, c, grouped[name])
    return None


_STRATIFIED = {"ece": "l1", "rmsce": "l2", "mce": "max", "overconfidence_error": "oe"}


def bootstrap_resamples(metric, confidence, correct, n_resamples: int = 1000, seed: int = 0,
                        n_bins: int | None = None) -> Iterator[np.ndarray]:
    """Yield the resamples ``bootstrap_distribution`` uses for ``metric``, as (m, n) index arrays.

    Equal-width binned names (ece, mce, rmsce, overconfidence_error) are resampled stratified
    by (bin, correct); everything else by :func:`resample_indices`.  Both are n draws with
    replacement, uniform over the predictions.
    """
    x, c = confidence_and_correct(confidence, correct)
    if isinstance(metric, str) and metric in _STRATIFIED:
        nb = DEFAULT_N_BINS if n_bins is None else check_n_bins(n_bins)
        for _, _, idx in _Stratified(x, c, nb).run(int(n_resamples), seed, want_indices=True):
            yield idx
    else:
        yield from resample_indices(len(x), int(n_resamples), seed)


def bootstrap_distribution(metric, confidence, correct, n_resamples: int = 1000, seed: int = 0,
                           n_bins: int | None = None, vectorized: bool = True) -> np.ndarray:
    """The metric on each of ``n_resamples`` bootstrap resamples, shape (n_resamples,).

    ``metric`` is a name from ``METRIC_SPECS`` or a callable(confidence, correct) -> float.
    ``n_bins`` overrides the specs' bin count for binned names.  ``vectorized=False`` forces
    the loop (used to check that both paths agree).
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    x, c = confidence_and_correct(confidence, correct)
    nb = DEFAULT_N_BINS if n_bins is None else check_n_bins(n_bins)
    kernel = None
    if isinstance(metric, str):
        if metric not in METRIC_SPECS:
            raise ValueError(f"metric: unknown name {metric!r}; known: {', '.join(sorted(METRIC_SPECS))} "
                             "(or pass a callable(confidence, correct) -> float)")
        fn = metric_functions(nb)[metric]
        if vectorized:
            kernel = _vectorized_kernel(metric, x, c, nb)
    elif callable(metric):
        fn = metric
    else:
        raise ValueError(f"metric must be a name from METRIC_SPECS or a callable, got {type(metric).__name__}")

    out = np.empty(int(n_resamples))
    if vectorized and isinstance(metric, str) and metric in _STRATIFIED:
        strat = _Stratified(x, c, nb)
        pos = 0
        for mc, sums, _ in strat.run(int(n_resamples), seed):
            out[pos : pos + len(mc)] = strat.values(mc, sums, _STRATIFIED[metric])
            pos += len(mc)
        return out
    pos = 0
    for idx in bootstrap_resamples(metric, x, c, int(n_resamples), seed, nb):
        m = idx.shape[0]
        if kernel is not None:
            out[pos : pos + m] = kernel(idx)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # one-class resamples: nan, dropped by bootstrap_ci
                for j in range(m):
                    out[pos + j] = float(fn(x[idx[j]], c[idx[j]]))
        pos += m
    return out


def bootstrap_ci(metric, confidence, correct, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0,
                 n_bins: int | None = None) -> tuple[float, float, float]:
    """Percentile bootstrap interval: ``(point, low, high)``.

    ``point`` is the metric on the full sample; ``low`` / ``high`` the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the metric over ``n_resamples`` resamples (seeded by ``seed``).
    ``metric``: a name from ``METRIC_SPECS`` (vectorized, binned names use ``n_bins``, default
    15) or any callable(confidence, correct) -> float (a loop).  Resamples where the metric is
    undefined (AUROC with one class) are dropped; if all are, low and high are nan.
    """
    if not (isinstance(alpha, (float, int)) and 0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    x, c = confidence_and_correct(confidence, correct)
    nb = DEFAULT_N_BINS if n_bins is None else check_n_bins(n_bins)
    if isinstance(metric, str) and metric in METRIC_SPECS:
        point = float(metric_functions(nb)[metric](x, c))
    elif callable(metric):
        point = float(metric(x, c))
    else:
        bootstrap_distribution(metric, x, c, 1, seed, n_bins)  # raises the helpful error
        raise AssertionError("unreachable")
    dist = bootstrap_distribution(metric, x, c, n_resamples, seed, n_bins)
    dist = dist[np.isfinite(dist)]
    if dist.size == 0:
        return point, float("nan"), float("nan")
    low, high = np.quantile(dist, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(low), float(high)
