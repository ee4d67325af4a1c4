"""Confidence signals of a free-form answer from its own token probabilities.

The token-probability family (the "unsupervised" white-box estimators of
Fadeeva et al. 2023, LM-Polygraph; Malinin & Gales 2021 for the length
normalization).  Each is a float in [0, 1], higher = more sure, computed from
a :class:`~llmcal.core.requests.Generation` at no extra model cost:

* ``seq_prob``: the probability of the whole answer, exp(sum log p)
  (LM-Polygraph's *maximum sequence probability*, as a confidence).
* ``mean_token_prob``: the geometric mean of the token probabilities,
  exp(mean log p) = 1 / perplexity of the answer.
* ``min_token_prob``: the probability of the least likely token.
* ``entropy_conf``: 1 - mean token entropy / log(vocabulary size)
  (LM-Polygraph's *mean token entropy*, mapped to a confidence).
* ``first_token_margin``: p(top1) - p(top2) at the first answer token.
"""

from __future__ import annotations

import math

import numpy as np

from llmcal.signals.spec import OWN, SignalSpec

TOKEN_SIGNALS = ("seq_prob", "mean_token_prob", "min_token_prob", "entropy_conf", "first_token_margin")


def _spec(name: str, inputs: tuple[str, ...], citation: str, description: str) -> SignalSpec:
    return SignalSpec(name, "open", inputs, "free", citation, description, family="tokens",
                      computed_by="llmcal.signals.generation:token_signals")


SPECS = (
    _spec("seq_prob", ("token_logprobs",), "Fadeeva et al. 2023",
          "probability of the whole answer, exp(sum of token log-probabilities)"),
    _spec("mean_token_prob", ("token_logprobs",), "Fadeeva et al. 2023; Malinin & Gales 2021",
          "geometric mean of the token probabilities (1 / perplexity)"),
    _spec("min_token_prob", ("token_logprobs",), "Fadeeva et al. 2023",
          "probability of the least likely answer token"),
    _spec("entropy_conf", ("token_entropies",), "Fadeeva et al. 2023",
          "1 - mean token entropy / log(vocabulary size)"),
    _spec("first_token_margin", ("top_logprobs",), OWN,
          "p(top1) - p(top2) at the first answer token (missing without top-2 log-probabilities)"),
)


def token_signals(gen, vocab_size: int | None = None) -> dict[str, float]:
    """Every token-probability signal of one generation (see the module docstring).

    ``vocab_size`` scales the entropy; without it the entropy is scaled by
    log(50,000), a typical vocabulary, and ``entropy_conf`` is clipped to [0, 1].
    """
    lp = np.asarray(gen.token_logprobs, dtype=np.float64)
    ent = np.asarray(gen.entropies, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("token_logprobs: the generation has no tokens to take a confidence from")
    margin = float("nan")
    if gen.top_logprobs and len(gen.top_logprobs[0]) >= 2:
        first = sorted((p for _, p in gen.top_logprobs[0]), reverse=True)
        margin = math.exp(first[0]) - math.exp(first[1])
    scale = math.log(vocab_size or 50_000)
    return {
        "seq_prob": float(math.exp(lp.sum())),
        "mean_token_prob": float(math.exp(lp.mean())),
        "min_token_prob": float(math.exp(lp.min())),
        "entropy_conf": float(np.clip(1.0 - ent.mean() / scale, 0.0, 1.0)),
        "first_token_margin": float(np.clip(margin, 0.0, 1.0)) if not math.isnan(margin) else float("nan"),
    }
