"""Loaders of the open-ended tasks: each file -> :class:`OpenItem`, with the grader each uses.

=================  ==========================================  ===========
task               source (in the data folder)                 grader
=================  ==========================================  ===========
``builtin_open``   the built-in questions as open questions    contains
                   (every accepted spelling), no data needed
``nq_open``        ``nq_open_dev.jsonl`` (question, answer[])  contains
``gsm8k``          ``gsm8k_test.jsonl`` (answer after ####)    numeric
``truthfulqa_gen`` ``truthfulqa.csv`` (Correct / Incorrect     truthful_f1
                   Answers)
=================  ==========================================  ===========

These are loaders only, like :mod:`llmcal.tasks.formats_public` for the
multiple-choice sets: they read a file they are given.  Names, splits, the
data folder and the ``name@grader`` syntax belong to the one entry point,
:func:`llmcal.tasks.registry.load_task`.  Errors name the file and line.
"""

from __future__ import annotations

from pathlib import Path

from llmcal.core.items import OpenItem
from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import get_field, iter_csv, iter_jsonl, require_str
from llmcal.tasks.formats_public import _split_answers


def load_builtin_open() -> list[OpenItem]:
    """The embedded questions as open questions (ids end in ``-open``), graded ``contains``."""
    from llmcal.tasks.builtin import builtin_open_items

    return [OpenItem(id=d["id"] + "-open", task=d["task"], question=d["question"], answers=tuple(d["answers"]),
                     grader="contains", meta=d["meta"]) for d in builtin_open_items()]


def load_nq_open(path: Path) -> list[OpenItem]:
    """NQ-open: one ``{"question", "answer": [...]}`` per line, graded ``contains``."""
    items = []
    for n, (line, rec) in enumerate(iter_jsonl(path), 1):
        where = {"source": path, "line": line}
        q = require_str(get_field(rec, "question", **where), "question", **where)
        answers = get_field(rec, "answer", **where)
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise TaskError("field 'answer' must be a non-empty list of strings", field="answer", **where)
        items.append(OpenItem(id=f"nq_open-{n}", task="nq_open", question=q, answers=tuple(answers),
                              grader="contains", meta={"line": line}))
    return items


def load_gsm8k(path: Path) -> list[OpenItem]:
    """GSM8K: the reference is the number after ``####`` in the solution, graded ``numeric``."""
    items = []
    for n, (line, rec) in enumerate(iter_jsonl(path), 1):
        where = {"source": path, "line": line}
        q = require_str(get_field(rec, "question", **where), "question", **where)
        solution = require_str(get_field(rec, "answer", **where), "answer", **where)
        if "####" not in solution:
            raise TaskError("field 'answer' has no '#### <number>' final answer", field="answer", **where)
        final = solution.rsplit("####", 1)[1].strip()
        items.append(OpenItem(id=f"gsm8k-{n}", task="gsm8k", question=q, answers=(final,), grader="numeric",
                              meta={"line": line}))
    return items


def load_truthfulqa_gen(path: Path) -> list[OpenItem]:
    """TruthfulQA generation: the best and correct answers against the incorrect ones (``truthful_f1``)."""
    items = []
    for n, (line, row) in enumerate(iter_csv(path, header=True), 1):
        where = {"source": path, "line": line}
        for col in ("Question", "Best Answer", "Correct Answers", "Incorrect Answers"):
            if col not in row:
                raise TaskError(f"column {col!r} is missing (columns: {list(row)})", field=col, **where)
        q = require_str(row["Question"], "Question", **where)
        best = require_str(row["Best Answer"], "Best Answer", **where).strip()
        right = [best] + [a for a in _split_answers(row["Correct Answers"]) if a != best]
        items.append(OpenItem(id=f"truthfulqa_gen-{n}", task="truthfulqa_gen", question=q, answers=tuple(right),
                              incorrect=tuple(_split_answers(row["Incorrect Answers"])), grader="truthful_f1",
                              meta={"line": line, "category": row.get("Category", "").strip()}))
    return items
