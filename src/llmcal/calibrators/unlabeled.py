"""Label-free adaptation: estimate a target task's accuracy from its questions alone, then rescale to it.

A calibration fitted on one task (the *source*) is applied to another (the *target*) whose
answers are unknown.  When the target is harder or easier, the source calibration's confidence
is off by roughly the accuracy gap; two estimators from the distribution-shift literature, and
the first of them shrunk toward the source, predict the target accuracy from unlabeled confidences:

* **ATC**, Average Thresholded Confidence (Garg et al., "Leveraging unlabeled data to predict
  out-of-distribution performance", ICLR 2022): pick the threshold ``t`` on source confidence
  such that the share of source answers above ``t`` equals the source accuracy; the predicted
  target accuracy is the share of target answers above ``t``.
* **DoC**, Difference of Confidences (Guillory et al., "Predicting with confidence on unseen
  distributions", ICCV 2021): the target accuracy is the source accuracy shifted by the change
  in mean confidence, ``acc_t = acc_s + mean(conf_t) - mean(conf_s)``.
* **ATC shrunk to the source** (``"atc_prior"``, :func:`atc_prior_estimate`): the ATC estimate averaged
  with the source accuracy, ``w * atc + (1 - w) * acc_s`` with ``w = PRIOR_WEIGHT = 0.5``.  ATC is
  right only when the source's confidence-accuracy relation holds on the target; across tasks it is
  not (a 2-option task read at 0.94 against a true 0.63), and shrinking it to the prior trades that
  error for a little bias: leave-one-task-out over the eight multiple-choice tasks, the mean
  |estimate - accuracy| falls from 0.117 to 0.064 at 400 items a task and from 0.087 to 0.066 at 800.
  ``w`` was chosen by *nested* leave-one-task-out (the inner loop over the source tasks alone picks
  0.5 for every target at 400 items, 0.75 for five of eight at 800; 0.5 has the lower mean over both;
  ``python benchmarks/transfer.py RUN... --nested``).

The calibration is then rescaled so that the mean target confidence equals the estimate:
for temperature scaling on option log-likelihoods a new temperature (:func:`temperature_for_mean`,
the mean max-softmax probability falls monotonically with T), for any binary calibrator a shift
in logit space (:func:`logit_shift_for_mean`).  Both keep the ranking of answers unchanged.
:func:`shrink_toward` then optionally pulls each confidence toward the estimate by a factor (the
ranking is kept, the mean is unchanged): after a shift the source's spread of confidence is too wide
for the ranking the target really has, and a narrower one is better calibrated.

Pure numpy; no labels of the target are read anywhere in this module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ESTIMATORS", "atc_threshold", "atc_estimate", "doc_estimate", "atc_prior_estimate", "estimate_accuracy",
           "shrink_toward", "PRIOR_WEIGHT", "CONFIDENCE_SHRINK",
           "temperature_for_mean", "logit_shift_for_mean", "apply_logit_shift", "solve_monotone", "max_softmax",
           "T_BOUNDS"]

#: The temperatures :func:`temperature_for_mean` searches between (as temperature scaling's own bounds).
T_BOUNDS = (0.05, 100.0)
#: The weight of ATC in :func:`atc_prior_estimate` (the rest is the source accuracy), chosen by nested
#: leave-one-task-out over eight multiple-choice tasks among 0, 0.25, 0.5, 0.75 and 1 (module docstring).
PRIOR_WEIGHT = 0.5
#: The factor :func:`shrink_toward` is meant to be used with after a label-free rescaling (1 = no shrink),
#: chosen by the same nested leave-one-task-out among 0.25, 0.5, 0.75 and 1 (0 would drop the ranking);
#: for Platt it is the inner choice for 15 of the 16 (target, size) cells.
CONFIDENCE_SHRINK = 0.25
_EPS = 1e-6


def _conf(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{what}: no confidences")
    if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"{what}: confidences must be finite numbers in [0, 1]")
    return a


def _source(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _conf(conf, "source")
    y = np.asarray(correct, dtype=np.float64).ravel()
    if y.shape != c.shape:
        raise ValueError(f"source: {c.size} confidences but {y.size} correctness labels")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("source: correctness labels must be 0 or 1")
    return c, y


def atc_threshold(source_conf: np.ndarray, source_correct: np.ndarray) -> float:
    """The ATC threshold ``t``: the share of source confidences strictly above ``t`` equals the source accuracy.

    With ``k = round(accuracy * n)`` answers to keep above it, ``t`` is the midpoint between the
    k-th and (k+1)-th largest confidences (-inf when every answer is right, the largest when none is).
    """
    c, y = _source(source_conf, source_correct)
    n = c.size
    k = int(round(y.mean() * n))
    s = np.sort(c)[::-1]  # (n,) descending
    if k >= n:
        return float("-inf")
    if k == 0:
        return float(s[0])
    return float(0.5 * (s[k - 1] + s[k]))


def atc_estimate(source_conf: np.ndarray, source_correct: np.ndarray, target_conf: np.ndarray) -> float:
    """ATC's predicted target accuracy: the share of target confidences above :func:`atc_threshold`."""
    t = atc_threshold(source_conf, source_correct)
    return float(np.mean(_conf(target_conf, "target") > t))


