"""Every prompt a task item is asked in: multiple-choice styles and the open-ended wording.

Multiple choice (:func:`build_request`) turns an item into a scoring request
in a named style:

* ``cloze`` (lm-eval's ARC/SciQ style): context ``Question: {q}\\nAnswer:`` and
  continuations `` {choice}``; the model's preference among the full answer
  texts is measured.
* ``letters`` (MMLU style): the options are listed as ``A. ...``, the context
  ends in ``Answer:`` and the continuations are `` A``, `` B``, ...; one row of
  logits scores them all.  Past 26 options the labels go on ``AA``, ``AB``, ..
  (:func:`option_letter`), continuations of more than one token.

Either can go through the model's chat template (``chat_template``, a
callable from the user message to the prompt): the prompt becomes the user
message and the continuation follows the assistant header.

Open-ended (:func:`user_message`, :func:`answer_messages`,
:func:`followup_messages`): the question is asked with a short instruction
(:data:`INSTRUCTION`, or :data:`GSM8K_INSTRUCTION` for items graded
``numeric``, which reason first), as a conversation.  A conversation becomes
a prompt through a :data:`ChatTemplate`, the one thing a backend contributes
(its tokenizer's template, or the messages themselves for a server that takes
them); without one it is written out as plain ``Question:/Answer:`` text
(:func:`plain_prompt`).  The wording of a signal's own follow-up question
(verbalized confidence, P(True)) belongs to that signal's module in
``signals/``; :func:`followup_messages` only places it in the conversation.
"""

from __future__ import annotations

from typing import Callable, Union

from llmcal.core.items import MCItem, OpenItem
from llmcal.core.requests import MCRequest

STYLES = ("cloze", "letters")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_letter(i: int) -> str:
    """The label of option ``i`` (0-based) in the letters style: ``A``..``Z``, then ``AA``, ``AB``, ..
    (as spreadsheet columns), so any number of options has a label."""
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise ValueError(f"option index must be a whole number >= 0, got {i!r}")
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = LETTERS[r] + out
    return out


def letter_index(label: str) -> int | None:
    """The 0-based option index of a letters-style label (``"A"`` -> 0, ``"AA"`` -> 26), or None."""
    if not isinstance(label, str) or not label or len(label) > 8 or not all(c in LETTERS for c in label):
        return None
    n = 0
    for c in label:
        n = n * 26 + LETTERS.index(c) + 1
    return n - 1

INSTRUCTION = "Answer the question in a few words."
GSM8K_INSTRUCTION = "Solve the problem step by step, then write 'The answer is <number>.'"
NO_ANSWER = "(no answer)"  # stands in for an empty answer wherever the model is shown its own reply

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": ...}
Prompt = Union[str, list[Message]]
#: A conversation -> the prompt a backend is given (a string, or the messages for a server that takes them).
ChatTemplate = Callable[[list[Message]], Prompt]


# --------------------------------------------------------------------------- multiple choice


def build_request(
    item: MCItem,
    style: str = "cloze",
    chat_template: Callable[[str], str] | None = None,
) -> MCRequest:
    """The context and continuations that score ``item`` in ``style``."""
    if item.fixed_request:  # the task fixed its own requests (lm-eval's YAML): no style applies
        return fixed_request(item, chat_template)
    if style == "cloze":
        body = f"Question: {item.question}\nAnswer:"
        conts = tuple(" " + c for c in item.choices)
    elif style == "letters":
        # A..Z, then AA, AB, ...: 27 or more options get two-letter labels (scored as any continuation)
        labels = [option_letter(i) for i in range(len(item.choices))]
        lines = [f"Question: {item.question}"]
        lines += [f"{lab}. {c}" for lab, c in zip(labels, item.choices)]
        body = "\n".join(lines) + "\nAnswer:"
        conts = tuple(" " + lab for lab in labels)
    else:
        raise ValueError(f"prompt style {style!r} is unknown; use one of {', '.join(STYLES)}")
    if chat_template is not None:
        # The user message holds the question; the assistant's turn starts the answer.
        user = body[: -len("Answer:")].rstrip("\n")
        context = chat_template(user)
        conts = tuple(c.lstrip(" ") for c in conts)
        return MCRequest(context=context, continuations=conts)
    return MCRequest(context=body, continuations=conts)


