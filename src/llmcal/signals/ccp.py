"""Claim-conditioned probability, sequence level (Fadeeva et al. 2024, "Fact-Checking the Output
of Large Language Models via Token-Level Uncertainty Quantification"; LM-Polygraph's
``ClaimConditionedProbability``).

A token's probability mixes two uncertainties: *what* to claim and *how* to say it.  CCP keeps
only the first.  At each generated token ``t`` the step's top-k alternatives (the token itself
first) are judged against it: an alternative that *entails* it (the same claim, worded
otherwise) counts for the token, one that *contradicts* it counts against, a *neutral* one (no
bearing on the claim) is left out::

    CCP_t = sum p(alternatives entailing, the token itself included)
            / sum p(alternatives entailing or contradicting)
    ccp   = prod_t CCP_t          (a confidence in [0, 1]; LM-Polygraph returns -prod as uncertainty)

Who judges (``judged_by`` in the output):

* ``nli:<model>`` (``--nli_model``): an NLI cross-encoder reads the answer up to the token
  against the same prefix ending in the alternative, both ways, and the two labels are combined
  as LM-Polygraph does (equal labels stand; entail + contradict is neutral; otherwise the
  non-neutral one wins).  The prefix is the paper's claim context; LM-Polygraph's sequence-level
  calculator judges the bare stripped tokens.
* ``lexical`` (no NLI model): an alternative that is the same word after normalisation (case,
  surrounding spaces and punctuation) entails; an alternative or token that is only spaces or
  punctuation is neutral (a formatting choice says nothing about the claim); any other word
  contradicts.  Without a model of meaning this is the conservative reading: every different
  content word counts as a different claim, so CCP falls back towards the probability of the
  chosen word among the content alternatives, never above what an NLI judge that finds
  paraphrases would give.
"""

from __future__ import annotations

import string
from typing import Callable, Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec, encode

LABELS = ("entail", "neutral", "contra")
_STRIP = string.punctuation + string.whitespace

SPECS = (
    SignalSpec("ccp", "open", ("token_logprobs", "top_logprobs", "nli_judge"), "+NLI passes", "Fadeeva et al. 2024",
               "product over tokens of the top-k probability mass that means the same as the token "
               "(NLI with --nli_model, else a lexical judge; named in judged_by)",
               family="ccp", default=False, score="confidence", computed_by="llmcal.signals.ccp:ccp"),
)

#: judge(prefix, token_text, alternative_texts) -> one label of :data:`LABELS` per alternative
Judge = Callable[[str, str, Sequence[str]], Sequence[str]]


def _norm(text: str) -> str:
    return text.strip(_STRIP).lower()


def lexical_judge(prefix: str, token: str, alternatives: Sequence[str]) -> list[str]:
    """The fallback judge without an NLI model (see the module docstring)."""
    t = _norm(token)
    out = []
    for alt in alternatives:
        a = _norm(alt)
        out.append("neutral" if not t or not a else "entail" if a == t else "contra")
    return out


def combine(forward: str, backward: str) -> str:
    """One label from NLI(original -> alternative) and NLI(alternative -> original)."""
    if forward == backward:
        return forward
    if {forward, backward} == {"entail", "contra"}:
        return "neutral"
    return forward if forward != "neutral" else backward


def nli_judge(nli) -> Judge:
    """A judge from an :class:`llmcal.backends.nli.NLIModel`: the answer's prefix ending in the token
    against the prefix ending in each alternative, both ways, argmax labels combined."""

    def judge(prefix: str, token: str, alternatives: Sequence[str]) -> list[str]:
        if not alternatives:
            return []
        orig = (prefix + token).strip() or token
        alts = [(prefix + a).strip() or a for a in alternatives]
        p = nli.probs([orig] * len(alts) + alts, alts + [orig] * len(alts))  # (2m, 3): entail, neutral, contra
        lab = [LABELS[int(i)] for i in np.argmax(p, axis=1)]
        m = len(alts)
        return [combine(lab[i], lab[m + i]) for i in range(m)]

    return judge


def alternatives_of(token_text: str, token_logprob: float,
                    top: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The step's alternatives with the chosen token first: the top-k less the chosen entry (the one
    with its text and log-probability), so the token is counted once."""
    rest = list(top)
    for j, (t, lp) in enumerate(rest):
        if t == token_text and abs(float(lp) - float(token_logprob)) <= 1e-6:
            del rest[j]
            break
    return [(token_text, float(token_logprob))] + [(t, float(lp)) for t, lp in rest]


def token_ccp(logprobs: Sequence[float], labels: Sequence[str]) -> float:
    """CCP of one token from its alternatives' log-probabilities (the token's first) and the labels
    of the others (``len(labels) == len(logprobs) - 1``); the token itself always entails."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if len(labels) != len(lp) - 1:
        raise ValueError(f"token_ccp: {len(labels)} labels for {len(lp) - 1} alternatives")
    keep_e = np.array([True] + [x == "entail" for x in labels])
    keep_c = np.array([False] + [x == "contra" for x in labels])
    ent = np.logaddexp.reduce(lp[keep_e])
    tot = np.logaddexp.reduce(lp[keep_e | keep_c])
    return float(np.exp(ent - tot))


def ccp_tokens(token_texts: Sequence[str], token_logprobs: Sequence[float],
               top_logprobs: Sequence[Sequence[tuple[str, float]]], judge: Judge = lexical_judge) -> np.ndarray:
    """(n,) CCP of each generated token."""
    n = len(token_logprobs)
    if len(token_texts) != n or len(top_logprobs) < n:
        raise ValueError(f"ccp: {len(token_texts)} token texts and {len(top_logprobs)} top-k rows "
                         f"for {n} tokens")
    out = np.empty(n)
    for t in range(n):
        alts = alternatives_of(token_texts[t], token_logprobs[t], top_logprobs[t])
        labels = list(judge("".join(token_texts[:t]), token_texts[t], [a for a, _ in alts[1:]]))
        bad = [x for x in labels if x not in LABELS]
        if bad:
            raise ValueError(f"ccp: the judge returned {bad}; labels are {', '.join(LABELS)}")
        out[t] = token_ccp([lp for _, lp in alts], labels)
    return out


def ccp(token_texts: Sequence[str], token_logprobs: Sequence[float],
        top_logprobs: Sequence[Sequence[tuple[str, float]]], judge: Judge = lexical_judge) -> float:
    """Sequence-level CCP: the product of the tokens' CCPs (1 for an answer without tokens)."""
    return float(np.prod(ccp_tokens(token_texts, token_logprobs, top_logprobs, judge)))


def ccp_signal(token_texts, token_logprobs, top_logprobs, nli=None) -> dict:
    """``{"ccp": value, "judged_by": "lexical" | "nli:<model>"}`` for one answer."""
    judge = nli_judge(nli) if nli is not None else lexical_judge
    value = ccp(token_texts, token_logprobs, top_logprobs, judge)
    return {"ccp": encode(min(max(value, 0.0), 1.0), "confidence"),
            "judged_by": f"nli:{nli.name}" if nli is not None else "lexical"}
