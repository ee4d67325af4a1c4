"""Input checks shared by the metrics and the calibrators.

Every public metric and every calibrator goes through these, so a bad input fails the
same way everywhere: a ``ValueError`` that names the argument and says what is wrong
(NaN, infinity, out of [0, 1], wrong shape, mismatched lengths) and where.
The checks are written to be cheap on 10 million values (a min and a max,
no temporary arrays) because the metrics themselves are.  They live in ``core`` because
both ``metrics`` and ``calibrators`` need them and neither may import the other.
"""

from __future__ import annotations

import numpy as np


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.ravel())[0])


def check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if not 1 <= int(n_bins) <= 1_000_000:
        raise ValueError(f"n_bins must be in [1, 1000000], got {n_bins}")
    return int(n_bins)


def check_strategy(strategy: str) -> str:
    if strategy not in ("uniform", "quantile"):
        raise ValueError(f"strategy must be 'uniform' (equal-width) or 'quantile' (equal-mass), got {strategy!r}")
    return strategy


def check_norm(norm: str) -> str:
    if norm not in ("l1", "l2", "max"):
        raise ValueError(f"norm must be 'l1' (ECE), 'l2' (RMSCE) or 'max' (MCE), got {norm!r}")
    return norm


def as_confidence(x, name: str = "confidence", check_range: bool = True) -> np.ndarray:
    """A 1-D float64 array of values in [0, 1]; -0.0 is turned into 0.0.

    ``check_range=False`` skips the range/NaN check (and the -0.0 fix) for a caller that
    checks each block itself and calls ``as_confidence`` again to raise the message.
    """
    try:
        a = np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise ValueError(f"{name} must be a 1-D array of numbers: {err}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per prediction), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not check_range:
        return a
    lo, hi = a.min(), a.max()  # NaN propagates through both
    if not (lo >= 0.0 and hi <= 1.0):
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError(f"{name} contains NaN (first at index {_first_bad(np.isnan(a))})")
        if np.isinf(lo) or np.isinf(hi):
            raise ValueError(f"{name} contains inf (first at index {_first_bad(np.isinf(a))})")
        i = _first_bad((a < 0.0) | (a > 1.0))
        raise ValueError(f"{name} must be in [0, 1]; found {a[i].item()!r} at index {i}")
    if lo == 0.0:
        a = a + 0.0  # -0.0 -> 0.0, so the bit pattern orders like the value
    return a


def as_correct(c, name: str = "correct") -> np.ndarray:
    """A 1-D bool array from 0/1 numbers or bools (a bool array is returned as is)."""
    try:
        a = np.asarray(c)
    except Exception as err:
        raise ValueError(f"{name} must be a 1-D array of 0/1 or bool: {err}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one 0/1 per prediction), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.integer):
        # one pass, no temporary: as unsigned, a negative value is huge, so max <= 1 checks both ends
        if a.view(np.dtype(f"u{a.dtype.itemsize}")).max() > 1:
            i = _first_bad((a != 0) & (a != 1))
            raise ValueError(f"{name} must be 0/1 or bool; found {a[i].item()!r} at index {i}")
        return a.astype(bool)
    if np.issubdtype(a.dtype, np.floating):
        ok = (a == 0.0) | (a == 1.0)
        if not ok.all():
            i = _first_bad(~ok)
            what = "NaN" if np.isnan(a[i]) else repr(a[i].item())
            raise ValueError(f"{name} must be 0/1 or bool; found {what} at index {i}")
        return a == 1.0
    raise ValueError(f"{name} must be 0/1 or bool, got dtype {a.dtype}")


def check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} have different lengths ({len(a)} vs {len(b)})")


def confidence_and_correct(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    x = as_confidence(confidence, "confidence")
    c = as_correct(correct, "correct")
    check_same_length(x, c, "confidence", "correct")
    return x, c


def as_probs(p, name: str = "probs", atol: float = 1e-4) -> np.ndarray:
    """An (n, k) float64 matrix of probabilities whose rows sum to 1 (within atol)."""
    try:
        a = np.asarray(p)
    except Exception as err:
        raise ValueError(f"{name} must be an (n, k) array of probabilities: {err}") from None
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2:
        raise ValueError(f"{name} must be an (n, k) matrix with n >= 1 and k >= 2, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    lo, hi = a.min(), a.max()
    if not (lo >= 0.0 and hi <= 1.0):
        if np.isnan(lo) or np.isnan(hi):
            i = _first_bad(np.isnan(a))
            raise ValueError(f"{name} contains NaN (first at row {i // a.shape[1]})")
        if np.isinf(lo) or np.isinf(hi):
            i = _first_bad(np.isinf(a))
            raise ValueError(f"{name} contains inf (first at row {i // a.shape[1]})")
        i = _first_bad((a < 0) | (a > 1))
        raise ValueError(f"{name} must be in [0, 1]; found {a.ravel()[i].item()!r} at row {i // a.shape[1]}")
    s = a.sum(axis=1)
    bad = np.abs(s - 1.0) > atol
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(f"{name} rows must sum to 1; row {i} sums to {s[i].item()!r}")
    return a


def probs_and_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """A validated (n, k) probability matrix and its (n,) class indices, of one length."""
    p = as_probs(probs, "probs")
    y = as_labels(labels, p.shape[1], "labels")
    if len(y) != len(p):
        raise ValueError(f"probs and labels have different lengths ({len(p)} vs {len(y)})")
    return p, y


def as_labels(y, k: int, name: str = "labels") -> np.ndarray:
    """A 1-D int64 array of class indices in [0, k)."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class index per row), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{name} must be integer class indices")
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        raise ValueError(f"{name} must be integer class indices, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.min() < 0 or a.max() >= k:
        i = _first_bad((a < 0) | (a >= k))
        raise ValueError(f"{name} must be in [0, {k}); found {a[i]} at index {i}")
    return a
