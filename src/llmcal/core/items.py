"""The units of work: a multiple-choice question or an open question, each with a known answer.

Every stage passes these; only ``tasks/`` makes them.  ``kind`` tells the two apart
(``"mc"`` or ``"open"``) so the pipeline never tests for a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question.

    ``answer`` is the index of the correct choice in ``choices``.  ``meta``
    holds anything a loader knows that scoring does not need (difficulty,
    category, source line) and is written to ``samples.jsonl`` as is.

    A task that fixes its own requests (lm-eval's YAML tasks, :mod:`llmcal.tasks.lmeval`)
    gives them exactly, one per option, instead of letting a prompt style build them:
    ``contexts`` (the text each option is scored after: one shared context repeated, or
    several for partial scoring, WinoGrande's sentence cut at the blank with each option
    filled in) and ``continuations`` (the scored text; one shared continuation for partial
    scoring).  ``messages`` replaces ``contexts`` when the task asked for the model's chat
    template: per option, the conversation as ``(role, content)`` pairs, rendered by the
    backend's template when the item is scored.  All empty (the default): the prompt style
    builds the request from ``question`` and ``choices``.
    """

    id: str
    task: str
    question: str
    choices: tuple[str, ...]
    answer: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    contexts: tuple[str, ...] = ()
    continuations: tuple[str, ...] = ()
    messages: tuple[tuple[tuple[str, str], ...], ...] = ()
    kind = "mc"

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
        k = len(self.choices)
        for name in ("contexts", "continuations", "messages"):
            given = getattr(self, name)
            if given and len(given) != k:
                raise ValueError(f"item {self.id!r}: {len(given)} {name} for {k} choices (one per option)")
        if (self.contexts or self.messages) and not self.continuations:
            raise ValueError(f"item {self.id!r}: fixed contexts need their continuations")
        if self.continuations and not (self.contexts or self.messages):
            raise ValueError(f"item {self.id!r}: fixed continuations need their contexts (or messages)")

    @property
    def fixed_request(self) -> bool:
        """Whether the task fixed the scored text itself (no prompt style applies)."""
        return bool(self.continuations)


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
    kind = "open"

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError(f"item {self.id!r}: empty question")
        if not any(str(a).strip() for a in self.answers):
            raise ValueError(f"item {self.id!r}: no reference answer")
        if not self.grader or not self.grader.strip():
            raise ValueError(f"item {self.id!r}: no grader named")


Item = Union[MCItem, OpenItem]
