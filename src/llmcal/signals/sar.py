"""Shifting attention to relevance: TokenSAR and SAR (Duan et al. 2024, "Shifting Attention to
Relevance: Towards the Predictive Uncertainty Quantification of Free-Form LLMs").

* ``token_sar``: the answer's negative log-probability with each token weighted by its
  relevance, ``R_t = 1 - sim(answer, answer without token t)`` normalized to sum 1:
  ``sum_t -log p_t * R_t / sum R`` (>= 0; stored as ``exp(-U)``);
* ``sar``: over the k samples, each sample's TokenSAR probability ``q_i = exp(-TokenSAR_i)``
  is shifted by the relevance of the others, ``E_i = -log(q_i + sum_{j != i} sim(i, j) q_j / t)``
  with ``t = 0.001``, and ``SAR = mean_i E_i`` (can be negative; stored as ``sigmoid(-SAR)``).

The similarities come from the caller: the paper and LM-Polygraph use a cross-encoder; llmcal
uses the run's sentence embeddings (``+embedder passes``: one embedding per answer token).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec, encode

SAR_T = 0.001  # the paper's temperature

SPECS = (
    SignalSpec("token_sar", "open", ("token_logprobs", "top_logprobs", "embeddings"), "+embedder passes", "Duan et al. 2024",
               "exp(-relevance-weighted negative log-probability of the answer's tokens)",
               family="sar", default=False, score="uncertainty", computed_by="llmcal.signals.sar:token_sar"),
    SignalSpec("sar", "open", ("samples", "token_logprobs", "top_logprobs", "embeddings"), "+embedder passes", "Duan et al. 2024",
               "sigmoid(-SAR): the samples' TokenSAR probabilities shifted by their mutual relevance",
               family="sar", default=False, score="log_odds", computed_by="llmcal.signals.sar:sar"),
)


def token_texts(token_logprobs: np.ndarray, top_logprobs: Sequence[Sequence[tuple[str, float]]]) -> list[str] | None:
    """The text of each generated token, read from the per-step top-k alternatives: the entry
    whose log-probability is the chosen token's (the same number from the same softmax).  None
    when a chosen token is not among its step's alternatives (a sampled low-probability token)."""
    out = []
    for lp, alts in zip(token_logprobs, top_logprobs):
        match = [t for t, a in alts if abs(float(a) - float(lp)) <= 1e-9]
        if not match:
            return None
        out.append(match[0])
    return out if len(out) == len(token_logprobs) else None


def without_each_token(token_texts: Sequence[str]) -> list[str]:
    """The answer with token t removed, for each t (the texts whose similarity gives ``R_t``)."""
    return ["".join(token_texts[:t]) + "".join(token_texts[t + 1:]) for t in range(len(token_texts))]


def token_sar(token_logprobs: np.ndarray, token_similarity: np.ndarray) -> float:
    """Raw TokenSAR: ``sum_t -log p_t R_t / sum R`` with ``R_t = 1 - token_similarity[t]``;
    equal weights when no token changes the meaning (sum R = 0)."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    r = 1.0 - np.clip(np.asarray(token_similarity, dtype=np.float64), 0.0, 1.0)
    if lp.shape != r.shape or lp.size == 0:
        raise ValueError(f"token_sar: {lp.size} log-probabilities for {r.size} relevances")
    w = r / r.sum() if r.sum() > 0 else np.full(len(r), 1.0 / len(r))
    return float(np.sum(-lp * w))


def sar(token_sars: Sequence[float], sentence_similarity: np.ndarray, t: float = SAR_T) -> float:
    """Raw SAR of k samples from their TokenSARs (k,) and similarity matrix (k, k)."""
    q = np.exp(-np.asarray(token_sars, dtype=np.float64))  # (k,)
    s = np.asarray(sentence_similarity, dtype=np.float64)
    if s.shape != (len(q), len(q)):
        raise ValueError(f"sar: similarity {s.shape} for {len(q)} samples")
    shifted = (s * (1.0 - np.eye(len(q))) * q[None, :]).sum(axis=1) / t  # (k,)
    return float(np.mean(-np.log(shifted + q)))


def sar_signals(token_sar_answer: float, token_sars: Sequence[float], sentence_similarity: np.ndarray) -> dict:
    return {"token_sar": encode(token_sar_answer, "uncertainty"),
            "sar": encode(-sar(token_sars, sentence_similarity), "log_odds")}
