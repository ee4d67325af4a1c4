"""Pointwise mutual information between the question and the answer (Takayama & Arase 2019;
van der Poel et al. 2022 for the conditional form; LM-Polygraph's ``MeanPointwiseMutualInformation``).

One extra scoring pass: the answer scored after the same prompt with the question removed.
``pmi = (log p(answer | prompt) - log p(answer | prompt without the question)) / n tokens``:
how much the question, rather than the answer's own fluency, makes the answer likely.
An unbounded real score, higher = more sure: stored as ``sigmoid(pmi)`` (``score="log_odds"``).

Conditional PMI (van der Poel et al. 2022, "Mutual Information Alleviates Hallucinations in
Abstractive Summarization"; LM-Polygraph's ``MeanConditionalPointwiseMutualInformation``): the
PMI term is used only where the model is unsure what comes next, so fluent tokens keep their
plain log-probability::

    cpmi = mean_t [ log p(y_t | x, y_<t) - lambda * 1[t > 0 and H_t >= tau] * log p(y_t | x', y_<t) ]

with ``H_t`` the entropy (nats) of the conditional next-token distribution at step t (recorded
with the generation), ``x'`` the prompt without its question, and LM-Polygraph's defaults
``tau = 0.0656``, ``lambda = 3.599`` (the paper's best).  The unconditional term needs the
answer's own token ids scored per token after the bare prompt (``HFBackend.score_tokens``).
LM-Polygraph scores the answer with no prompt at all; llmcal keeps PMI's bare prompt (the same
chat frame, the question removed) so both PMI forms measure the question's contribution.
Unbounded real, higher = more sure (LM-Polygraph's uncertainty is ``-cpmi``): stored as
``sigmoid(cpmi)``.
"""

from __future__ import annotations

from llmcal.signals.spec import SignalSpec, encode

SPECS = (
    SignalSpec("pmi", "open", ("bare_scoring",), "+1 scoring pass", "Takayama & Arase 2019",
               "sigmoid(mean per-token log p(answer | question) - log p(answer | no question))",
               family="pmi", default=False, score="log_odds", computed_by="llmcal.signals.pmi:pmi"),
    SignalSpec("cpmi", "open", ("token_logprobs", "token_entropies", "bare_token_scoring"), "+1 scoring pass",
               "van der Poel et al. 2022",
               "sigmoid(mean per-token log p(y_t | question) - lambda * log p(y_t | no question) where the "
               "next-token entropy >= tau)",
               family="cpmi", default=False, score="log_odds", computed_by="llmcal.signals.pmi:cpmi"),
)

CPMI_TAU = 0.0656  # entropy threshold (nats), van der Poel et al. 2022 / LM-Polygraph's default
CPMI_LAMBDA = 3.599  # weight of the unconditional term, likewise


def pmi(cond_logprob: float, bare_logprob: float, n_tokens: int) -> float:
    """The raw mean per-token PMI of an answer of ``n_tokens`` tokens."""
    if n_tokens < 1:
        raise ValueError(f"pmi: the answer has {n_tokens} tokens")
    return (float(cond_logprob) - float(bare_logprob)) / int(n_tokens)


def pmi_signal(cond_logprob: float, bare_logprob: float, n_tokens: int) -> dict[str, float]:
    return {"pmi": encode(pmi(cond_logprob, bare_logprob, n_tokens), "log_odds")}


def cpmi(token_logprobs, bare_token_logprobs, entropies, tau: float = CPMI_TAU, lambd: float = CPMI_LAMBDA) -> float:
    """Raw conditional PMI of one answer (see the module docstring), higher = more sure.

    ``token_logprobs`` (n,) and ``entropies`` (n,) are the generation's own; ``bare_token_logprobs``
    (n,) the same token ids scored after the bare prompt.  An empty answer keeps only the token that
    ended it (n = 1, no bare scores): step 0 never carries the PMI term, so its value is that
    token's log-probability.
    """
    import numpy as np

    lp = np.asarray(token_logprobs, dtype=np.float64)
    ent = np.asarray(entropies, dtype=np.float64)
    bare = np.asarray(bare_token_logprobs, dtype=np.float64)
    if lp.size == 0 or ent.shape != lp.shape:
        raise ValueError(f"cpmi: {lp.size} log-probabilities for {ent.size} entropies")
    if bare.size == 0 and lp.size == 1:
        bare = np.zeros(1)
    if bare.shape != lp.shape:
        raise ValueError(f"cpmi: {bare.size} bare log-probabilities for {lp.size} tokens")
    gate = ent >= tau  # (n,)
    gate[0] = False
    return float(np.mean(lp - lambd * gate * bare))


def cpmi_signal(token_logprobs, bare_token_logprobs, entropies) -> dict[str, float]:
    return {"cpmi": encode(cpmi(token_logprobs, bare_token_logprobs, entropies), "log_odds")}
