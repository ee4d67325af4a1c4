"""EigenScore (Chen et al. 2024, "INSIDE: LLMs' Internal States Retain the Power of Hallucination Detection").

The differential entropy of the k samples' embeddings: with Z (k, d) the embeddings,
``J_d = I_d - 1/d 1 1^T`` and ``S = Z J_d Z^T + alpha I_k`` (k, k),
``EigenScore = (1/k) sum_j log lambda_j(S)``: low when the samples sit together in
embedding space, higher as they spread.  The paper embeds with the model's own middle-layer
state of the last token; llmcal uses the sentence embeddings the agreement step already has
(LM-Polygraph's ``EigenScore`` takes whatever ``sample_embeddings`` it is given).

Unbounded real score, higher = less sure: stored as ``sigmoid(-EigenScore)``
(``score="log_odds"``), mapped to a probability by the calibration step.
"""

from __future__ import annotations

import numpy as np

from llmcal.signals.spec import SignalSpec, encode

ALPHA = 1e-3  # the paper's (and LM-Polygraph's) regularizer

SPECS = (
    SignalSpec("eigenscore", "open", ("samples", "embeddings"), "+k samples", "Chen et al. 2024",
               "sigmoid(-EigenScore): mean log-eigenvalue of the k sampled answers' embedding covariance",
               family="sampled", default=False, score="log_odds",
               computed_by="llmcal.signals.eigenscore:eigenscore"),
)


def eigenscore(emb: np.ndarray, alpha: float = ALPHA) -> float:
    """The raw EigenScore of k embeddings (k, d); eigenvalues <= 0 count as 1e-10 (LM-Polygraph's rule)."""
    z = np.asarray(emb, dtype=np.float64)  # (k, d)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"embeddings: expected (k, d) with k >= 2, got {z.shape}")
    d = z.shape[1]
    s = z.sum(axis=1)  # (k,): Z 1
    cov = z @ z.T - np.outer(s, s) / d  # (k, k) = Z J_d Z^T without forming J_d
    lam = np.linalg.eigvalsh(cov + alpha * np.eye(len(z)))
    return float(np.mean(np.log(np.where(lam > 0, lam, 1e-10))))


def eigenscore_signal(emb: np.ndarray) -> dict[str, float]:
    return {"eigenscore": encode(-eigenscore(emb), "log_odds")}
