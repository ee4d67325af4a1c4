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
  Two rules keep it from crediting what is not an answer (checked against a
  hand-labelled sample, ``tests/fixtures/grading_sample.jsonl``; the agreement is
  in docs/tasks.md): an alias that already appears in the question is credited
  only when it is the whole answer (a model that repeats the question's "Olaf"
  and then says it does not know has not answered), and an alias directly
  negated ("not Paris", "isn't 1969"; a negation word among the three words
  before it, with no "but" in between) does not count.
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


#: words that negate the alias right after them ("isn't" normalizes to "isnt")
NEGATIONS = frozenset({"not", "no", "never", "isnt", "wasnt", "arent", "werent", "doesnt", "didnt", "dont",
                       "neither", "nor", "cannot", "cant"})
#: how many words before an alias a negation reaches
NEGATION_WINDOW = 3


def exact_match(answer: str, references: Sequence[str], question: str = "") -> bool:
    a = normalize(answer)
    return any(a == normalize(r) for r in references if normalize(r))


def _occurrences(words: list[str], ref: list[str]) -> list[int]:
    k = len(ref)
    return [i for i in range(len(words) - k + 1) if words[i:i + k] == ref]


def _negated(words: list[str], start: int) -> bool:
    before = words[max(0, start - NEGATION_WINDOW):start]
    for j in range(len(before) - 1, -1, -1):  # nearest first: a "but" after the negation lifts it
        if before[j] == "but":
            return False
        if before[j] in NEGATIONS:
            return True
    return False


def echoed(reference: str, question: str) -> bool:
    """Whether the normalized ``reference`` appears in the normalized ``question`` as whole words."""
    r = normalize(reference)
    return bool(r) and f" {r} " in f" {normalize(question)} "


def contains(answer: str, references: Sequence[str], question: str = "") -> bool:
    """A reference among the answer's words, not negated; one already in the question only as the whole answer."""
    words = normalize(answer).split()
    for r in references:
        ref = normalize(r).split()
        if not ref:
            continue
        if question and echoed(r, question):
            if words == ref:
                return True
            continue
        if any(not _negated(words, i) for i in _occurrences(words, ref)):
            return True
    return False


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


def token_f1(answer: str, references: Sequence[str], question: str = "") -> bool:
    """Best F1 >= :data:`F1_THRESHOLD`; a reference the question already holds needs an exact match."""
    fresh = [r for r in references if not (question and echoed(r, question))]
    if len(fresh) < len(references) and exact_match(answer, [r for r in references if r not in fresh]):
        return True
    return max((f1_score(answer, r) for r in fresh), default=0.0) >= F1_THRESHOLD


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (GSM8K style: ``1,000`` -> 1000), else None."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def numeric(answer: str, references: Sequence[str], question: str = "") -> bool:
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


def grade(grader: str, answer: str, references: Sequence[str], incorrect: Sequence[str] = (),
          question: str = "") -> bool:
    """Grade ``answer`` with the named grader (see the module docstring).

    ``question``: the item's question, so that ``contains`` and ``token_f1`` do not credit
    an alias the model only echoed from it; "" grades without that rule.
    """
    try:
        fn = GRADERS[grader]
    except KeyError:
        raise ValueError(f"grader: unknown {grader!r}; known: {', '.join(GRADERS)}") from None
    if grader == "truthful_f1":
        return fn(answer, references, incorrect)
    return fn(answer, references, question)
