"""Platt scaling (Platt 1999, "Probabilistic outputs for support vector machines and
comparisons to regularized likelihood methods").

A logistic regression of correctness on a score: ``sigmoid(a * s + b)``.  The score here is
the logit of the confidence, so with ``b = 0`` this is binary temperature scaling with
``T = 1 / a``; the bias ``b`` also corrects a constant shift.  (HELM's ``platt_ece_*`` fit the
same map, on the logit of the confidence.)

``smooth_targets=True`` (the default, as in Platt's paper) fits to the targets
``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` instead of 1 and 0: a Bayesian prior that keeps
the fit finite even on small or perfectly separated samples.  With ``False`` the fit is the
plain maximum-likelihood one, and separated data raise ``ValueError``.
"""

from __future__ import annotations

import numpy as np

from llmcal.calibrators.base import Calibrator, fit_logistic, logit, sigmoid


class PlattScaling(Calibrator):
    """Platt scaling on the logit of the confidence; learned ``a_`` (slope) and ``b_`` (intercept)."""

    name = "platt"
    _params = ("smooth_targets",)
    _state = ("a_", "b_")
    min_samples = 3

    def __init__(self, smooth_targets: bool = True):
        self.smooth_targets = bool(smooth_targets)

    def _fit(self, p: np.ndarray, c: np.ndarray) -> None:
        target = c.astype(np.float64)
        if self.smooth_targets:
            n_pos = float(np.count_nonzero(c))
            n_neg = float(len(c) - n_pos)
            target = np.where(c, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        w = fit_logistic(logit(p)[:, None], target, "PlattScaling")
        self.a_ = float(w[0])
        self.b_ = float(w[1])

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return sigmoid(self.a_ * logit(p) + self.b_)
