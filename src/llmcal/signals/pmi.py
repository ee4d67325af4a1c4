"""Pointwise mutual information between the question and the answer (Takayama & Arase 2019;
van der Poel et al. 2022 for the conditional form; LM-Polygraph's ``MeanPointwiseMutualInformation``).

One extra scoring pass: the answer scored after the same prompt with the question removed.
``pmi = (log p(answer | prompt) - log p(answer | prompt without the question)) / n tokens``:
how much the question, rather than the answer's own fluency, makes the answer likely.
An unbounded real score, higher = more sure: stored as ``sigmoid(pmi)`` (``score="log_odds"``).

Not here: conditional PMI (van der Poel et al. 2022), which needs the unconditional
log-probability and entropy per token; llmcal's scorer returns sums.
"""

from __future__ import annotations

from llmcal.signals.spec import SignalSpec, encode

SPECS = (
    SignalSpec("pmi", "open", ("bare_scoring",), "+1 scoring pass", "Takayama & Arase 2019",
               "sigmoid(mean per-token log p(answer | question) - log p(answer | no question))",
               family="pmi", default=False, score="log_odds", computed_by="llmcal.signals.pmi:pmi"),
)


def pmi(cond_logprob: float, bare_logprob: float, n_tokens: int) -> float:
    """The raw mean per-token PMI of an answer of ``n_tokens`` tokens."""
    if n_tokens < 1:
        raise ValueError(f"pmi: the answer has {n_tokens} tokens")
    return (float(cond_logprob) - float(bare_logprob)) / int(n_tokens)


def pmi_signal(cond_logprob: float, bare_logprob: float, n_tokens: int) -> dict[str, float]:
    return {"pmi": encode(pmi(cond_logprob, bare_logprob, n_tokens), "log_odds")}
