"""Internal confidence signals of a multiple-choice answer.

All signals follow one convention: a float in [0, 1], higher = more sure, and
all are the confidence in the *same* prediction, the option with the highest
summed log-likelihood (lm-eval's ``acc``).  From the option log-likelihoods
``ll`` (k,) and their token counts ``n`` (k,):

* ``option_prob``: softmax(ll) at the prediction, i.e. the maximum probability
  of the renormalized option distribution (Kadavath et al. 2022, sec. 3).
* ``option_prob_norm``: softmax(ll / n) at the prediction: the same with
  per-token (length-normalized) log-likelihoods, so long options are not
  penalized for their length (Malinin & Gales 2021).
* ``margin``: p(top1) - p(top2) under softmax(ll).
* ``entropy``: 1 - H(softmax(ll)) / log(k): 1 when one option takes all the
  mass, 0 when the model is indifferent.
"""

from __future__ import annotations

import numpy as np

from llmcal.signals.spec import OWN, SignalSpec

SIGNALS = ("option_prob", "option_prob_norm", "margin", "entropy")

_BY = "llmcal.signals.mc:mc_signals"
SPECS = (
    SignalSpec("option_prob", "mc", ("option_logprobs",), "free", "Kadavath et al. 2022",
               "softmax of the option log-likelihoods at the predicted option", computed_by=_BY),
    SignalSpec("option_prob_norm", "mc", ("option_logprobs", "option_token_counts"), "free",
               "Malinin & Gales 2021", "the same with per-token (length-normalized) log-likelihoods",
               computed_by=_BY),
    SignalSpec("margin", "mc", ("option_logprobs",), "free", OWN,
               "p(top1) - p(top2) of the option distribution", computed_by=_BY),
    SignalSpec("entropy", "mc", ("option_logprobs",), "free", OWN,
               "1 - entropy of the option distribution / log(number of options)", computed_by=_BY),
)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x)
    e = np.exp(z)
    return e / e.sum()


def mc_signals(logprobs: np.ndarray, n_tokens: np.ndarray) -> tuple[int, dict[str, float]]:
    """Return the predicted option index and every signal for it."""
    ll = np.asarray(logprobs, dtype=np.float64)
    k = ll.shape[0]
    if k < 2:
        raise ValueError(f"logprobs: need at least 2 options, got {k}")
    pred = int(np.argmax(ll))
    p = softmax(ll)
    p_norm = softmax(ll / np.maximum(np.asarray(n_tokens, dtype=np.float64), 1.0))
    top2 = np.sort(p)[-2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0))
    signals = {
        "option_prob": float(p[pred]),
        "option_prob_norm": float(p_norm[pred]),
        "margin": float(top2[1] - top2[0]),
        "entropy": float(np.clip(1.0 - h / np.log(k), 0.0, 1.0)),
    }
    return pred, signals
