"""Monte-Carlo sequence entropy of the sampled answers, and its length-normalized variant.

The predictive entropy of the answer distribution, estimated from k sampled answers
(Kuhn et al. 2023; Malinin & Gales 2021 "Uncertainty Estimation in Autoregressive
Structured Prediction" for the length-normalized form):

* ``mc_sequence_entropy``: ``H = -mean_i log p(s_i | x)``, the mean negative log-probability
  of the samples (LM-Polygraph's ``MonteCarloSequenceEntropy``);
* ``mc_normalized_entropy``: ``-mean_i log p(s_i | x) / len(s_i)`` (``MonteCarloNormalizedSequenceEntropy``).

Both are unbounded uncertainties (>= 0, lower = more sure): stored as ``exp(-H)``
(:func:`llmcal.signals.spec.encode`), mapped to a probability by the calibration step.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec, encode

SPECS = (
    SignalSpec("mc_sequence_entropy", "open", ("samples", "token_logprobs"), "+k samples",
               "Kuhn et al. 2023; Malinin & Gales 2021",
               "exp(-mean negative log-probability of the k sampled answers) (Monte-Carlo sequence entropy)",
               family="sampled", default=False, score="uncertainty",
               computed_by="llmcal.signals.sequence_entropy:mc_entropies"),
    SignalSpec("mc_normalized_entropy", "open", ("samples", "token_logprobs"), "+k samples",
               "Malinin & Gales 2021",
               "exp(-mean per-token negative log-probability of the k sampled answers)",
               family="sampled", default=False, score="uncertainty",
               computed_by="llmcal.signals.sequence_entropy:mc_entropies"),
)


def mc_entropies(sample_logprobs: Sequence[np.ndarray]) -> dict[str, float]:
    """The raw Monte-Carlo entropies of k samples, each given by its token log-probabilities (n_i,)."""
    if not sample_logprobs:
        raise ValueError("sample_logprobs: need at least one sampled answer")
    sums = np.array([float(np.sum(lp)) for lp in sample_logprobs])  # (k,)
    lens = np.array([max(len(lp), 1) for lp in sample_logprobs])  # (k,)
    return {"mc_sequence_entropy": float(-sums.mean()), "mc_normalized_entropy": float(-(sums / lens).mean())}


def sequence_entropy_signals(sample_logprobs: Sequence[np.ndarray]) -> dict[str, float]:
    """:func:`mc_entropies`, encoded as stored (``exp(-H)``)."""
    return {k: encode(v, "uncertainty") for k, v in mc_entropies(sample_logprobs).items()}
