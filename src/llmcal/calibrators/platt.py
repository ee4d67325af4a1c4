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

The slope is constrained to be non-negative, so the map is non-decreasing and can never
invert the ranking of answers (issue #15: an unconstrained fit came out with ``a < 0`` on a
task where the confidence ranked answers slightly the wrong way, and the report's "most
overconfident wrong answers" became the least confident ones).  Where the likelihood's
optimum has ``a < 0`` the constrained optimum is ``a = 0``, a constant that says nothing
about any answer; rather than present that as a calibration, ``fit`` refuses with the
slope it found, as beta calibration does for the same data.
"""

from __future__ import annotations

import numpy as np

from llmcal.calibrators.base import Calibrator, fit_logistic, logit, sigmoid


def platt_targets(c: np.ndarray, smooth: bool) -> np.ndarray:
    """Platt's fit targets for correctness ``c`` (n,): 0/1, or with ``smooth`` his Bayesian ones,
    ``(N+ + 1) / (N+ + 2)`` for a right answer and ``1 / (N- + 2)`` for a wrong one."""
    if not smooth:
        return c.astype(np.float64)
    n_pos = float(np.count_nonzero(c))
    n_neg = float(len(c) - n_pos)
    return np.where(c, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def negative_slope_problem(cal: Calibrator) -> str | None:
    """Why a loaded slope ``a_`` is refused (a negative one inverts the ranking of answers), or None."""
    a = getattr(cal, "a_", None)
    if isinstance(a, (int, float)) and a < 0:
        return f"field 'state.a_': {a!r} is negative (it would invert the ranking of answers)"
    return None


class PlattScaling(Calibrator):
    """Platt scaling on the logit of the confidence; learned ``a_`` (slope, >= 0) and ``b_`` (intercept)."""

    name = "platt"
    _params = ("smooth_targets",)
    _state = ("a_", "b_")
    min_samples = 3

    def __init__(self, smooth_targets: bool = True):
        self.smooth_targets = bool(smooth_targets)

    def _fit(self, p: np.ndarray, c: np.ndarray) -> None:
        w = fit_logistic(logit(p)[:, None], platt_targets(c, self.smooth_targets), "PlattScaling")
        if w[0] < 0.0:
            raise ValueError(
                f"PlattScaling: confidence is not positively related to correctness on these {len(c)} "
                f"samples (fitted slope a = {w[0]:.3g} < 0); a negative slope would invert the ranking "
                "of answers, and the monotone fit (a = 0) is a constant, so it is not fitted")
        self.a_ = float(w[0])
        self.b_ = float(w[1])

    def state_problem(self) -> str | None:
        """A loaded slope must be non-negative (a negative one inverts the ranking)."""
        return negative_slope_problem(self) or super().state_problem()

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return sigmoid(self.a_ * logit(p) + self.b_)
