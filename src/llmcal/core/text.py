"""Answer-text normalization, shared by the graders and the agreement signals.

Two stages compare free-form answers as text: ``tasks/graders`` (is the answer
one of the references?) and ``signals/agreement`` (do two sampled answers say
the same thing?).  Both must use one rule, or an answer could be graded
correct while failing to agree with an identical one; neither may import the
other, so the rule lives here, at the bottom floor.

The rule is SQuAD's (Rajpurkar et al. 2016): lower case, punctuation (ASCII
and curly quotes) removed, the articles a/an/the removed, whitespace
collapsed.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d")


def normalize(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


__all__ = ["normalize"]
