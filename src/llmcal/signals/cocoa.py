"""CoCoA: confidence and consistency combined (Vashurin et al. 2025, "Uncertainty Quantification
for LLMs through Minimum Bayes Risk: Bridging Confidence and Consistency"; in UQLM and LM-Polygraph).

The greedy answer's own uncertainty times its mean dissimilarity to the k samples:

* ``cocoa_msp``: ``(-log p(greedy)) * mean_i (1 - sim(greedy, s_i))``;
* ``cocoa_ppl``: ``(-mean token log p(greedy)) * mean_i (1 - sim(greedy, s_i))``.

``sim`` is the NLI entailment / embedding similarity in [0, 1]
(:mod:`llmcal.signals.similarity`).  Both are uncertainties >= 0 (0 when every sample means
the same as the answer or the answer is certain): stored as ``exp(-U)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec, encode

SPECS = tuple(
    SignalSpec(name, "open", ("token_logprobs", "samples", "embeddings", "nli_model"), "+k samples",
               "Vashurin et al. 2025", what, family="sampled", default=False, score="uncertainty",
               computed_by="llmcal.signals.cocoa:cocoa")
    for name, what in (("cocoa_msp", "exp(-(-log p(answer)) * mean dissimilarity of the samples to the answer)"),
                       ("cocoa_ppl", "exp(-(-mean token log p(answer)) * mean dissimilarity to the answer)")))


def cocoa(token_logprobs: np.ndarray, sim_to_samples: Sequence[float]) -> dict[str, float]:
    """The raw CoCoA uncertainties of the greedy answer (token log-probs (n,)) given its
    similarity to each of the k samples (k,)."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    sim = np.clip(np.asarray(sim_to_samples, dtype=np.float64), 0.0, 1.0)
    if lp.size == 0 or sim.size == 0:
        raise ValueError("cocoa: need the answer's token log-probabilities and at least one sample")
    dissim = float(np.mean(1.0 - sim))
    return {"cocoa_msp": float(-lp.sum()) * dissim, "cocoa_ppl": float(-lp.mean()) * dissim}


def cocoa_signals(token_logprobs: np.ndarray, sim_to_samples: Sequence[float]) -> dict[str, float]:
    return {k: encode(v, "uncertainty") for k, v in cocoa(token_logprobs, sim_to_samples).items()}
