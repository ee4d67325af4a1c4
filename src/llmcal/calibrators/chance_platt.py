"""Platt scaling with a floor at chance: the three-parameter logistic with its guessing parameter known.

Item response theory's three-parameter logistic (Birnbaum 1968, in Lord & Novick, "Statistical
theories of mental test scores"; Lord 1980) gives the probability that a test taker answers a
multiple-choice item correctly as ``c + (1 - c) * sigmoid(a * (theta - b))``, where ``c`` is
the chance of guessing right.  For a model answering a k-option question that chance is known,
``1 / k``, so only the slope and intercept are fitted::

    u    = (p - 1/k) / (1 - 1/k)          the confidence above chance, clipped to [1e-4, 1 - 1e-4]
    conf = 1/k + (1 - 1/k) * sigmoid(a * logit(u) + b)

Why (issue #15): a calibration fitted on a pool of tasks and applied to another learns the
pool's base rate.  When the pool is mostly 4-option tasks and the target has 2 options, plain
Platt or temperature scaling (which never see k) put the target's answers near the pool's 0.35
accuracy, while even a model that knows nothing is right half the time there.  Here the number
of options enters the map itself, so a 2-option answer can never be given less than 0.5 nor a
4-option one less than 0.25, and the fitted (a, b) describe skill above chance, which travels
between tasks with different k.  Leave-one-task-out over eight multiple-choice tasks on the
embedded model (800 items each; docs/benchmarks.md "Under shift"), applied unchanged on
``option_prob_norm``: mean ECE 0.104 against 0.125 for ``temperature_norm``, 0.130 for
``temperature`` and 0.167 for a constant at the pool's accuracy.

Fitted by maximum likelihood (L-BFGS-B, the analytic gradient) with the slope bounded at
``a >= 0``, so the map is non-decreasing and never inverts the ranking; where the optimum sits
on that bound the confidence is unrelated to correctness and, as :class:`PlattScaling` does,
``fit`` refuses rather than present a constant as a calibration.  ``smooth_targets`` as in
Platt's paper.  The number of options of each answer (``n_options``, (n,) integers >= 2) is
needed by both ``fit`` and ``predict``; :class:`~llmcal.calibrators.calibration.Calibration`
passes the length of each sample's option list, so only multiple-choice runs can use it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from llmcal.calibrators.base import Calibrator, logit, sigmoid
from llmcal.calibrators.platt import negative_slope_problem, platt_targets
from llmcal.core.validation import as_confidence

#: The confidence above chance is clipped to [SKILL_EPS, 1 - SKILL_EPS] before its logit: an answer
#: at or below chance (possible for ``option_prob_norm``, whose argmax need not be the prediction) then
#: sits at a finite point instead of pulling the fit toward it from minus infinity.
SKILL_EPS = 1e-4


def as_n_options(n_options, n: int, who: str) -> np.ndarray:
    """``n_options`` as an (n,) float array of integers >= 2, or a ValueError naming what is wrong."""
    if n_options is None:
        raise ValueError(f"{who} needs the number of options of each answer (n_options): its floor is "
                         "chance, 1/k; only multiple-choice answers have one")
    k = np.asarray(n_options, dtype=np.float64).reshape(-1)
    if k.shape != (n,):
        raise ValueError(f"{who}: n_options has {k.size} entries for {n} confidences")
    bad = ~np.isfinite(k) | (k < 2) | (k != np.round(k))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{who}: n_options[{i}] = {float(k[i])!r}; each answer needs an integer number of options >= 2")
    return k


def skill_logit(p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """logit of the confidence above chance, ``u = (p - 1/k) / (1 - 1/k)`` clipped to ``SKILL_EPS``."""
    g = 1.0 / k
    u = np.clip((p - g) / (1.0 - g), SKILL_EPS, 1.0 - SKILL_EPS)
    return logit(u)


def floored(eta: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``1/k + (1 - 1/k) * sigmoid(eta)``: a logistic with its floor at chance."""
    g = 1.0 / k
    return g + (1.0 - g) * sigmoid(eta)


class ChancePlatt(Calibrator):
    """Platt scaling floored at chance (the 3PL with ``c = 1/k``); learned ``a_`` (>= 0) and ``b_``."""

    name = "platt_chance"
    _params = ("smooth_targets",)
    _state = ("a_", "b_")
    min_samples = 3
    needs_options: ClassVar[bool] = True

    def __init__(self, smooth_targets: bool = True):
        self.smooth_targets = bool(smooth_targets)

    def fit(self, x, correct, n_options=None) -> "ChancePlatt":
        """Fit on confidences ``x`` (n,), ``correct`` (n,) 0/1 and ``n_options`` (n,) integers >= 2."""
        from scipy.optimize import minimize

        p, c = self._check_binary_fit(x, correct)
        k = as_n_options(n_options, len(p), "ChancePlatt")
        y = platt_targets(c, self.smooth_targets)
        z = skill_logit(p, k)  # (n,)
        g = 1.0 / k

        def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
            s = sigmoid(w[0] * z + w[1])
            q = np.clip(g + (1.0 - g) * s, 1e-15, 1.0 - 1e-15)
            loss = -float(np.sum(y * np.log(q) + (1.0 - y) * np.log1p(-q)))
            d_eta = -(y / q - (1.0 - y) / (1.0 - q)) * (1.0 - g) * s * (1.0 - s)  # (n,)
            return loss, np.array([float(d_eta @ z), float(d_eta.sum())])

        res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None), (None, None)], options={"maxiter": 500, "gtol": 1e-9})
        a, b = float(res.x[0]), float(res.x[1])
        if not (np.isfinite(a) and np.isfinite(b)) or (not res.success and np.max(np.abs(res.jac)) > 1e-4 * len(p)):
            raise ValueError(f"ChancePlatt: the fit did not converge on these {len(p)} samples ({res.message})")
        if a <= 1e-8:
            raise ValueError(
                f"ChancePlatt: confidence above chance is not positively related to correctness on these {len(p)} "
                "samples (the fitted slope is at its bound a = 0, a constant), so it is not fitted")
        self.a_, self.b_ = a, b
        return self

    def predict(self, x, n_options=None) -> np.ndarray:
        """Calibrated confidence (n,) in [1/k, 1] from ``x`` (n,) and ``n_options`` (n,)."""
        self._check_fitted()
        p = as_confidence(x, "x")
        k = as_n_options(n_options, len(p), "ChancePlatt")
        return floored(self.a_ * skill_logit(p, k) + self.b_, k)

    def fit_predict(self, x, correct, n_options=None) -> np.ndarray:
        return self.fit(x, correct, n_options).predict(x, n_options)

    def state_problem(self) -> str | None:
        """A loaded slope must be non-negative (a negative one inverts the ranking of answers)."""
        return negative_slope_problem(self) or super().state_problem()
