"""Discrimination and selective prediction: does higher confidence mean more often right?

* AUROC: probability that a random correct prediction has higher confidence than a random
  wrong one (ties count one half); equals scikit-learn's ``roc_auc_score(correct, confidence)``.
* AUPRC: average precision of finding the correct predictions by confidence; equals
  scikit-learn's ``average_precision_score(correct, confidence)``.
* Risk-coverage curve and AURC (Geifman & El-Yaniv 2017, "Selective classification for deep
  neural networks", NeurIPS): answer only the most confident fraction (the coverage) and
  measure the error rate among those answered (the risk); AURC is the mean risk over all
  coverages k/n, k = 1..n (lower is better).
* HELM's ``selective_cov_acc_area`` (mean accuracy over the same coverages, = 1 - AURC) and
  ``selective_acc@10`` (accuracy of the most confident 10%), as in ``calibration.
  get_selective_stats`` that HELM calls (``src/helm/benchmark/metrics/basic_metrics.py``).

Ties.  HELM sorts with ``np.argsort(-probs)``, whose order inside a run of equal confidences
is arbitrary, so the curve would depend on the input order.  Here a run of t tied predictions
with s correct contributes, at each position inside it, the *expected* count over all orders
(s/t per prediction): the result is invariant to permutations and identical to HELM's when
the confidences are distinct.

Everything sorts once, on a single uint64 key (``binning.sort_with_correct``: the
confidence's bit pattern, which orders like the value for non-negative floats, shifted left,
with the correct bit below it), so 10 million predictions take one ``np.sort`` -- no argsort.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from llmcal.core.validation import confidence_and_correct
from llmcal.metrics.binning import sort_with_correct


def sorted_groups(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct confidences ascending, with the number correct and the number of predictions at each.

    ``x`` must be validated float64 in [0, 1] without -0.0, ``c`` bool or 0/1 integers.  Returns ``(values,
    n_correct, n_total)``; ``n_correct`` is int64, ``n_total`` int64.
    """
    xs, lab = sort_with_correct(x, c)
    change = xs[1:] != xs[:-1]
    if change.all():  # no ties: one group per prediction
        return xs, lab, np.ones(len(lab), dtype=np.int64)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    n_correct = np.add.reduceat(lab, starts)
    n_total = np.diff(np.append(starts, len(lab)))
    return xs[starts], n_correct, n_total


def _auroc_from_groups(pos: np.ndarray, tot: np.ndarray) -> float:
    neg = tot - pos
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_before = np.cumsum(neg) - neg
    # twice the Mann-Whitney U, in exact integer arithmetic
    u2 = 2 * int(np.dot(pos, neg_before)) + int(np.dot(pos, neg))
    return u2 / (2.0 * n_pos * n_neg)


def _one_class_warning(metric: str, c: np.ndarray) -> None:
    what = "correct" if c[0] else "wrong"
    warnings.warn(
        f"{metric} is undefined when every prediction is {what} (one class only, n={len(c)}); returning nan",
        UserWarning,
        stacklevel=3,
    )


def auroc(confidence, correct) -> float:
    """Area under the ROC curve of confidence as a detector of correct answers.

    0.5 is chance, 1.0 perfect separation.  Ties count one half (Mann-Whitney).  When only one
    class is present (all correct or all wrong) it is undefined: a ``UserWarning`` says so and
    the result is ``nan``.
    """
    x, c = confidence_and_correct(confidence, correct)
    n_pos = int(np.count_nonzero(c))
    if n_pos == 0 or n_pos == len(c):
        _one_class_warning("AUROC", c)
        return float("nan")
    _, pos, tot = sorted_groups(x, c)
    return _auroc_from_groups(pos, tot)


def _ap_from_groups_desc(pos: np.ndarray, tot: np.ndarray) -> float:
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    precision = np.cumsum(pos) / np.cumsum(tot)
    return float(np.sum(pos * precision) / n_pos)


def auprc(confidence, correct) -> float:
    """Area under the precision-recall curve (average precision) for finding correct answers.

    Step-wise as scikit-learn's ``average_precision_score``: sum over distinct confidence
    thresholds, most confident first, of (recall gained) * precision.  ``nan`` with a
    ``UserWarning`` when nothing is correct; 1.0 when everything is.
    """
    x, c = confidence_and_correct(confidence, correct)
    if not c.any():
        _one_class_warning("AUPRC", c)
        return float("nan")
    _, pos, tot = sorted_groups(x, c)
    return _ap_from_groups_desc(pos[::-1], tot[::-1])


def _cumulative_correct_desc(pos: np.ndarray, tot: np.ndarray) -> np.ndarray:
    """Expected number correct among the k most confident, k = 1..n (ties: expectation over orders)."""
    if len(tot) == int(tot.sum()):  # no ties
        return np.cumsum(pos).astype(np.float64)
    gid = np.repeat(np.arange(len(tot)), tot)
    c_before = np.cumsum(pos) - pos
    t_before = np.cumsum(tot) - tot
    k = np.arange(1, len(gid) + 1)
    return c_before[gid] + (k - t_before[gid]) * (pos / tot)[gid]


def _selective_accuracy(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Accuracy of the k most confident predictions, k = 1..n."""
    _, pos, tot = sorted_groups(x, c)
    cum = _cumulative_correct_desc(pos[::-1], tot[::-1])
    return cum / np.arange(1, len(cum) + 1)


def risk_coverage_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve (Geifman & El-Yaniv 2017), most confident first.

    Returns ``(coverage, risk)``, both (n,): ``coverage[k-1] = k/n`` and ``risk[k-1]`` the error
    rate among the k most confident predictions (ties: expectation over their orders).
    """
    x, c = confidence_and_correct(confidence, correct)
    _, pos, tot = sorted_groups(x, c)
    cum = _cumulative_correct_desc(pos[::-1], tot[::-1])
    k = np.arange(1, len(cum) + 1, dtype=np.float64)
    return k / len(k), (k - cum) / k


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (Geifman & El-Yaniv 2017): mean risk over coverages k/n. Lower is better."""
    _, risk = risk_coverage_curve(confidence, correct)
    return float(np.mean(risk))


def accuracy_at_coverage(confidence, correct, coverage: float = 0.8) -> float:
    """Accuracy of the ``ceil(coverage * n)`` most confident predictions (at least one)."""
    if not (isinstance(coverage, (int, float, np.floating)) and 0.0 < float(coverage) <= 1.0):
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    x, c = confidence_and_correct(confidence, correct)
    n = len(x)
    k = max(1, math.ceil(round(float(coverage) * n, 9)))
    return float(_selective_accuracy(x, c)[k - 1])


def selective_acc_at_10(confidence, correct) -> float:
    """HELM's ``selective_acc@10``: ``accs[int(0.1 * n)]``, accuracy of the top ``int(0.1 n) + 1`` predictions."""
    x, c = confidence_and_correct(confidence, correct)
    return float(_selective_accuracy(x, c)[int(0.1 * len(x))])


def selective_cov_acc_area(confidence, correct) -> float:
    """HELM's ``selective_cov_acc_area``: mean accuracy over coverages k/n, k = 1..n (= 1 - AURC)."""
    x, c = confidence_and_correct(confidence, correct)
    return float(np.mean(_selective_accuracy(x, c)))
