"""The unit of work: one multiple-choice question with a known answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question.

    ``answer`` is the index of the correct choice in ``choices``.  ``meta``
    holds anything a loader knows that scoring does not need (difficulty,
    category, source line) and is written to ``samples.jsonl`` as is.
    """

    id: str
    task: str
    question: str
    choices: tuple[str, ...]
    answer: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"item {self.id!r}: needs at least 2 choices, got {len(self.choices)}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"item {self.id!r}: answer index {self.answer} is not among the "
                f"{len(self.choices)} choices"
            )
        if not self.question.strip():
            raise ValueError(f"item {self.id!r}: empty question")
