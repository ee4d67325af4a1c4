"""Calibrated confidence -> a level, a colour, a sentence and an action.

The brief: "calibration without thoughtful presentation is like giving someone
a speedometer without labels", and its three sentences:

==========  ======  ==================================================  ========================
level       colour  sentence                                            action
==========  ======  ==================================================  ========================
high        green   "I'm very sure about this."                         answer
medium      yellow  "I'm unsure - here are a few possibilities: ..."    answer with alternatives
low         red     "I can't answer this safely."                       abstain
==========  ======  ==================================================  ========================

Defaults: abstain below 0.75 (the brief's filter), "very sure" from 0.90.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

LEVELS = ("high", "medium", "low")
COLOURS = {"high": "green", "medium": "yellow", "low": "red"}
ACTIONS = {"high": "answer", "medium": "answer_with_alternatives", "low": "abstain"}


@dataclass(frozen=True)
class Thresholds:
    """``confidence >= high`` -> high; ``>= abstain`` -> medium; below -> low (abstain)."""

    high: float = 0.90
    abstain: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 <= self.abstain <= self.high <= 1.0:
            raise ValueError(
                f"thresholds: need 0 <= abstain ({self.abstain}) <= high ({self.high}) <= 1"
            )


@dataclass
class Decision:
    score: float
    level: str
    colour: str
    sentence: str
    action: str
    abstained: bool
    answer: str | None
    alternatives: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def level_of(confidence: float, thresholds: Thresholds = Thresholds()) -> str:
    if not 0.0 <= confidence <= 1.0 or confidence != confidence:
        raise ValueError(f"confidence must be in [0, 1], got {confidence}")
    if confidence >= thresholds.high:
        return "high"
    if confidence >= thresholds.abstain:
        return "medium"
    return "low"


def decide(
    confidence: float,
    answer: str,
    candidates: Sequence[tuple[str, float]] = (),
    thresholds: Thresholds = Thresholds(),
    max_alternatives: int = 3,
) -> Decision:
    """Turn one calibrated confidence into what the user sees.

    ``candidates`` are (text, probability) pairs for the possible answers
    (option probabilities, or distinct sampled answers with their frequency);
    the alternatives shown are the most probable ones other than ``answer``.
    """
    level = level_of(float(confidence), thresholds)
    alts = sorted((c for c in candidates if c[0] != answer), key=lambda c: -c[1])[:max_alternatives]
    alternatives = [{"text": t, "probability": float(p)} for t, p in alts]
    if level == "high":
        sentence = "I'm very sure about this."
    elif level == "medium":
        # a free answer often ends with its own full stop ("The capital of Italy is Rome."): listed, it loses
        # it, so the sentence ends with one period, not "Rome.."
        listed = ", ".join(t.strip().rstrip(".").rstrip() for t in [answer] + [a["text"] for a in alternatives])
        sentence = f"I'm unsure \u2014 here are a few possibilities: {listed}."
    else:
        sentence = "I can't answer this safely."
    return Decision(
        score=float(confidence),
        level=level,
        colour=COLOURS[level],
        sentence=sentence,
        action=ACTIONS[level],
        abstained=level == "low",
        answer=None if level == "low" else answer,
        alternatives=alternatives if level != "high" else [],
    )