def doc_estimate(source_conf: np.ndarray, source_correct: np.ndarray, target_conf: np.ndarray) -> float:
    """DoC's predicted target accuracy: ``acc_s + mean(conf_t) - mean(conf_s)``, clipped to [0, 1]."""
    c, y = _source(source_conf, source_correct)
    return float(np.clip(y.mean() + _conf(target_conf, "target").mean() - c.mean(), 0.0, 1.0))


def atc_prior_estimate(source_conf: np.ndarray, source_correct: np.ndarray, target_conf: np.ndarray,
                       weight: float = PRIOR_WEIGHT) -> float:
    """ATC shrunk to the source: ``weight * atc + (1 - weight) * source accuracy``.

    ``weight`` 1 is :func:`atc_estimate`, 0 the source accuracy (the constant baseline's confidence).
    """
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"atc_prior_estimate: weight must be in [0, 1], got {weight!r}")
    c, y = _source(source_conf, source_correct)
    return float(w * atc_estimate(c, y, target_conf) + (1.0 - w) * y.mean())


ESTIMATORS = {"atc": atc_estimate, "doc": doc_estimate, "atc_prior": atc_prior_estimate}


def estimate_accuracy(method: str, source_conf: np.ndarray, source_correct: np.ndarray,
                      target_conf: np.ndarray) -> float:
    """The target accuracy predicted by ``method`` (``"atc"``, ``"doc"`` or ``"atc_prior"``) from unlabeled
    target confidences."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown accuracy estimator {method!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[method](source_conf, source_correct, target_conf)


def max_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(n,) the largest option probability of softmax(logits / T) per row of (n, k) ``-inf``-padded logits."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)  # (n, k)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)  # -inf -> 0
    return 1.0 / e.sum(axis=1)  # max entry is exp(0) = 1


def solve_monotone(f, lo: float, hi: float, target: float, increasing: bool, steps: int = 80) -> float:
    """x in [lo, hi] with f(x) = target for a monotone f (bisection); the nearer bound when target is out of range."""
    f_lo, f_hi = f(lo), f(hi)
    if increasing:
        if target <= f_lo:
            return lo
        if target >= f_hi:
            return hi
    else:
        if target >= f_lo:
            return lo
        if target <= f_hi:
            return hi
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def temperature_for_mean(logits: np.ndarray, target_mean: float, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature T with mean(max softmax(logits / T)) = ``target_mean`` (bisection on log T).

    ``logits`` (n, k) option log-likelihoods, ``-inf`` padded.  The mean max-probability falls
    monotonically from ~1 (T -> 0) to mean(1 / k_i) (T -> inf); a target outside that range
    gives the nearer bound of ``bounds``.
    """
    ll = np.asarray(logits, dtype=np.float64)
    if ll.ndim != 2 or ll.shape[1] < 2:
        raise ValueError(f"temperature_for_mean: expected (n, k >= 2) logits, got shape {ll.shape}")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    log_t = solve_monotone(lambda lt: float(max_softmax(ll, np.exp(lt)).mean()), lo, hi, float(target_mean),
                    increasing=False)
    return float(np.exp(log_t))


def logit_shift_for_mean(conf: np.ndarray, target_mean: float, bound: float = 20.0) -> float:
    """The shift b with mean(sigmoid(logit(conf) + b)) = ``target_mean`` (bisection; |b| <= ``bound``)."""
    c = np.clip(_conf(conf, "target"), _EPS, 1.0 - _EPS)
    z = np.log(c) - np.log1p(-c)  # (n,)
    return solve_monotone(lambda b: float(np.mean(1.0 / (1.0 + np.exp(-(z + b))))), -bound, bound, float(target_mean),
                   increasing=True)


def apply_logit_shift(conf: np.ndarray, shift: float) -> np.ndarray:
    """(n,) sigmoid(logit(conf) + shift): a binary calibration moved to another base rate, ranking kept."""
    c = np.clip(np.asarray(conf, dtype=np.float64), _EPS, 1.0 - _EPS)
    return 1.0 / (1.0 + np.exp(-(np.log(c) - np.log1p(-c) + float(shift))))


def shrink_toward(conf: np.ndarray, center: float, factor: float = CONFIDENCE_SHRINK) -> np.ndarray:
    """(n,) ``center + factor * (conf - center)``: each confidence pulled toward ``center`` (the estimated
    accuracy), in [0, 1].  ``factor`` in (0, 1]: 1 leaves ``conf`` as it is; any positive factor keeps
    the ranking of answers (AUROC) and, when ``mean(conf) == center``, the mean."""
    f = float(factor)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"shrink_toward: factor must be in (0, 1], got {factor!r}")
    m = float(center)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"shrink_toward: center must be in [0, 1], got {center!r}")
    c = _conf(conf, "shrink_toward")
    return np.clip(m + f * (c - m), 0.0, 1.0)
