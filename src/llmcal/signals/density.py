"""Density of a hidden state under the calibration pool: how unlike the fitted data an answer is.

Unsupervised scores on the model's hidden state ``h`` (d,) of one answer, against Gaussians
fitted on the hidden states of the calibration pool (no labels):

* **Mahalanobis** (Lee et al. 2018, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS): one mean per class and a
  covariance shared by the classes; the score is the distance to the nearest class mean,
  ``min_k (h - mu_k)^T S^-1 (h - mu_k)``.  Here the classes are the calibration pool's
  tasks (the labels Lee et al. use are not needed: a task is the unit a shift happens in).
* **RMD**, the relative Mahalanobis distance (Ren et al. 2021, "A Simple Fix to Mahalanobis
  Distance for Improving Near-OOD Detection"): the same minus the distance under one
  background Gaussian fitted on the whole pool, ``MD_k(h) - MD_0(h)``, which removes the
  directions every input varies along and keeps those that separate the pool's data from
  other data.

With d = 576 and a pool of a few hundred items the sample covariance is singular, so it is
shrunk towards a scaled identity by the Ledoit & Wolf 2004 formula ("A well-conditioned
estimator for large-dimensional covariance matrices"), which needs no tuning.  Distances
are divided by d (the mean squared standardized deviation, about 1 in-distribution), so
their scale does not depend on the hidden size.

Stored as signals (``score`` of :mod:`llmcal.signals.spec`): ``mahalanobis`` as an
uncertainty (``exp(-MD / d)``, 1 = at a class mean), ``rmd`` as log-odds (``sigmoid(-RMD / d)``).
They need a fitted pool, so they are computed where the probe is fitted
(``probe/shift.py``), not by ``measure``; their family ``density`` is off by default.

Shapes: ``H`` (n, d) float; ``groups`` (n,) labels; scores (n,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec

_BY = "llmcal.signals.density:"
SPECS = (
    SignalSpec("mahalanobis", "mc", ("hidden_states",), "free", "Lee et al. 2018",
               "distance of the hidden state to the nearest calibration task's mean (shared shrunk covariance), "
               "stored as exp(-distance / hidden size)", family="density", default=False,
               computed_by=_BY + "GaussianDensity.mahalanobis", score="uncertainty"),
    SignalSpec("rmd", "mc", ("hidden_states",), "free", "Ren et al. 2021",
               "relative Mahalanobis distance: the same minus the distance under one background Gaussian, "
               "stored as sigmoid(-RMD / hidden size)", family="density", default=False,
               computed_by=_BY + "GaussianDensity.relative_mahalanobis", score="log_odds"),
)
METHODS = ("mahalanobis", "rmd")


def ledoit_wolf(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean (d,), shrunk covariance (d, d) and the shrinkage in [0, 1] of rows ``X`` (n, d).

    ``(1 - s) * S + s * mu * I`` with ``S`` the (biased) sample covariance, ``mu = tr(S) / d``
    and ``s`` the Ledoit-Wolf estimate of the optimal weight.
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 rows, got {n}")
    mean = X.mean(axis=0)
    Z = X - mean  # (n, d)
    S = Z.T @ Z / n  # (d, d)
    mu = float(np.trace(S)) / d
    delta = float(np.sum((S - mu * np.eye(d)) ** 2)) / d  # squared distance of S to mu * I, per dimension
    # beta: the variance of S's entries around their mean (Ledoit & Wolf 2004, lemma 3.4)
    sq = np.einsum("ij,ij->i", Z, Z)  # (n,) squared norms
    beta = float(np.sum(sq ** 2) / n - np.sum(S ** 2)) / (d * n)
    s = 1.0 if delta <= 0 else float(np.clip(beta / delta, 0.0, 1.0))
    return mean, (1.0 - s) * S + s * mu * np.eye(d), s


def _whitener(cov: np.ndarray) -> np.ndarray:
    """``L`` (d, d) with ``L @ L.T = cov^-1``, so ``||(h - m) @ L||^2`` is the squared Mahalanobis distance."""
    w, V = np.linalg.eigh(cov)
    floor = max(float(w.max()), 1e-300) * 1e-10
    return V / np.sqrt(np.maximum(w, floor))


@dataclass
class GaussianDensity:
    """Class means with one shared shrunk covariance, and a background Gaussian (for RMD).

    ``means_`` (k, d) in whitened coordinates ``mu_k @ L``; ``L_`` (d, d) the shared whitener;
    ``bg_mean_`` (d,) and ``bg_L_`` (d, d) the background's; ``classes_`` the k class names.
    """

    means_: np.ndarray
    L_: np.ndarray
    bg_mean_: np.ndarray
    bg_L_: np.ndarray
    classes_: list[str]

    @classmethod
    def fit(cls, H: np.ndarray, groups: Sequence[str] | None = None) -> "GaussianDensity":
        """Fit on the pool's hidden states ``H`` (n, d), ``groups`` (n,) their tasks (None: one class)."""
        H = np.asarray(H, dtype=np.float64)
        if H.ndim != 2 or not np.isfinite(H).all():
            raise ValueError(f"hidden states: expected a finite (n, d) matrix, got shape {H.shape}")
        g = np.zeros(len(H), dtype=int).astype(str) if groups is None else np.asarray(groups).astype(str)
        if len(g) != len(H):
            raise ValueError(f"groups: {len(g)} labels for {len(H)} hidden states")
        classes = sorted(set(g.tolist()))
        small = [c for c in classes if int(np.sum(g == c)) < 2]
        if small:
            raise ValueError(f"hidden states: class {small[0]!r} has fewer than 2 items")
        mu = np.stack([H[g == c].mean(axis=0) for c in classes])  # (k, d)
        _, cov, _ = ledoit_wolf(H - mu[np.searchsorted(classes, g)])  # tied covariance of the class residuals
        L = _whitener(cov)
        bg_mean, bg_cov, _ = ledoit_wolf(H)
        return cls(mu @ L, L, bg_mean, _whitener(bg_cov), classes)

    @property
    def dim(self) -> int:
        return int(self.L_.shape[0])

    def mahalanobis(self, H: np.ndarray) -> np.ndarray:
        """Squared distance to the nearest class mean, divided by d, (n,); ``H`` (n, d) or (d,)."""
        Z = np.atleast_2d(np.asarray(H, dtype=np.float64)) @ self.L_  # (n, d)
        # ||z - m||^2 = ||z||^2 - 2 z.m + ||m||^2, for every class at once
        d2 = (np.einsum("ij,ij->i", Z, Z)[:, None] - 2.0 * Z @ self.means_.T
              + np.einsum("ij,ij->i", self.means_, self.means_)[None, :])  # (n, k)
        return np.maximum(d2.min(axis=1), 0.0) / self.dim

    def background(self, H: np.ndarray) -> np.ndarray:
        """Squared distance under the background Gaussian, divided by d, (n,)."""
        Z = (np.atleast_2d(np.asarray(H, dtype=np.float64)) - self.bg_mean_) @ self.bg_L_
        return np.einsum("ij,ij->i", Z, Z) / self.dim

    def mahalanobis_one(self, h: np.ndarray) -> float:
        """:meth:`mahalanobis` of one hidden state ``h`` (d,), on vectors only (the serving path).

        The d x d product runs in float32 (the hidden states' own precision; about half the time
        of float64, relative error ~1e-6 on a distance compared with a threshold), the rest in float64.
        """
        if not hasattr(self, "_L32"):
            self._L32 = self.L_.astype(np.float32)
            self._mnorm = np.einsum("ij,ij->i", self.means_, self.means_)  # (k,)
        z = (np.asarray(h, dtype=np.float32) @ self._L32).astype(np.float64)  # (d,)
        d2 = float(z @ z) - 2.0 * (self.means_ @ z) + self._mnorm  # (k,)
        return max(float(d2.min()), 0.0) / self.dim

    def relative_mahalanobis(self, H: np.ndarray) -> np.ndarray:
        """RMD (Ren et al. 2021): :meth:`mahalanobis` minus :meth:`background`, (n,)."""
        return self.mahalanobis(H) - self.background(H)

    def score(self, H: np.ndarray, method: str) -> np.ndarray:
        """The shift score of ``method`` (:data:`METHODS`), higher = less like the pool, (n,)."""
        if method == "mahalanobis":
            return self.mahalanobis(H)
        if method == "rmd":
            return self.relative_mahalanobis(H)
        raise ValueError(f"unknown shift method {method!r}; known: {', '.join(METHODS)}")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"means_": self.means_, "L_": self.L_, "bg_mean_": self.bg_mean_, "bg_L_": self.bg_L_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], classes: Sequence[str]) -> "GaussianDensity":
        missing = [k for k in ("means_", "L_", "bg_mean_", "bg_L_") if k not in arrays]
        if missing:
            raise ValueError(f"shift density: missing arrays {missing}")
        return cls(np.asarray(arrays["means_"], dtype=np.float64), np.asarray(arrays["L_"], dtype=np.float64),
                   np.asarray(arrays["bg_mean_"], dtype=np.float64), np.asarray(arrays["bg_L_"], dtype=np.float64),
                   [str(c) for c in classes])


def stored_value(raw: float, method: str) -> float:
    """A distance as a sample's signal value in [0, 1] (see the module docstring), higher = more typical."""
    from llmcal.signals.spec import encode

    return encode(raw, "uncertainty") if method == "mahalanobis" else encode(-raw, "log_odds")
