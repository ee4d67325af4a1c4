"""Calibration error: ECE and its relatives, and the data behind a reliability diagram.

A model is calibrated when, among the predictions it makes with confidence p, a fraction p
is correct.  Binned estimators group predictions by confidence and compare, in each bin, the
mean confidence with the accuracy:

* ECE, expected calibration error (Naeini et al. 2015, "Obtaining well calibrated
  probabilities using Bayesian binning", AAAI; Guo et al. 2017, "On calibration of modern
  neural networks", ICML): sum over bins of (bin size / n) * |accuracy - mean confidence|,
  ``norm="l1"``.
* RMSCE, the root-mean-square version, ``norm="l2"``; MCE, the maximum gap over non-empty
  bins, ``norm="max"`` (Naeini et al. 2015).
* ACE, adaptive calibration error (Nixon et al. 2019, "Measuring calibration in deep
  learning", CVPR workshops): ECE over equal-mass bins, ``strategy="quantile"``.
* HELM's ``ece_10_bin`` and ``ece_1_bin`` (Liang et al. 2022, "Holistic evaluation of language
  models"), reproduced from the ``calibration`` package HELM calls (``get_ece_em`` /
  ``get_ece`` in Kumar et al. 2019's uncertainty-calibration; HELM
  ``src/helm/benchmark/metrics/basic_metrics.py``, ``compute_calibration_metrics``).
* Overconfidence error (Thulasidasan et al. 2019, "On mixup training", NeurIPS).

Bin conventions are those of :mod:`llmcal.metrics.binning`, which makes ``ece`` equal
netcal's ``ECE`` / ``MCE`` and torchmetrics' ``binary_calibration_error`` (l1 / l2 / max),
and ``reliability_data`` equal scikit-learn's ``calibration_curve`` on the non-empty bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmcal.core.validation import (
    as_confidence,
    as_correct,
    check_n_bins,
    check_norm,
    check_same_length,
    check_strategy,
    confidence_and_correct,
    probs_and_labels,
)
from llmcal.metrics.binning import (
    BinStats,
    bin_stats,
    helm_equal_mass_edges,
    sort_with_correct,
    stats_for_sorted,
    uniform_gap_sums,
)


def _gap_error(counts: np.ndarray, sum_conf: np.ndarray, sum_correct: np.ndarray, norm: str) -> float:
    """Calibration error from per-bin statistics (1-D arrays); empty bins carry no weight."""
    nz = counts > 0
    cnt = counts[nz].astype(np.float64)
    gap = np.abs(sum_correct[nz] / cnt - sum_conf[nz] / cnt)
    if norm == "l1":
        return float(np.sum(gap * (cnt / cnt.sum())))
    if norm == "l2":
        return float(np.sqrt(np.sum(gap * gap * (cnt / cnt.sum()))))
    return float(gap.max())


def accuracy(confidence, correct=None) -> float:
    """Fraction correct.  ``accuracy(correct)`` or ``accuracy(confidence, correct)``."""
    if correct is None:
        return float(np.mean(as_correct(confidence, "correct")))
    _, c = confidence_and_correct(confidence, correct)
    return float(np.mean(c))


def mean_confidence(confidence, correct=None) -> float:
    """Mean confidence (``correct``, if given, is only checked for length)."""
    if correct is None:
        return float(np.mean(as_confidence(confidence)))
    x, _ = confidence_and_correct(confidence, correct)
    return float(np.mean(x))


def overconfidence(confidence, correct) -> float:
    """Mean confidence minus accuracy: > 0 overconfident, < 0 underconfident (signed ``ece_1_bin``)."""
    x, c = confidence_and_correct(confidence, correct)
    return float(np.mean(x) - np.mean(c))


def ece(confidence, correct, n_bins: int = 15, strategy: str = "uniform", norm: str = "l1") -> float:
    """Binned calibration error of a binary confidence.

    ``confidence`` (n,) in [0, 1], ``correct`` (n,) of 0/1 or bool.  ``strategy="uniform"``
    gives the ECE of Naeini et al. 2015 / Guo et al. 2017 (equal-width bins),
    ``"quantile"`` the ACE of Nixon et al. 2019 (equal-mass bins); ``norm`` selects ECE
    ("l1"), RMSCE ("l2") or MCE ("max").  Empty bins are skipped.  Equals netcal's
    ``ECE(bins).measure`` / ``MCE`` and torchmetrics' ``binary_calibration_error`` on the same
    bins (see the reference tests).
    """
    check_norm(norm)
    check_strategy(strategy)
    n_bins = check_n_bins(n_bins)
    if norm == "l1" and strategy == "uniform":
        # the hot path: one blocked pass, range-checked block by block, one bincount of
        # (x - correct) per bin: sum_b (n_b / n) |acc_b - conf_b| = sum_b |sum_{i in b} (x_i - c_i)| / n
        x = as_confidence(confidence, check_range=False)
        c = as_correct(correct)
        check_same_length(x, c, "confidence", "correct")
        return float(np.sum(np.abs(uniform_gap_sums(x, c, n_bins, check_range=True))) / len(x))
    x, c = confidence_and_correct(confidence, correct)
    s = bin_stats(x, c, n_bins, strategy)
    return _gap_error(s.counts, s.sum_confidence, s.sum_correct, norm)


def ace(confidence, correct, n_bins: int = 15) -> float:
    """Adaptive calibration error (Nixon et al. 2019): ECE over ``n_bins`` equal-mass bins."""
    return ece(confidence, correct, n_bins=n_bins, strategy="quantile", norm="l1")


def mce(confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Maximum calibration error (Naeini et al. 2015): the largest |accuracy - confidence| over non-empty bins."""
    return ece(confidence, correct, n_bins=n_bins, strategy=strategy, norm="max")


