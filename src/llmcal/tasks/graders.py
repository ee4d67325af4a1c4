"""Graders: is a free-form answer right?  Each returns a bool and is documented.

* ``exact_match``: the normalized answer equals a normalized reference
  (SQuAD's normalization, Rajpurkar et al. 2016: lower case, punctuation and
  the articles a/an/the removed, whitespace collapsed; :func:`llmcal.core.text.normalize`).
* ``contains``: a normalized reference appears in the normalized answer as
  whole words.  Instruction-tuned models answer in sentences ("The capital of
  France is Paris."), which exact match scores as wrong; this is the usual
  grading for open-domain QA with chat models (e.g. Kandpal et al. 2023,
  Mallen et al. 2023).  A reference of a single short stop-word-like token can
  make it lenient; the built-in and NQ-open references are names and numbers.
* ``token_f1``: the best token-level F1 against any reference (SQuAD's F1) is
  at least ``F1_THRESHOLD`` (0.5).
* ``numeric``: GSM8K's rule: the last number in the answer (commas and a
  trailing period removed) equals the reference number (the text after
  ``####`` in GSM8K's solutions).
* ``truthful_f1``: TruthfulQA generation (Lin et al. 2022): the answer's best
  F1 against the true reference answers is above its best F1 against the false
  ones (lm-eval's ``truthfulqa_gen`` uses the same "max true minus max false"
  comparison with BLEU/ROUGE).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

from llmcal.core.text import normalize  # the one answer-text rule, shared with signals/agreement

F1_THRESHOLD = 0.5
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def exact_match(answer: str, references: Sequence[str]) -> bool:
    a = normalize(answer)
    return any(a == normalize(r) for r in references if normalize(r))


def contains(answer: str, references: Sequence[str]) -> bool:
    a = f" {normalize(answer)} "
    return any(f" {normalize(r)} " in a for r in references if normalize(r))


def f1_score(answer: str, reference: str) -> float:
    """SQuAD's token F1 between two strings."""
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, references: Sequence[str]) -> bool:
    return max((f1_score(answer, r) for r in references), default=0.0) >= F1_THRESHOLD


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (GSM8K style: ``1,000`` -> 1000), else None."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def numeric(answer: str, references: Sequence[str]) -> bool:
    got = last_number(answer)
    if got is None:
        return False
    for r in references:
        want = last_number(r)
        if want is not None and abs(got - want) < 1e-6 * max(1.0, abs(want)):
            return True
    return False


def truthful_f1(answer: str, references: Sequence[str], incorrect: Sequence[str] = ()) -> bool:
    true_best = max((f1_score(answer, r) for r in references), default=0.0)
    false_best = max((f1_score(answer, r) for r in incorrect), default=0.0)
    return true_best > false_best


GRADERS: dict[str, Callable[..., bool]] = {
    "exact_match": exact_match,
    "contains": contains,
    "token_f1": token_f1,
    "numeric": numeric,
    "truthful_f1": truthful_f1,
}


def grade(grader: str, answer: str, references: Sequence[str], incorrect: Sequence[str] = ()) -> bool:
    """Grade ``answer`` with the named grader (see the module docstring)."""
    try:
        fn = GRADERS[grader]
    except KeyError:
        raise ValueError(f"grader: unknown {grader!r}; known: {', '.join(GRADERS)}") from None
    if grader == "truthful_f1":
        return fn(answer, references, incorrect)
    return fn(answer, references)
