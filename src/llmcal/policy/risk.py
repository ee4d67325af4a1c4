"""Choose the abstention threshold for a target error rate, with a finite-sample guarantee.

Selection with Guaranteed Risk (SGR; Geifman & El-Yaniv 2017, "Selective
classification for deep neural networks", Algorithm 1): a binary search over
the calibration confidences for the lowest threshold whose exact
Clopper-Pearson upper bound on the error rate among answered items stays
under the target.  Each of the K = ceil(log2 m) tested thresholds uses level
delta / K, so by the union bound, with probability at least 1 - delta over
the calibration sample, the error rate among answered questions of new,
exchangeable questions is at most the target at the returned threshold.
If no tested threshold passes, the policy abstains on everything (threshold
above 1) rather than pretend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class RiskControl:
    target_error: float
    delta: float
    threshold: float  # answer when confidence >= threshold (> 1: never answer)
    cal_coverage: float
    cal_error: float | None
    cal_error_upper: float | None
    n_cal: int

    def to_dict(self) -> dict:
        return asdict(self)

    def evaluate(self, confidence, correct) -> dict:
        """Coverage and error actually reached on other (test) items."""
        conf = np.asarray(confidence, dtype=float)
        corr = np.asarray(correct, dtype=bool)
        answered = conf >= self.threshold
        k = int(answered.sum())
        return {
            "coverage": k / len(conf) if len(conf) else float("nan"),
            "answered": k,
            "error": float(1.0 - corr[answered].mean()) if k else None,
        }


def clopper_pearson_upper(errors: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """One-sided exact upper bound on a binomial rate: P(rate <= bound) >= 1 - delta."""
    from scipy.stats import beta

    errors = np.asarray(errors, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        ub = beta.ppf(1.0 - delta, errors + 1.0, n - errors)
    return np.where(errors >= n, 1.0, ub)


def risk_controlled_threshold(confidence, correct, target_error: float = 0.10, delta: float = 0.05) -> RiskControl:
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=bool)
    if conf.shape != corr.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of one length, got {conf.shape} and {corr.shape}")
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must be in (0, 1), got {target_error}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    m = len(conf)
    if m == 0:
        raise ValueError("confidence is empty: need calibration items")
    asc = np.sort(conf)  # (m,) c_(1) <= ... <= c_(m)
    k_tests = max(1, int(np.ceil(np.log2(m))))
    lo, hi = 0, m - 1  # candidate threshold = asc[z]; lower z answers more
    best: tuple[int, int, float] | None = None  # (n answered, errors, bound)
    best_z = None
    for _ in range(k_tests):
        z = int(np.ceil((lo + hi) / 2))
        answered = conf >= asc[z]
        n = int(answered.sum())
        errors = int((~corr[answered]).sum())
        bound = float(clopper_pearson_upper(np.array([errors]), np.array([n]), delta / k_tests)[0])
        if bound <= target_error:
            best, best_z = (n, errors, bound), z
            hi = z
        else:
            lo = z
        if hi - lo <= 0:
            break
    if best is None:
        return RiskControl(target_error, delta, float("inf"), 0.0, None, None, m)
    n, errors, bound = best
    return RiskControl(
        target_error=target_error,
        delta=delta,
        threshold=float(asc[best_z]),
        cal_coverage=n / m,
        cal_error=errors / n,
        cal_error_upper=bound,
        n_cal=m,
    )