def fixed_request(item: MCItem, chat_template: Callable | None = None) -> MCRequest:
    """The request an item fixed itself (:attr:`MCItem.contexts` or, templated, :attr:`MCItem.messages`)."""
    if item.messages:
        if chat_template is None:
            raise ValueError(f"item {item.id!r}: the task was built for the chat template; score it with --chat "
                             "(--apply_chat_template)")
        contexts = tuple(chat_template([{"role": r, "content": c} for r, c in conv]) for conv in item.messages)
    else:
        contexts = item.contexts
    shared = len(set(contexts)) == 1
    return MCRequest(context=contexts[0], continuations=item.continuations, contexts=() if shared else contexts)


def normalization_lengths(item: MCItem, style: str) -> list[int]:
    """Characters of each scored continuation, lm-eval's ``acc_norm`` divisor (for a task that fixed its
    requests, lm-eval's own: the length of each choice as the task defines it, without the delimiter)."""
    if style == "letters" and not item.fixed_request:
        return [len(option_letter(i)) for i in range(len(item.choices))]
    return [len(c) for c in item.choices]


# --------------------------------------------------------------------------- open-ended


def instruction_for(item: OpenItem) -> str:
    """The instruction an open item is asked with: GSM8K's for ``numeric`` items, else the short one."""
    return GSM8K_INSTRUCTION if item.grader == "numeric" else INSTRUCTION


def user_message(item: OpenItem) -> str:
    """The question as the user asks it: the instruction (GSM8K's for numeric items), then the question."""
    return f"{instruction_for(item)}\n\nQuestion: {item.question.strip()}"


def answer_messages(item: OpenItem) -> list[Message]:
    """The conversation that asks for the answer: one user turn."""
    return [{"role": "user", "content": user_message(item)}]


def followup_messages(item: OpenItem, answer: str, question: str) -> list[Message]:
    """The conversation that asks ``question`` about the model's own ``answer``, in the same chat
    (the verbalized-confidence follow-up; an empty answer is shown as ``(no answer)``)."""
    return answer_messages(item) + [
        {"role": "assistant", "content": answer or NO_ANSWER},
        {"role": "user", "content": question},
    ]


def plain_prompt(messages: list[Message]) -> str:
    """A conversation as plain text, for a model without a chat template: each user turn as is,
    each assistant turn after ``Answer: ``, ending in ``Answer:`` for the reply."""
    lines = [("Answer: " if m["role"] == "assistant" else "") + m["content"] for m in messages]
    return "\n".join(lines) + "\nAnswer:"


def render(messages: list[Message], chat_template: ChatTemplate | None = None) -> Prompt:
    """The prompt for ``messages``: ``chat_template(messages)``, or :func:`plain_prompt` without one."""
    if chat_template is None:
        return plain_prompt(messages)
    return chat_template([dict(m) for m in messages])


def answer_prompt(item: OpenItem, chat_template: ChatTemplate | None = None) -> Prompt:
    """The prompt that asks for ``item``'s answer."""
    return render(answer_messages(item), chat_template)


def followup_prompt(item: OpenItem, answer: str, question: str,
                    chat_template: ChatTemplate | None = None) -> Prompt:
    """The prompt that asks ``question`` after the model answered ``answer`` (see :func:`followup_messages`)."""
    return render(followup_messages(item, answer, question), chat_template)


__all__ = ["STYLES", "LETTERS", "option_letter", "letter_index", "INSTRUCTION", "GSM8K_INSTRUCTION", "NO_ANSWER",
           "Message", "Prompt",
           "ChatTemplate", "build_request", "normalization_lengths", "instruction_for", "user_message",
           "answer_messages", "followup_messages", "plain_prompt", "render", "answer_prompt", "followup_prompt"]
