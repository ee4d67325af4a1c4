"""Verbalized confidence: ask the model how sure it is, and read its reply.

The brief's question, asked after the answer in the same conversation:
"On a scale of 1 to 10, how sure are you?" (and a 0-100% variant), the
verbalized confidence of Lin et al. 2022 ("Teaching Models to Express Their
Uncertainty in Words") and Tian et al. 2023 ("Just Ask for Calibration").

:func:`parse_confidence` reads numbers ("8", "8/10", "I'd say 7 out of 10"),
percentages ("85%", "85 percent") and words ("very sure", "not sure at
all").  A reply it cannot read is *missing* (``None``): the caller records it
as missing and counts it, never turning it into 0.5.
"""

from __future__ import annotations

import re

from llmcal.signals.spec import SignalSpec

SCALES = {
    "1-10": "On a scale of 1 to 10, how sure are you that your answer is correct? Reply with just the number.",
    "percent": "How sure are you that your answer is correct, from 0% to 100%? Reply with just the percentage.",
}

#: signal name -> the scale of :data:`SCALES` it asks on (the signal is its own ``--signals`` family)
SIGNAL_SCALES = {"verbalized": "1-10", "verbalized_percent": "percent"}
SPECS = (
    SignalSpec("verbalized", "open", ("followup_generation",), "+1 short generation",
               "Lin et al. 2022; Tian et al. 2023", "the model's own 1-10 rating of its answer, asked after it",
               family="verbalized", computed_by="llmcal.signals.verbalized:parse_confidence"),
    SignalSpec("verbalized_percent", "open", ("followup_generation",), "+1 short generation",
               "Tian et al. 2023", "the model's own 0-100% rating of its answer, asked after it",
               family="verbalized_percent", default=False,
               computed_by="llmcal.signals.verbalized:parse_confidence"),
)

# Phrases -> confidence, longest first so "not very sure" wins over "very sure".
_WORDS = [
    ("not sure at all", 0.05), ("not at all sure", 0.05), ("no idea", 0.05), ("completely unsure", 0.05),
    ("not very sure", 0.3), ("not really sure", 0.3), ("not so sure", 0.3), ("not sure", 0.2),
    ("not confident", 0.2), ("unsure", 0.3), ("uncertain", 0.3), ("somewhat sure", 0.6),
    ("fairly sure", 0.7), ("fairly confident", 0.7), ("pretty sure", 0.8), ("quite sure", 0.8),
    ("very sure", 0.9), ("very confident", 0.9), ("highly confident", 0.9), ("extremely sure", 0.95),
    ("absolutely sure", 0.98), ("completely sure", 0.98), ("certain", 0.95), ("confident", 0.8), ("sure", 0.75),
]
_WORDS.sort(key=lambda kv: -len(kv[0]))
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*(?:%|percent\b)")
_OUT_OF = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*(?:/|out of)\s*(10|100)\b")
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)(?![\d.]*\s*(?:%|percent))")
# the question's own scale, echoed back ("0% to 100%: 80"), is not an answer
_ECHO = re.compile(r"(?:on\s+)?(?:a\s+)?scale\s+(?:of|from)\s+1\s+to\s+10|\b(?:from\s+)?1\s+to\s+10\b|"
                   r"(?:from\s+)?0\s*%?\s*to\s*100\s*%")
_SHORT_REPLY_WORDS = 8  # a bare number is read only from a short reply or one that starts with it
_WORD_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                 "nine": 9, "ten": 10}


def parse_confidence(reply: str, scale: str = "1-10") -> float | None:
    """A confidence in [0, 1] read from ``reply``, or None when it cannot be read.

    ``scale`` is the question's scale: on "1-10" a bare number n in 1..10 is
    n / 10; on "percent" a bare number in 0..100 is n / 100.  An explicit
    percentage or "n out of 10/100" is read as such on either scale; a number
    outside the scale is unreadable (None), not clipped.  A bare number is read
    only from a short reply (at most 8 words) or one that starts with it, so a
    number inside an unrelated sentence ("To convert 7 meters ...") is not a
    confidence; an echo of the scale itself ("0% to 100%") is ignored.
    """
    if scale not in SCALES:
        raise ValueError(f"scale: unknown {scale!r}; known: {', '.join(SCALES)}")
    text = _ECHO.sub(" ", " ".join(str(reply).lower().split())).strip(" :.-")
    if not text:
        return None
    m = _PERCENT.search(text)
    if m:
        v = float(m.group(1))
        return v / 100.0 if 0 <= v <= 100 else None
    m = _OUT_OF.search(text)
    if m:
        v, top = float(m.group(1)), float(m.group(2))
        return v / top if 0 <= v <= top else None
    m = _NUMBER.search(text)
    if m and (m.start() == 0 or len(text.split()) <= _SHORT_REPLY_WORDS):
        v = float(m.group(1))
        if scale == "1-10":
            return v / 10.0 if 1 <= v <= 10 else None
        return v / 100.0 if 0 <= v <= 100 else None
    for phrase, value in _WORDS:
        if re.search(rf"\b{re.escape(phrase)}\b", text):
            return value
    if scale == "1-10":
        for word, v in _WORD_NUMBERS.items():
            if re.search(rf"\b{word}\b", text):
                return v / 10.0
    return None