def rmsce(confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Root-mean-square calibration error: the l2 version of ECE, weights = bin sizes."""
    return ece(confidence, correct, n_bins=n_bins, strategy=strategy, norm="l2")


def ece_10_bin(confidence, correct) -> float:
    """HELM's ``ece_10_bin``: L1 calibration error over 10 equal-mass bins, HELM's way.

    HELM (``compute_calibration_metrics``) calls ``calibration.get_ece_em(max_probs, correct,
    num_bins=10)``: bin boundaries halfway between the sorted confidences at the
    ``np.array_split`` chunk borders (see :func:`llmcal.metrics.binning.helm_equal_mass_edges`),
    right-closed bins, plug-in estimate.  This differs from :func:`ace` (quantile edges,
    left-closed bins) on ties and edge values, so it has its own implementation.  HELM notes
    it needs about 300 examples to be reliable.
    """
    x, c = confidence_and_correct(confidence, correct)
    xs, cs = sort_with_correct(x, c)
    bounds = helm_equal_mass_edges(xs, 10)
    # right-closed bins (b_{i-1}, b_i]: bin i ends after the last value <= b_i
    ends = np.searchsorted(xs, bounds, side="right")
    ends[-1] = len(xs)
    starts = np.concatenate([[0], ends[:-1]])
    s = stats_for_sorted(xs, cs, starts, np.concatenate([[0.0], bounds]))
    return _gap_error(s.counts, s.sum_confidence, s.sum_correct, "l1")


def ece_1_bin(confidence, correct) -> float:
    """HELM's ``ece_1_bin`` (``calibration.get_ece(..., num_bins=1)``): |mean confidence - accuracy|."""
    x, c = confidence_and_correct(confidence, correct)
    return float(abs(np.mean(x) - np.mean(c)))


def overconfidence_error(confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Overconfidence error, OE (Thulasidasan et al. 2019).

    Sum over bins of (bin size / n) * mean confidence * max(mean confidence - accuracy, 0):
    ECE restricted to the overconfident bins, each weighted by its confidence.
    """
    x, c = confidence_and_correct(confidence, correct)
    s = bin_stats(x, c, n_bins, strategy)
    nz = s.counts > 0
    cnt = s.counts[nz].astype(np.float64)
    conf = s.sum_confidence[nz] / cnt
    acc = s.sum_correct[nz] / cnt
    return float(np.sum((cnt / cnt.sum()) * conf * np.maximum(conf - acc, 0.0)))


def toplabel_ece(probs, labels, n_bins: int = 15, strategy: str = "uniform", norm: str = "l1") -> float:
    """Top-label ECE of a multi-class probability matrix (Guo et al. 2017).

    ``probs`` (n, k) with rows summing to 1, ``labels`` (n,) class indices.  The confidence
    is the largest probability of a row and the prediction is correct when its class (the
    first one on ties, as ``np.argmax``) is the label; then as :func:`ece`.
    """
    p, y = probs_and_labels(probs, labels)
    return ece(p.max(axis=1), p.argmax(axis=1) == y, n_bins=n_bins, strategy=strategy, norm=norm)


def classwise_ece(probs, labels, n_bins: int = 15, strategy: str = "uniform", norm: str = "l1") -> float:
    """Class-wise ECE (Kull et al. 2019, "Beyond temperature scaling", NeurIPS).

    The mean over classes j of the calibration error of ``probs[:, j]`` as the probability that
    the label is j; for ``norm="l1"`` this is the "marginal" calibration error of Kumar et al.
    2019.  Every column counts, including classes that never occur.
    """
    p, y = probs_and_labels(probs, labels)
    errs = [ece(p[:, j], y == j, n_bins=n_bins, strategy=strategy, norm=norm) for j in range(p.shape[1])]
    return float(np.mean(errs))


@dataclass
class ReliabilityData:
    """What a reliability diagram shows, per bin: edges, counts, mean confidence, accuracy.

    ``mean_confidence`` and ``accuracy`` are NaN for empty bins.  ``to_dict`` gives plain lists
    for JSON (NaN -> None) and ``from_dict`` reads them back.
    """

    edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.counts = np.asarray(self.counts)
        self.mean_confidence = np.asarray(self.mean_confidence, dtype=np.float64)
        self.accuracy = np.asarray(self.accuracy, dtype=np.float64)
        k = len(self.edges) - 1
        for name in ("counts", "mean_confidence", "accuracy"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"ReliabilityData.{name} must have len(edges) - 1 = {k} entries, "
                                 f"got shape {getattr(self, name).shape}")

    @property
    def n_bins(self) -> int:
        return len(self.counts)

    @property
    def n(self) -> int:
        return int(np.sum(self.counts))

    def ece(self, norm: str = "l1") -> float:
        """The calibration error these bins give (the same number :func:`ece` returns)."""
        check_norm(norm)
        nz = self.counts > 0
        cnt = np.asarray(self.counts, dtype=np.float64)
        return _gap_error(cnt, np.where(nz, self.mean_confidence * cnt, 0.0),
                          np.where(nz, self.accuracy * cnt, 0.0), norm)

    def to_dict(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> list:
            return [None if not math.isfinite(v) else float(v) for v in a.tolist()]

        return {
            "edges": [float(v) for v in self.edges.tolist()],
            "counts": [int(v) for v in np.asarray(self.counts).tolist()],
            "mean_confidence": clean(self.mean_confidence),
            "accuracy": clean(self.accuracy),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReliabilityData":
        def nan(v: list) -> np.ndarray:
            return np.array([np.nan if e is None else e for e in v], dtype=np.float64)

        return cls(np.asarray(d["edges"], dtype=np.float64), np.asarray(d["counts"], dtype=np.int64),
                   nan(d["mean_confidence"]), nan(d["accuracy"]))


def _reliability_from_stats(s: BinStats) -> ReliabilityData:
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = s.counts.astype(np.float64)
        conf = np.where(s.counts > 0, s.sum_confidence / cnt, np.nan)
        acc = np.where(s.counts > 0, s.sum_correct / cnt, np.nan)
    return ReliabilityData(s.edges.copy(), s.counts.astype(np.int64), conf, acc)


def reliability_data(confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> ReliabilityData:
    """Per-bin counts, mean confidence and accuracy: the data of a reliability diagram.

    Same bins as :func:`ece`; on the non-empty bins, ``accuracy`` and ``mean_confidence``
    are scikit-learn's ``calibration_curve`` ``prob_true`` and ``prob_pred``.
    """
    check_n_bins(n_bins)
    check_strategy(strategy)
    x, c = confidence_and_correct(confidence, correct)
    return _reliability_from_stats(bin_stats(x, c, n_bins, strategy))
