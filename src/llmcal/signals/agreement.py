"""Agreement across sampled answers, and semantic entropy.

* ``agreement``: the fraction of k sampled answers that say the same as the
  greedy answer (self-consistency as a confidence: Wang et al. 2023; Xiong et
  al. 2024 "Can LLMs Express Their Uncertainty?").  "The same" is decided by
  the caller's ``same`` function; by default normalized-text equality, or
  embedding similarity when answers are clustered by meaning.
* ``semantic_entropy_conf``: the answers (greedy + samples) are clustered by
  meaning and the entropy of the cluster frequencies is taken (Kuhn et al.
  2023, "Semantic Uncertainty"; the discrete estimator of Farquhar et al.
  2024).  Confidence = 1 - H / log(n answers): 1 when all answers mean the
  same thing, 0 when all differ.  Kuhn et al. cluster with an NLI model
  (bidirectional entailment); llmcal clusters with sentence embeddings
  (all-MiniLM-L6-v2, which an offline install can ship) plus two lexical
  rules that embeddings miss (:func:`same_meaning`: stated numbers must match;
  a short answer contained in a longer one agrees with it), each answer
  joining the first cluster whose founder it matches.  An NLI model where one
  can be had is better.

Pure numpy: embeddings arrive as arrays (``backends/embedder.py``).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np

from llmcal.core.text import normalize
from llmcal.signals.spec import SignalSpec

SIMILARITY_THRESHOLD = 0.9  # cosine between all-MiniLM-L6-v2 embeddings for "same meaning"

SPECS = (
    SignalSpec("agreement", "open", ("samples", "embeddings"), "+k samples",
               "Wang et al. 2023; Xiong et al. 2024",
               "share of k sampled answers that mean the same as the greedy one", family="agreement",
               computed_by="llmcal.signals.agreement:cluster_agreement"),
    SignalSpec("semantic_entropy", "open", ("samples", "embeddings"), "+k samples",
               "Kuhn et al. 2023; Farquhar et al. 2024",
               "1 - entropy of the meaning clusters of the greedy and sampled answers / log(n answers)",
               family="agreement", computed_by="llmcal.signals.agreement:semantic_entropy_conf"),
)


def agreement(greedy: str, samples: Sequence[str], same: Callable[[str, str], bool]) -> float:
    """Fraction of ``samples`` that ``same`` judges equal to ``greedy``."""
    if not samples:
        raise ValueError("samples: need at least one sampled answer")
    return sum(bool(same(greedy, s)) for s in samples) / len(samples)


_NUM_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numbers_in(text: str) -> frozenset[str]:
    """The numbers an answer states (digits, or the words zero..twenty), normalized."""
    words = [_NUM_WORDS.get(w, w) for w in re.findall(r"[a-z]+|[^a-z\s]+", str(text).lower())]
    return frozenset(n.replace(",", "").rstrip(".") for n in _NUM.findall(" ".join(words)))


def same_meaning(a: str, b: str, ea: np.ndarray, eb: np.ndarray,
                 threshold: float = SIMILARITY_THRESHOLD) -> bool:
    """Do two answers say the same thing?  Sentence embeddings are blind to numbers
    ("700 centimeters" vs "70 centimeters": cosine 0.95), so answers that state
    different numbers differ; otherwise they agree when one's normalized text
    contains the other's ("Paris" in "The capital of France is Paris") or their
    embeddings' cosine is at least ``threshold``."""
    if numbers_in(a) != numbers_in(b):
        return False
    na, nb = f" {normalize(a)} ", f" {normalize(b)} "
    if na.strip() and nb.strip() and (na in nb or nb in na):
        return True
    return float(np.dot(ea, eb)) >= threshold


def cluster_by_founders(n: int, same: Callable[[int, int], bool]) -> np.ndarray:
    """Cluster ids (n,): answer i joins the first cluster whose founding answer f has ``same(i, f)``,
    else founds a new one (the greedy clustering of Kuhn et al. 2023, whatever "same meaning" is)."""
    founders: list[int] = []
    ids = np.empty(n, dtype=np.int64)
    for i in range(n):
        for c, f in enumerate(founders):
            if same(i, f):
                ids[i] = c
                break
        else:
            ids[i] = len(founders)
            founders.append(i)
    return ids


def cluster_answers(texts: Sequence[str], emb: np.ndarray, threshold: float = SIMILARITY_THRESHOLD) -> np.ndarray:
    """Cluster ids (n,) for answers ``texts`` with unit-norm embeddings ``emb`` (n, d): each
    answer joins the first cluster whose founding answer :func:`same_meaning` matches."""
    return cluster_by_founders(len(texts), lambda i, f: same_meaning(texts[i], texts[f], emb[i], emb[f], threshold))


def semantic_entropy_conf(cluster_ids: Sequence[int]) -> float:
    """1 - H(cluster frequencies) / log(n): 1 = one meaning, 0 = every answer different."""
    ids = np.asarray(cluster_ids)
    n = len(ids)
    if n < 2:
        raise ValueError("cluster_ids: need at least two answers")
    _, counts = np.unique(ids, return_counts=True)
    p = counts / n
    h = -float(np.sum(p * np.log(p)))
    return float(np.clip(1.0 - h / math.log(n), 0.0, 1.0))


def cluster_agreement(cluster_ids: Sequence[int]) -> float:
    """Agreement when answer 0 is the greedy one: the share of the others in its cluster."""
    ids = np.asarray(cluster_ids)
    if len(ids) < 2:
        raise ValueError("cluster_ids: need the greedy answer and at least one sample")
    return float(np.mean(ids[1:] == ids[0]))
