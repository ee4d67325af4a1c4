"""The graph-based family over sampled answers (Lin, Trivedi & Sun 2024, "Generating with Confidence").

The k samples are the nodes of a graph weighted by meaning similarity W (k, k)
(:meth:`~llmcal.signals.similarity.SemanticMatrices.affinity`); from it:

* ``num_semantic_sets``: the number of connected components when answers are joined where
  both directions entail (entailment likelier than contradiction each way, LM-Polygraph's
  rule; on a similarity alone, W >= 0.5 each way); confidence ``(k - sets) / (k - 1)``;
* ``eigval_laplacian``: ``U = sum_j max(0, 1 - lambda_j)`` over the eigenvalues of the normalized
  Laplacian ``I - D^-1/2 W D^-1/2`` (a continuous number of sets, in [1, k]); confidence
  ``(k - U) / (k - 1)``;
* ``degree_matrix``: ``U = trace(k I - D) / k^2`` (LM-Polygraph's ``DegMat``, in [0, 1 - 1/k]);
  confidence ``1 - U k / (k - 1)`` (the mean degree, rescaled);
* ``eccentricity``: the norm of the centred spectral embeddings (eigenvectors with eigenvalue
  below 0.9), ``U`` in [0, sqrt(k - 1)]; confidence ``1 - U / sqrt(k - 1)``.

Every confidence is 1 when all samples mean the same and 0 when all differ; the maps are
linear in LM-Polygraph's uncertainty, so ranks (AUROC, PRR) are the same.
"""

from __future__ import annotations

import math

import numpy as np

from llmcal.signals.spec import SignalSpec

_CITE = "Lin et al. 2024"
SPECS = tuple(
    SignalSpec(name, "open", ("samples", "embeddings", "nli_model"), "+k samples", _CITE, what,
               family="sampled", default=False, computed_by=f"llmcal.signals.graph:{fn}")
    for name, fn, what in (
        ("num_semantic_sets", "num_semantic_sets", "1 - (number of meaning sets - 1) / (k - 1)"),
        ("eigval_laplacian", "eigval_laplacian", "1 - (sum of max(0, 1 - eigenvalue) of the Laplacian - 1) / (k - 1)"),
        ("degree_matrix", "degree_matrix", "1 - trace(k I - D) / (k (k - 1)): the similarity graph's mean degree"),
        ("eccentricity", "eccentricity", "1 - norm of the centred spectral embeddings / sqrt(k - 1)"),
    )
)

ECCENTRICITY_THRESHOLD = 0.9  # eigenvalues kept for the spectral embedding (LM-Polygraph's default)


def _check(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 2:
        raise ValueError(f"similarity: expected a (k, k) matrix with k >= 2, got {w.shape}")
    return (w + w.T) / 2.0


def normalized_laplacian(w: np.ndarray) -> np.ndarray:
    """``I - D^-1/2 W D^-1/2`` (k, k) of a symmetric similarity W."""
    w = _check(w)
    d = np.maximum(w.sum(axis=1), 1e-12)  # (k,)
    inv = 1.0 / np.sqrt(d)
    return np.eye(len(w)) - inv[:, None] * w * inv[None, :]


def num_semantic_sets(w: np.ndarray, contra: np.ndarray | None = None, threshold: float = 0.5) -> int:
    """Connected components of the graph with an edge i-j where i and j entail each other: with
    ``contra``, ``w`` is p(entail) and the rule is entail > contra both ways; without, W >= ``threshold``."""
    w = np.asarray(w, dtype=np.float64)
    k = len(w)
    if contra is not None:
        one_way = w > np.asarray(contra, dtype=np.float64)
        edge = one_way & one_way.T
    else:
        edge = (w >= threshold) & (w.T >= threshold)
    seen = np.zeros(k, dtype=bool)
    sets = 0
    for start in range(k):
        if seen[start]:
            continue
        sets += 1
        stack = [start]
        seen[start] = True
        while stack:
            i = stack.pop()
            for j in np.nonzero(edge[i] & ~seen)[0]:
                seen[j] = True
                stack.append(int(j))
    return sets


def eigval_laplacian(w: np.ndarray) -> float:
    """``sum_j max(0, 1 - lambda_j)`` over the normalized Laplacian's eigenvalues (in [1, k])."""
    lam = np.linalg.eigvalsh(normalized_laplacian(w))
    return float(np.sum(np.maximum(0.0, 1.0 - lam)))


def degree_matrix(w: np.ndarray) -> float:
    """``trace(k I - D) / k^2`` with D the degrees of W (in [0, 1 - 1/k] when W's diagonal is 1)."""
    w = _check(w)
    k = len(w)
    return float(np.sum(k - w.sum(axis=1)) / k ** 2)


def eccentricity(w: np.ndarray, threshold: float = ECCENTRICITY_THRESHOLD) -> float:
    """Frobenius norm of the spectral embeddings (rows of the eigenvectors with eigenvalue
    < ``threshold``) centred on their mean: 0 when the samples agree, up to sqrt(k - 1)."""
    lam, vec = np.linalg.eigh(normalized_laplacian(w))  # (k,), (k, k)
    u = vec[:, lam < threshold]  # (k, kept)
    return float(np.linalg.norm(u - u.mean(axis=0, keepdims=True)))


def graph_signals(w: np.ndarray, contra: np.ndarray | None = None) -> dict[str, float]:
    """All four, as confidences in [0, 1] (see the module docstring); with ``contra``, ``w`` is
    p(entail) (k, k), symmetrized for the spectral ones."""
    k = len(w)
    sets = num_semantic_sets(w, contra)
    w = (np.asarray(w, dtype=np.float64) + np.asarray(w, dtype=np.float64).T) / 2.0
    return {
        "num_semantic_sets": (k - sets) / (k - 1),
        "eigval_laplacian": float(np.clip((k - eigval_laplacian(w)) / (k - 1), 0.0, 1.0)),
        "degree_matrix": float(np.clip(1.0 - degree_matrix(w) * k / (k - 1), 0.0, 1.0)),
        "eccentricity": float(np.clip(1.0 - eccentricity(w) / math.sqrt(k - 1), 0.0, 1.0)),
    }
