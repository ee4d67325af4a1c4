"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks", ICML).

One parameter T > 0 divides the logits before the softmax: T > 1 softens an overconfident
model, T < 1 sharpens an underconfident one, and the argmax -- the answer -- never changes.
T is the minimizer of the negative log-likelihood on the calibration set, found by a bounded
scalar search over log T (the NLL is convex in 1/T, hence unimodal in log T).

Two input forms:

* multi-class: ``x`` (n, k) logits (any row-wise shift, e.g. option log-likelihoods; missing
  options padded with ``-inf``, which keep probability 0), ``y`` the index of the right class.
  ``predict`` gives the calibrated top-label confidence, ``predict_proba`` the (n, k) matrix.
  A temperature is a property of the logits, not of the number of classes, so a fitted T
  applies to logits with any number of columns k >= 2 (as scikit-learn 1.8's
  ``_TemperatureScaling`` does): fitted on 4-option items, it scales 2- and 5-option ones.
  ``n_classes_`` records the fit's number of columns, for information only.
* binary: ``x`` (n,) a confidence in [0, 1], ``y`` 0/1 correct; the confidence is mapped
  through its logit, ``sigmoid(logit(p) / T)``.

The search runs over log T in ``bounds`` (default 0.01 to 10,000).  Summed option
log-likelihoods of full-sentence options differ by tens of nats, so optima above 100 --
the old upper bound, hit on two tasks in issue #15 -- are real.  On logits an optimum at
the *upper* bound is still a meaningful answer: the NLL keeps falling as the option
distribution flattens, i.e. the option scores carry no usable signal and the best
confidence is (nearly) chance, 1/k for k options.  Such a fit is kept, with
``at_bound_ = "upper"`` and a ``note_`` saying so (both in ``to_dict``, hence in
results.json's params), rather than dropped as "not fitted".  An optimum at the lower bound
(separable data), and any bound on a binary confidence (T -> infinity maps every
confidence to 0.5, which is no calibration), still raise ``ValueError`` with the reason.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from llmcal.calibrators.base import Calibrator, check_fit_sample, logit, sigmoid
from llmcal.core.validation import (
    as_confidence,
    as_correct,
    as_labels,
    check_same_length,
)


def _as_logits(x, name: str = "x") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2:
        raise ValueError(f"{name} must be an (n, k) logit matrix with n >= 1, k >= 2, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN (first at row {int(np.flatnonzero(np.isnan(a).any(axis=1))[0])})")
    if np.isposinf(a).any():
        raise ValueError(f"{name} contains +inf (only -inf is allowed, for padded options)")
    empty = ~np.isfinite(a).any(axis=1)
    if empty.any():
        raise ValueError(f"{name}: row {int(np.flatnonzero(empty)[0])} has no finite logit")
    return a


def _shifted(z: np.ndarray) -> np.ndarray:
    """Logits minus their row maximum: max 0, padding stays -inf."""
    return z - z.max(axis=1, keepdims=True)


class TemperatureScaling(Calibrator):
    """Temperature scaling; ``temperature_`` is the fitted T.

    ``bounds``: the search interval for T.  A fit on logits whose optimum sits at the upper
    bound is kept and flagged (``at_bound_``, ``note_``); one at the lower bound, or a binary
    fit at either bound, raises ``ValueError`` (see the module docstring).
    """

    name = "temperature"
    _params = ("bounds",)
    _state = ("temperature_", "mode_", "n_classes_")
    min_samples = 2
    accepts_logits = True

    #: loaded temperatures outside this range are refused whatever the file's own bounds say
    SANE_RANGE = (1e-3, 1e5)

    def __init__(self, bounds: tuple[float, float] = (0.01, 1e4)):
        self.bounds = tuple(float(b) for b in bounds)

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, x, y) -> "TemperatureScaling":
        lo, hi = self.bounds
        if not (0.0 < lo < 1.0 < hi and math.isfinite(hi)):
            raise ValueError(f"bounds must satisfy 0 < low < 1 < high < inf, got {self.bounds}")
        if np.ndim(x) == 2:
            z = _shifted(_as_logits(x))
            labels = as_labels(y, z.shape[1], "y")
            check_same_length(z, labels, "x", "y")
            rows = np.arange(len(labels))
            if not np.isfinite(z[rows, labels]).all():
                i = int(np.flatnonzero(~np.isfinite(z[rows, labels]))[0])
                raise ValueError(f"y: row {i} points at a padded (-inf) option")
            check_fit_sample(type(self).__name__, z.argmax(axis=1) == labels, self.min_samples)
            zy = z[rows, labels]

            def objective(log_t: float) -> float:
                t = math.exp(log_t)
                return float(np.mean(np.log(np.sum(np.exp(z / t), axis=1)) - zy / t))

            mode, k = "multiclass", int(z.shape[1])
        else:
            p = as_confidence(x, "x")
            c = as_correct(y, "y")
            check_same_length(p, c, "x", "y")
            check_fit_sample(type(self).__name__, c, self.min_samples)
            sz = np.where(c, -1.0, 1.0) * logit(p)

            def objective(log_t: float) -> float:
                return float(np.mean(np.logaddexp(0.0, sz / math.exp(log_t))))

            mode, k = "binary", 2

        a, b = math.log(lo), math.log(hi)
        res = minimize_scalar(objective, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
        if not res.success:
            raise ValueError(f"TemperatureScaling: the search did not converge ({res.message})")
        note = None
        if mode == "multiclass" and b - res.x < 1e-3 * (b - a):
            log_t = b
            note = (f"the NLL optimum is at the upper bound T = {hi:g}: the option scores carry (almost) no "
                    "signal about the right answer on this data, so the calibrated confidence is (nearly) "
                    "chance, 1/k for k options")
        elif min(res.x - a, b - res.x) < 1e-3 * (b - a):
            t = math.exp(res.x)
            raise ValueError(
                f"TemperatureScaling: the NLL optimum is at the edge of bounds {self.bounds} (T = {t:.4g}): "
                + ("the confidence carries (almost) no signal about correctness" if t > 1 else
                   "the data are (almost) perfectly separated")
                + "; not fitting rather than returning a meaningless T")
        else:
            log_t = float(res.x)
            if objective(0.0) < objective(log_t):  # T = 1 is optimal to within the search tolerance
                log_t = 0.0
        self.temperature_ = float(hi) if note is not None else float(math.exp(log_t))
        for key in ("at_bound_", "note_"):
            self.__dict__.pop(key, None)
        if note is not None:
            self.at_bound_, self.note_ = "upper", note
        self.mode_ = mode
        self.n_classes_ = k
        return self

    def state_problem(self) -> str | None:
        """A loaded temperature must be positive and within the search range (-1.5 would invert
        every confidence, 1e-300 force them to 0 or 1)."""
        if not hasattr(self, "temperature_"):
            return None
        t = float(self.temperature_)
        lo, hi = (float(b) for b in self.bounds)
        lo, hi = max(lo, self.SANE_RANGE[0]), min(hi, self.SANE_RANGE[1])  # the file's bounds could be edited too
        if not (lo <= t <= hi):
            return (f"field 'state.temperature_': {t!r} is outside the fitted range [{lo:g}, {hi:g}] "
                    "(a temperature must be positive; the file was edited or damaged)")
        return None

    # -- the optional flag of a fit at its upper bound ----------------------------------------

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.is_fitted and getattr(self, "at_bound_", None):
            d["at_bound_"], d["note_"] = self.at_bound_, self.note_
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TemperatureScaling":
        obj = super().from_dict(d)
        if d.get("at_bound_"):
            obj.at_bound_, obj.note_ = str(d["at_bound_"]), str(d.get("note_", ""))
        return obj

    # -- prediction --------------------------------------------------------------------------

    @property
    def acts_on_logits(self) -> bool:
        """True when fitted on an (n, k) logit matrix: ``predict`` then takes logits, any k >= 2."""
        return self.is_fitted and self.mode_ == "multiclass"

    def _logits_for_predict(self, x) -> np.ndarray:
        """(n, k) logits shifted to row maximum 0, for any k >= 2 (the fit's k is not required)."""
        self._check_fitted()
        if self.mode_ != "multiclass":
            raise ValueError("this TemperatureScaling was fitted on a binary confidence; "
                             "pass x of shape (n,)")
        return _shifted(_as_logits(x))

    def predict_proba(self, x) -> np.ndarray:
        """Calibrated probabilities: (n, k) for logits (0 where padded); (n, 2) [wrong, right] for binary."""
        self._check_fitted()
        if self.mode_ == "binary":
            p = self.predict(x)
            return np.column_stack([1.0 - p, p])
        e = np.exp(self._logits_for_predict(x) / self.temperature_)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x) -> np.ndarray:
        """Calibrated confidence (n,): the top-label probability for logits, else sigmoid(logit(p) / T)."""
        self._check_fitted()
        if self.mode_ == "multiclass":
            z = self._logits_for_predict(x)
            return 1.0 / np.sum(np.exp(z / self.temperature_), axis=1)
        if np.ndim(x) != 1:
            raise ValueError("this TemperatureScaling was fitted on a binary confidence; pass x of shape (n,)")
        return sigmoid(logit(as_confidence(x, "x")) / self.temperature_)


class PerTokenTemperatureScaling(TemperatureScaling):
    """Temperature scaling of the *length-normalized* option log-likelihoods (``temperature_norm``).

    The same fit as :class:`TemperatureScaling`; what differs is what a
    :class:`~llmcal.calibrators.calibration.Calibration` feeds it in a multiple-choice run:
    each option's log-likelihood divided by its number of tokens (the logits of
    ``option_prob_norm``, Malinin & Gales 2021) instead of the summed one.  Summed scores
    penalize long options and their spread grows with the options' length, so one T fitted
    on short-option tasks does not carry to full-sentence options; per-token scores are on
    one scale whatever the length (issue #15).  The confidence is the calibrated probability
    of the *prediction* (the option with the highest summed log-likelihood, as every signal),
    which need not be the per-token argmax; at T = 1 it is ``option_prob_norm``.
    """

    name = "temperature_norm"
    per_token_logits = True
