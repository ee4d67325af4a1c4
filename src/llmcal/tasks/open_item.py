"""The unit of work of an open-ended task: a question and its accepted answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OpenItem:
    """An open question.

    ``answers`` are every accepted answer (aliases, spellings); ``incorrect``
    known wrong answers where the set has them (TruthfulQA); ``grader`` the
    name of the :mod:`llmcal.tasks.graders` rule that decides correctness.
    """

    id: str
    task: str
    question: str
    answers: tuple[str, ...]
    grader: str = "contains"
    incorrect: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        from llmcal.tasks.graders import GRADERS

        if not self.question.strip():
            raise ValueError(f"item {self.id!r}: empty question")
        if not any(str(a).strip() for a in self.answers):
            raise ValueError(f"item {self.id!r}: no reference answer")
        if self.grader not in GRADERS:
            raise ValueError(f"item {self.id!r}: unknown grader {self.grader!r}; known: {', '.join(GRADERS)}")
