"""Pairwise meaning similarity between answers: from an NLI model, or from sentence embeddings.

The sample-based estimators (``graph``, ``kle``, ``cocoa``, ``semantic_density``, ``sar``)
read the same two matrices over m answers, as LM-Polygraph's ``semantic_matrix_entail`` /
``semantic_matrix_contra``: ``entail[i, j]`` = p(answer i entails answer j) and
``contra[i, j]`` = p(contradiction), from an NLI cross-encoder (``backends/nli.py``,
``--nli_model``) where one is given.  Without one, the fallback is the sentence embeddings
every agreement run has: ``entail = max(cosine, 0)``, ``contra = 1 - entail``, neutral 0
(weaker: embeddings cannot tell "Paris" from "Lyon" as well as entailment can; the run
records which was used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmcal.signals.agreement import cluster_by_founders


@dataclass(frozen=True)
class SemanticMatrices:
    """``entail`` and ``contra`` (m, m) probabilities between m answers; ``source`` "nli" or "embeddings"."""

    entail: np.ndarray
    contra: np.ndarray
    source: str

    def __post_init__(self) -> None:
        e, c = np.asarray(self.entail, dtype=np.float64), np.asarray(self.contra, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] != e.shape[1] or e.shape != c.shape:
            raise ValueError(f"semantic matrices: expected two (m, m) arrays, got {e.shape} and {c.shape}")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(c))):
            raise ValueError("semantic matrices: not finite")
        object.__setattr__(self, "entail", np.clip(e, 0.0, 1.0))
        object.__setattr__(self, "contra", np.clip(c, 0.0, 1.0))

    @property
    def neutral(self) -> np.ndarray:
        return np.clip(1.0 - self.entail - self.contra, 0.0, 1.0)

    def affinity(self) -> np.ndarray:
        """Symmetric similarity W (m, m) in [0, 1]: (entail + entail^T) / 2 (Lin et al. 2024's "entail")."""
        return (self.entail + self.entail.T) / 2.0

    def sub(self, idx) -> "SemanticMatrices":
        """The matrices restricted to the answers ``idx``."""
        idx = np.asarray(idx)
        return SemanticMatrices(self.entail[np.ix_(idx, idx)], self.contra[np.ix_(idx, idx)], self.source)


def from_embeddings(emb: np.ndarray) -> SemanticMatrices:
    """The fallback matrices from unit-norm sentence embeddings (m, d): entail = max(cosine, 0)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected (m, d), got {emb.shape}")
    cos = np.clip(emb @ emb.T, 0.0, 1.0)  # (m, m)
    return SemanticMatrices(cos, 1.0 - cos, "embeddings")


def from_nli(probs: np.ndarray) -> SemanticMatrices:
    """The matrices from NLI probabilities (m, m, 3) over (entailment, neutral, contradiction)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[2] != 3 or probs.shape[0] != probs.shape[1]:
        raise ValueError(f"NLI probabilities: expected (m, m, 3), got {probs.shape}")
    return SemanticMatrices(probs[:, :, 0], probs[:, :, 2], "nli")


def cluster_by_entailment(m: SemanticMatrices) -> np.ndarray:
    """Cluster ids (m,) by bidirectional entailment (Kuhn et al. 2023): each answer joins the first
    cluster whose founding answer it entails and is entailed by (entailment the likeliest class
    both ways)."""
    e, c, n = m.entail, m.contra, m.neutral
    means = (e > c) & (e > n)  # (m, m): i entails j
    return cluster_by_founders(len(e), lambda i, f: bool(means[i, f] and means[f, i]))
