"""Turn a multiple-choice item into a scoring request, in a named prompt style.

* ``cloze`` (lm-eval's ARC/SciQ style): context ``Question: {q}\\nAnswer:`` and
  continuations `` {choice}``; the model's preference among the full answer
  texts is measured.
* ``letters`` (MMLU style): the options are listed as ``A. ...``, the context
  ends in ``Answer:`` and the continuations are `` A``, `` B``, ...; one row of
  logits scores them all.

Either can go through the model's chat template (``chat=True``): the prompt
becomes the user message and the continuation follows the assistant header.
"""

from __future__ import annotations

from typing import Callable

from llmcal.backends.base import MCRequest
from llmcal.tasks.item import MCItem

STYLES = ("cloze", "letters")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def build_request(
    item: MCItem,
    style: str = "cloze",
    chat_template: Callable[[str], str] | None = None,
) -> MCRequest:
    """The context and continuations that score ``item`` in ``style``."""
    if style == "cloze":
        body = f"Question: {item.question}\nAnswer:"
        conts = tuple(" " + c for c in item.choices)
    elif style == "letters":
        if len(item.choices) > len(LETTERS):
            raise ValueError(f"item {item.id!r}: too many choices for lettered options")
        lines = [f"Question: {item.question}"]
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
        body = "\n".join(lines) + "\nAnswer:"
        conts = tuple(" " + LETTERS[i] for i in range(len(item.choices)))
    else:
        raise ValueError(f"prompt style {style!r} is unknown; use one of {', '.join(STYLES)}")
    if chat_template is not None:
        # The user message holds the question; the assistant's turn starts the answer.
        user = body[: -len("Answer:")].rstrip("\n")
        context = chat_template(user)
        conts = tuple(c.lstrip(" ") for c in conts)
        return MCRequest(context=context, continuations=conts)
    return MCRequest(context=body, continuations=conts)


def normalization_lengths(item: MCItem, style: str) -> list[int]:
    """Characters of each scored continuation, lm-eval's ``acc_norm`` divisor."""
    if style == "letters":
        return [1] * len(item.choices)
    return [len(c) for c in item.choices]
