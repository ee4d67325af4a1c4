"""The calibrator interface, scikit-learn style, and what every calibrator shares.

* ``__init__`` only stores parameters (no data, no work).
* ``fit(x, correct) -> self`` learns state; learned attributes end in ``_``.
* ``predict(x)`` returns the calibrated confidence, shape (n,), in [0, 1].
* ``to_dict()`` gives a JSON-able dict: ``"name"``, ``"version"``, the init parameters and the
  learned state, flat (so ``d["temperature_"]`` is the fitted temperature); ``from_dict(d)``
  rebuilds an object whose ``predict`` is bitwise identical (floats survive JSON exactly:
  Python writes the shortest repr that round-trips).

Fitting fails loudly -- a ``ValueError`` saying why -- where it cannot work: one class only
(every answer right, or every answer wrong), fewer samples than the calibrator needs, an
optimizer that does not converge.  It never falls back to returning its input unchanged,
which netcal's temperature scaling was found to do silently.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import numpy as np

from llmcal.core.validation import as_confidence, as_correct, check_same_length

#: Confidences are clipped to [EPS, 1 - EPS] before a logit or log is taken.
EPS = 1e-12


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (exact 0/1 only at +-inf)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _to_json_value(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_to_json_value(e) for e in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_to_json_value(e) for e in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"cannot serialize non-finite value {v!r}")
    return v


class Calibrator:
    """Base class.  Subclasses set ``name``, ``_params`` (init parameter names), ``_state``
    (learned attribute names, each ending in ``_``) and ``_array_state`` (those stored as
    float64 arrays), and implement ``_fit`` and ``_predict``."""

    name: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()
    _state: ClassVar[tuple[str, ...]] = ()
    _array_state: ClassVar[tuple[str, ...]] = ()
    #: the fewest samples ``fit`` accepts
    min_samples: ClassVar[int] = 2
    #: whether ``fit`` also takes an (n, k) logit matrix and class indices (temperature scaling
    #: does: it then scales option log-likelihoods instead of one confidence)
    accepts_logits: ClassVar[bool] = False
    #: for a calibrator that accepts logits: whether a multiple-choice calibration feeds it the
    #: per-token (length-normalized) option log-likelihoods instead of the summed ones
    per_token_logits: ClassVar[bool] = False
    #: whether ``fit`` and ``predict`` also take each answer's number of options (``n_options``, (n,)):
    #: a calibrator whose floor is chance, 1/k (:class:`~llmcal.calibrators.chance_platt.ChancePlatt`)
    needs_options: ClassVar[bool] = False

    # -- the scikit-learn-style surface ---------------------------------------------------

    def fit(self, x, correct) -> "Calibrator":
        """Learn the calibration map from confidences ``x`` (n,) in [0, 1] and ``correct`` (n,) 0/1."""
        p, c = self._check_binary_fit(x, correct)
        self._fit(p, c)
        return self

    def predict(self, x) -> np.ndarray:
        """Calibrated confidence (n,) in [0, 1]."""
        self._check_fitted()
        return self._predict(as_confidence(x, "x"))

    def fit_predict(self, x, correct) -> np.ndarray:
        return self.fit(x, correct).predict(x)

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._params}

    @property
    def is_fitted(self) -> bool:
        return all(hasattr(self, k) for k in self._state)

    def state_problem(self) -> str | None:
        """What is wrong with a loaded fitted state (a damaged or hand-edited file), or None.

        The base class checks that the probability outputs named in ``_probability_state``
        lie in [0, 1]; a calibrator with other constraints extends it.
        """
        for key in getattr(self, "_probability_state", ()):
            if hasattr(self, key):
                arr = np.asarray(getattr(self, key), dtype=np.float64)
                if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
                    return f"field 'state.{key}': values outside [0, 1]"
        return None

    @property
    def acts_on_logits(self) -> bool:
        """True when the fitted map takes (n, k) logits rather than (n,) confidences."""
        return False

    # -- serialization ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: name, version, parameters and (when fitted) the learned state."""
        d: dict[str, Any] = {"name": self.name, "version": 1}
        for k in self._params:
            d[k] = _to_json_value(getattr(self, k))
        if self.is_fitted:
            for k in self._state:
                d[k] = _to_json_value(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibrator":
        """Rebuild from :meth:`to_dict`'s output (also after a JSON round trip)."""
        if d.get("name") != cls.name:
            raise ValueError(f"from_dict: expected name {cls.name!r}, got {d.get('name')!r}")
        obj = cls(**{k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in cls._params if k in d})
        present = [k for k in cls._state if k in d]
        if present and len(present) != len(cls._state):
            missing = sorted(set(cls._state) - set(present))
            raise ValueError(f"from_dict: incomplete state for {cls.name!r}, missing {missing}")
        for k in present:
            v = d[k]
            setattr(obj, k, np.asarray(v, dtype=np.float64) if k in cls._array_state else v)
        return obj

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # -- helpers ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._params)
        return f"{type(self).__name__}({params})"

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(x, correct) first")

    def _check_binary_fit(self, x, correct) -> tuple[np.ndarray, np.ndarray]:
        p = as_confidence(x, "x")
        c = as_correct(correct, "correct")
        check_same_length(p, c, "x", "correct")
        check_fit_sample(type(self).__name__, c, self.min_samples)
        return p, c

    def _fit(self, p: np.ndarray, c: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def check_fit_sample(who: str, c: np.ndarray, min_samples: int) -> None:
    """Raise unless there are enough samples and both outcomes occur."""
    n = len(c)
    if n < min_samples:
        raise ValueError(f"{who} needs at least {min_samples} samples to fit, got {n}")
    k = int(np.count_nonzero(c))
    if k == 0 or k == n:
        what = "correct" if k else "wrong"
        raise ValueError(f"{who} cannot be fitted: all {n} samples are {what} (one class only); "
                         "the calibration map is not identifiable")


def fit_logistic(features: np.ndarray, target: np.ndarray, who: str, max_iter: int = 200) -> np.ndarray:
    """Maximum-likelihood logistic regression with an intercept, by damped Newton steps.

    ``features`` (n, d), ``target`` (n,) in [0, 1] (soft targets allowed).  Returns ``w``
    (d + 1,), intercept last.  No regularization, so the answer is the MLE; where the MLE
    does not exist (perfectly separated hard targets) or Newton does not converge, it raises
    ``ValueError`` instead of returning something arbitrary.
    """
    n, d = features.shape
    X = np.hstack([features, np.ones((n, 1))])
    w = np.zeros(d + 1)

    def loss(w_: np.ndarray) -> float:
        z = X @ w_
        return float(np.sum(np.logaddexp(0.0, z) - target * z))

    cur = loss(w)
    converged = False
    for _ in range(max_iter):
        p = sigmoid(X @ w)
        grad = X.T @ (p - target)
        gmax = float(np.max(np.abs(grad)))
        if gmax <= 1e-9 * n:
            converged = True
            break
        hess = (X * (p * (1.0 - p))[:, None]).T @ X
        try:
            step = np.linalg.solve(hess + 1e-12 * np.eye(d + 1), grad)
        except np.linalg.LinAlgError:
            raise ValueError(f"{who}: singular Hessian (the inputs carry no information)") from None
        t = 1.0
        new = loss(w - step)
        while new > cur and t > 1e-10:
            t /= 2.0
            new = loss(w - t * step)
        if new > cur:  # no step decreases the loss: at the optimum to machine precision
            converged = gmax <= 1e-6 * n
            break
        w, cur = w - t * step, new
        if np.max(np.abs(w)) > 1e4:
            break
    if np.max(np.abs(w)) > 1e4 or (np.all((target == 0) | (target == 1))
                                   and np.max(np.abs(sigmoid(X @ w) - target)) < 1e-4):
        raise ValueError(f"{who}: the data are perfectly separated by confidence, so the maximum-likelihood "
                         "fit does not exist (coefficients diverge); fit on more data")
    if not converged:
        raise ValueError(f"{who}: Newton's method did not converge in {max_iter} iterations")
    return w
