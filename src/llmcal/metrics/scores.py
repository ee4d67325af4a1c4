"""Proper scoring rules: Brier score and negative log-likelihood (log loss).

Both take either a binary confidence ``(n,)`` with ``correct`` ``(n,)`` -- the probability
that the answer is right, scored against whether it was -- or a multi-class probability matrix
``(n, k)`` with class-index labels ``(n,)``.
"""

from __future__ import annotations

import numpy as np

from llmcal.core.validation import confidence_and_correct, probs_and_labels

#: Probabilities are clipped to [EPS, 1 - EPS] before taking logs, as scikit-learn's
#: ``log_loss`` does for float64 input, so a confident mistake costs about 36 nats, not inf.
EPS = float(np.finfo(np.float64).eps)


def brier_score(confidence, correct) -> float:
    """Brier score (Brier 1950), lower is better.

    Binary: ``mean((confidence - correct)**2)`` in [0, 1], equal to scikit-learn's
    ``brier_score_loss(correct, confidence)``.  Multi-class (``confidence`` an (n, k)
    probability matrix, ``correct`` the label indices): the original multi-category score
    ``mean(sum_j (p_j - [y == j])**2)`` in [0, 2], equal to scikit-learn's
    ``brier_score_loss(y, probs, scale_by_half=False)``.
    """
    if np.ndim(confidence) == 2:
        p, y = probs_and_labels(confidence, correct)
        d = p.copy()
        d[np.arange(len(y)), y] -= 1.0
        return float(np.mean(np.einsum("ij,ij->i", d, d)))
    x, c = confidence_and_correct(confidence, correct)
    d = x - c
    return float(np.dot(d, d) / len(d))


def nll(confidence, correct) -> float:
    """Negative log-likelihood (log loss) in nats, lower is better.

    Binary: ``-mean(c log p + (1 - c) log(1 - p))`` with ``p`` clipped to ``[EPS, 1 - EPS]``;
    multi-class (``confidence`` an (n, k) probability matrix, ``correct`` the labels):
    ``-mean(log p[label])`` with the same clipping.  Matches scikit-learn's ``log_loss``.
    """
    if np.ndim(confidence) == 2:
        p, y = probs_and_labels(confidence, correct)
        py = np.clip(p[np.arange(len(y)), y], EPS, 1.0 - EPS)
        return float(-np.mean(np.log(py)))
    x, c = confidence_and_correct(confidence, correct)
    return float(np.mean(_binary_log_loss(x, c)))


def _binary_log_loss(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per-prediction log loss of validated ``x`` (float64) and ``c`` (bool)."""
    p = np.clip(x, EPS, 1.0 - EPS)
    return -np.where(c, np.log(p), np.log1p(-p))
