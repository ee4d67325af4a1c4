"""Is the calibration still right?  Drift tests over a stream of labeled answers (pure numpy).

The stream is the served answers that got feedback, in time order: ``confidence`` (what the
user was shown) and ``correct`` (the label).  Three views:

* :func:`cusum_calibration`: the risk-adjusted Bernoulli CUSUM of Steiner, Cook, Farewell &
  Treasure (2000, *Biostatistics* 1(4), "Monitoring surgical performance using risk-adjusted
  cumulative sum charts"), which is Page's CUSUM (1954) on log-likelihood ratios, with each
  answer's own predicted probability as its risk.  Answer ``t`` was shown with confidence
  ``p_t``; under the null its error probability is ``q_t = 1 - p_t + baseline_ece`` (the
  calibration's own held-out ECE is tolerated: it was accepted with it), under the alternative
  the odds of an error are ``odds_ratio`` times larger.  The score of one answer is
  ``W_t = e_t log R - log(1 - q_t + R q_t)`` (``e_t`` = 1 for a wrong answer), the upper sum
  ``S+_t = max(0, S+_{t-1} + W_t)`` grows when the model is over-confident; a lower sum with
  ``1 / odds_ratio`` and ``q_t = 1 - p_t - baseline_ece`` grows when it is under-confident.  The
  alarm is the first ``t`` where either passes ``h = log(arl0)``: a CUSUM of log-likelihood
  ratios raises a false alarm no more often than once in ``e^h`` answers on average (Lorden
  1971), whatever the mix of confidences.
* :func:`ece_interval_check`: the percentile-bootstrap interval of a window's ECE set against
  the baseline: an alarm when even its lower end lies above ``baseline_ece + margin``.  ECE is
  biased upward on small windows, so this is the slower, surer signal.
* :func:`windowed_ece`: ECE, accuracy and mean confidence over consecutive windows of labeled
  answers (for the monitor's table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmcal.core.validation import confidence_and_correct
from llmcal.metrics.bootstrap import bootstrap_ci
from llmcal.metrics.calibration import ece

#: The drift worth an alarm: the odds of a wrong answer this many times what the confidence says.
DEFAULT_ODDS_RATIO = 2.0
#: Labeled answers between false alarms of each one-sided sum on a calibrated stream, at least (h = log).
DEFAULT_ARL0 = 10000.0


@dataclass
class CusumResult:
    """What :func:`cusum_calibration` found: ``alarm_at`` is the 1-based count of labeled answers
    at the first alarm (None: none), ``direction`` "over-confident" or "under-confident"."""

    alarm: bool
    alarm_at: int | None
    direction: str | None
    odds_ratio: float
    h: float
    upper: np.ndarray = field(repr=False)  # (n,) S+_t
    lower: np.ndarray = field(repr=False)  # (n,) S-_t

    def to_dict(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "alarm_at": self.alarm_at, "direction": self.direction,
                "odds_ratio": self.odds_ratio,
                "h": self.h, "n": int(self.upper.size),
                "upper_last": float(self.upper[-1]) if self.upper.size else 0.0,
                "lower_last": float(self.lower[-1]) if self.lower.size else 0.0}


def _check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _scores(x: np.ndarray, wrong: np.ndarray, q_shift: float, ratio: float) -> np.ndarray:
    """Per-answer log-likelihood ratios (n,): odds of error times ``ratio`` against error probability
    ``1 - x + q_shift`` (clipped into (0, 1))."""
    q = np.clip(1.0 - x + q_shift, 1e-6, 1.0 - 1e-6)  # (n,)
    return wrong * np.log(ratio) - np.log1p(q * (ratio - 1.0))


def cusum_calibration(confidence, correct, baseline_ece: float = 0.0, odds_ratio: float = DEFAULT_ODDS_RATIO,
                      arl0: float = DEFAULT_ARL0) -> CusumResult:
    """The two one-sided risk-adjusted CUSUMs (see the module docstring); the sums keep running after the
    alarm (the paths are the whole stream's)."""
    x, c = confidence_and_correct(confidence, correct)  # (n,), (n,)
    baseline_ece = _check_nonneg("baseline_ece", baseline_ece)
    if not (float(odds_ratio) > 1 and np.isfinite(odds_ratio)):
        raise ValueError(f"odds_ratio must be a number > 1, got {odds_ratio!r}")
    if not (float(arl0) > 1 and np.isfinite(arl0)):
        raise ValueError(f"arl0 must be a number of answers > 1, got {arl0!r}")
    wrong = 1.0 - c.astype(np.float64)  # (n,)
    w_up = _scores(x, wrong, baseline_ece, float(odds_ratio))  # (n,) over-confidence evidence
    w_lo = _scores(x, wrong, -baseline_ece, 1.0 / float(odds_ratio))  # (n,) under-confidence evidence
    h = float(np.log(arl0))
    n = x.size
    upper, lower = np.zeros(n), np.zeros(n)
    su = sl = 0.0
    alarm_at = direction = None
    for t in range(n):  # a recursion: each step needs the last (n is the labeled answers, small)
        su, sl = max(0.0, su + w_up[t]), max(0.0, sl + w_lo[t])
        upper[t], lower[t] = su, sl
        if alarm_at is None and (su > h or sl > h):
            alarm_at, direction = t + 1, ("over-confident" if su > h else "under-confident")
    return CusumResult(alarm_at is not None, alarm_at, direction, float(odds_ratio), h, upper, lower)


def ece_interval_check(confidence, correct, baseline_ece: float, margin: float = 0.0, n_bins: int = 10,
                       n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """The window's ECE with its bootstrap interval; ``alarm`` when the interval's low end is above
    ``baseline_ece + margin``."""
    baseline_ece = _check_nonneg("baseline_ece", baseline_ece)
    margin = _check_nonneg("margin", margin)
    point, low, high = bootstrap_ci("ece", confidence, correct, n_resamples=n_resamples, alpha=alpha,
                                    seed=seed, n_bins=n_bins)
    return {"ece": point, "low": low, "high": high, "baseline_ece": baseline_ece, "margin": margin,
            "alarm": bool(np.isfinite(low) and low > baseline_ece + margin), "alpha": alpha}


def windowed_ece(confidence, correct, window: int, n_bins: int = 10) -> list[dict[str, Any]]:
    """ECE, accuracy and mean confidence over consecutive windows of ``window`` labeled answers
    (the last may be shorter); ``start``/``stop`` index the stream."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a whole number of answers >= 1, got {window!r}")
    x, c = confidence_and_correct(confidence, correct)
    out = []
    for start in range(0, x.size, int(window)):
        xs, cs = x[start:start + window], c[start:start + window]
        out.append({"start": start, "stop": start + xs.size, "n": int(xs.size), "ece": ece(xs, cs, n_bins=n_bins),
                    "accuracy": float(np.mean(cs)), "mean_confidence": float(np.mean(xs))})
    return out
