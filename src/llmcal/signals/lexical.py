"""Lexical similarity between sampled answers: ROUGE-L and BLEU, written out here.

Fomicheva et al. 2020 ("Unsupervised Quality Estimation for Neural Machine
Translation"), as LM-Polygraph's ``LexicalSimilarity`` applies it to LLM answers: the
mean similarity over all pairs of the k samples.  Both are confidences in [0, 1]
(1 = every sample says the same words):

* ``lexsim_rouge_l``: ROUGE-L F-measure (longest common subsequence of tokens; Lin 2004),
  tokenized like the ``rouge_score`` package (lower case, runs of [a-z0-9]); without its
  Porter stemmer, so "cats" and "cat" differ here (LM-Polygraph stems);
* ``lexsim_bleu``: sentence BLEU (Papineni et al. 2002) on whitespace tokens with NLTK's
  defaults as LM-Polygraph calls it: no smoothing, weights shortened for answers of 1-3
  words, brevity penalty against the reference.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

from llmcal.signals.spec import SignalSpec

SPECS = (
    SignalSpec("lexsim_rouge_l", "open", ("samples",), "+k samples", "Fomicheva et al. 2020; Lin 2004",
               "mean ROUGE-L F-measure over all pairs of the k sampled answers", family="sampled", default=False,
               computed_by="llmcal.signals.lexical:lexical_signals"),
    SignalSpec("lexsim_bleu", "open", ("samples",), "+k samples", "Fomicheva et al. 2020; Papineni et al. 2002",
               "mean sentence BLEU over all pairs of the k sampled answers", family="sampled", default=False,
               computed_by="llmcal.signals.lexical:lexical_signals"),
)

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """``rouge_score``'s tokens: lower case, non-alphanumerics as separators."""
    return _ROUGE_TOKEN.findall(str(text).lower())


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure between two texts (0 when either has no tokens)."""
    r, p = rouge_tokens(reference), rouge_tokens(prediction)
    if not r or not p:
        return 0.0
    lcs = _lcs(r, p)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def _weights(n_words: int) -> tuple[float, ...]:
    # LM-Polygraph shortens the n-gram weights for short answers (0.33, not 1/3, as it writes them)
    return {1: (1.0,), 2: (0.5, 0.5), 3: (0.33, 0.33, 0.33)}.get(n_words, (0.25, 0.25, 0.25, 0.25))


def bleu(reference: str, prediction: str) -> float:
    """Sentence BLEU of ``prediction`` against one ``reference`` on whitespace tokens, unsmoothed
    (0 when an n-gram order with a weight has no match), NLTK's brevity penalty."""
    r, p = str(reference).split(), str(prediction).split()
    if not r or not p:
        return 0.0
    weights = _weights(min(len(r), len(p)))
    log_sum = 0.0
    for n, w in enumerate(weights, start=1):
        hyp = Counter(tuple(p[i: i + n]) for i in range(len(p) - n + 1))
        ref = Counter(tuple(r[i: i + n]) for i in range(len(r) - n + 1))
        total = sum(hyp.values())
        match = sum(min(c, ref[g]) for g, c in hyp.items())
        if match == 0 or total == 0:
            return 0.0
        log_sum += w * math.log(match / total)
    bp = 1.0 if len(p) > len(r) else math.exp(1 - len(r) / len(p))
    return bp * math.exp(log_sum)


def mean_pairwise(texts: Sequence[str], metric) -> float:
    """Mean of ``metric(texts[i], texts[j])`` over pairs i < j."""
    if len(texts) < 2:
        raise ValueError("texts: need at least two sampled answers")
    return float(np.mean([metric(texts[i], texts[j]) for i in range(len(texts)) for j in range(i + 1, len(texts))]))


def lexical_signals(samples: Sequence[str]) -> dict[str, float]:
    """Both lexical similarities of k sampled answers, each a confidence in [0, 1]."""
    return {"lexsim_rouge_l": mean_pairwise(samples, rouge_l), "lexsim_bleu": mean_pairwise(samples, bleu)}
