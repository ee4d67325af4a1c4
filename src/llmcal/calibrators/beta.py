"""Beta calibration (Kull, Silva Filho & Flach 2017, "Beta calibration: a well-founded and
easily implemented improvement on logistic calibration for binary classifiers", AISTATS).

The map ``sigmoid(a * ln p - b * ln(1 - p) + c)`` -- the likelihood ratio of two beta
distributions -- includes the identity (a = b = 1, c = 0), sigmoids, inverse sigmoids and
asymmetric shapes that logistic (Platt) calibration cannot express.  It is a logistic
regression on the two features ``ln p`` and ``-ln(1 - p)``.  As in the authors' reference
implementation (the "abm" parametrization), ``a`` and ``b`` are kept non-negative so the
map is monotone: if the unconstrained fit makes one negative, that feature is dropped (its
coefficient fixed at 0) and the fit is redone.
"""

from __future__ import annotations

import numpy as np

from llmcal.calibrators.base import EPS, Calibrator, fit_logistic, sigmoid


def _features(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.column_stack([np.log(p), -np.log1p(-p)])


class BetaCalibration(Calibrator):
    """Beta calibration; learned ``a_``, ``b_`` (both >= 0) and ``c_``."""

    name = "beta"
    _params = ()
    _state = ("a_", "b_", "c_")
    min_samples = 4

    def _fit(self, p: np.ndarray, c: np.ndarray) -> None:
        f = _features(p)
        y = c.astype(np.float64)
        w = fit_logistic(f, y, "BetaCalibration")
        a, b, c0 = float(w[0]), float(w[1]), float(w[2])
        if a < 0 or b < 0:
            keep = 1 if a < 0 else 0  # drop the feature whose coefficient went negative
            w1 = fit_logistic(f[:, [keep]], y, "BetaCalibration")
            coef = max(float(w1[0]), 0.0)
            if coef == 0.0:
                raise ValueError("BetaCalibration: confidence is not positively related to correctness "
                                 "(both shape parameters would be negative); the monotone map does not fit")
            a, b, c0 = (0.0, coef, float(w1[1])) if keep == 1 else (coef, 0.0, float(w1[1]))
        self.a_, self.b_, self.c_ = a, b, c0

    def _predict(self, p: np.ndarray) -> np.ndarray:
        f = _features(p)
        return sigmoid(self.a_ * f[:, 0] + self.b_ * f[:, 1] + self.c_)
