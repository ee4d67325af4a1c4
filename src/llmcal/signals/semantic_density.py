"""Semantic density (Qiu & Miikkulainen 2024, "Semantic Density: Uncertainty Quantification for
Large Language Models through Confidence Measurement in Semantic Space"; in UQLM).

The probability-weighted kernel density of the greedy answer among the k samples:
``SD = sum_i p_i K(answer, s_i) / sum_i p_i``, with ``p_i`` each sample's length-normalized
probability (exp of its mean token log-probability) and the kernel from NLI,
``K = p(entail) + 0.5 p(neutral)`` (distances 0, 0.5, 1 for entailment, neutral,
contradiction; the embedding fallback uses the clipped cosine).  Identical samples are
counted once, as in the paper.  A confidence in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec

SPECS = (
    SignalSpec("semantic_density", "open", ("samples", "token_logprobs", "embeddings", "nli_model"), "+k samples",
               "Qiu & Miikkulainen 2024",
               "probability-weighted semantic similarity of the answer to the k samples",
               family="sampled", default=False, computed_by="llmcal.signals.semantic_density:semantic_density"),
)


def semantic_density(kernel_to_samples: Sequence[float], sample_logprobs: Sequence[np.ndarray],
                     sample_texts: Sequence[str] | None = None) -> float:
    """SD of the answer given its kernel value to each sample (k,) in [0, 1] and the samples'
    token log-probabilities; ``sample_texts`` drops repeated samples (first one kept)."""
    kern = np.clip(np.asarray(kernel_to_samples, dtype=np.float64), 0.0, 1.0)
    if kern.size == 0 or len(sample_logprobs) != kern.size:
        raise ValueError(f"semantic_density: {kern.size} kernel values for {len(sample_logprobs)} samples")
    keep = np.ones(kern.size, dtype=bool)
    if sample_texts is not None:
        seen: set[str] = set()
        for i, t in enumerate(sample_texts):
            keep[i] = t not in seen
            seen.add(t)
    p = np.array([np.exp(np.mean(lp)) if len(lp) else 1.0 for lp in sample_logprobs])  # (k,)
    p, kern = p[keep], kern[keep]
    return float(np.sum(p * kern) / np.sum(p)) if np.sum(p) > 0 else float(np.mean(kern))
