"""Kernel language entropy (Nikitin et al. 2024, "Kernel Language Entropy").

The k samples form a semantic graph W (k, k) = p(entail) + 0.5 p(neutral) (the paper's
``KLE-heat`` with NLI weights (1, 0.5, 0); with the embedding fallback, W = clipped cosine);
its heat kernel ``K = expm(-t L)``, ``L = D - W``, is normalized to unit diagonal and trace 1,
and KLE is its von Neumann entropy ``-tr(K log K)``, here scaled by log k to [0, 1].
Confidence ``kle = 1 - VNE / log k``: 0 when the kernel is flat (every answer different).

LM-Polygraph 0.7's ``KernelLanguageEntropy`` symmetrizes by adding the matrix to its transpose
(``E + E^T``, weights on a 0..2 scale) where llmcal averages (0..1), so its value at ``t = 0.3``
is llmcal's :func:`heat_kernel` at ``t = 0.6``; benchmarks/estimators.py checks that identity.
"""

from __future__ import annotations

import math

import numpy as np

from llmcal.signals.spec import SignalSpec

T_HEAT = 0.3  # the paper's default

SPECS = (
    SignalSpec("kle", "open", ("samples", "embeddings", "nli_model"), "+k samples", "Nikitin et al. 2024",
               "1 - von Neumann entropy of the heat kernel of the samples' semantic graph / log k",
               family="sampled", default=False, computed_by="llmcal.signals.kle:kle_signal"),
)


def heat_kernel(w: np.ndarray, t: float = T_HEAT) -> np.ndarray:
    """``expm(-t (D - W))`` (k, k) of a symmetric weight matrix, by eigendecomposition."""
    w = np.asarray(w, dtype=np.float64)
    w = (w + w.T) / 2.0
    lap = np.diag(w.sum(axis=1)) - w  # (k, k)
    lam, vec = np.linalg.eigh(lap)
    return (vec * np.exp(-t * lam)) @ vec.T


def von_neumann_entropy(k_mat: np.ndarray, scale: bool = True) -> float:
    """``-sum e log e`` over the eigenvalues of the kernel normalized to unit diagonal / k
    (a density matrix); divided by log k when ``scale``."""
    k_mat = np.asarray(k_mat, dtype=np.float64)
    n = len(k_mat)
    diag = np.sqrt(np.diag(k_mat)) + 1e-12
    rho = k_mat / np.outer(diag, diag) / n  # (k, k), trace 1
    e = np.linalg.eigvalsh((rho + rho.T) / 2.0)
    e = e[np.abs(e) > 1e-8]
    h = float(-np.sum(e * np.log(np.abs(e))))
    return h / math.log(n) if scale else h


def kle_weights(entail: np.ndarray, contra: np.ndarray) -> np.ndarray:
    """The paper's NLI weights: p(entail) + 0.5 p(neutral)."""
    neutral = np.clip(1.0 - entail - contra, 0.0, 1.0)
    return entail + 0.5 * neutral


def kle_signal(entail: np.ndarray, contra: np.ndarray, t: float = T_HEAT) -> dict[str, float]:
    """The confidence ``1 - VNE / log k``."""
    vne = von_neumann_entropy(heat_kernel(kle_weights(entail, contra), t))
    return {"kle": float(np.clip(1.0 - vne, 0.0, 1.0))}
