"""Open-ended tasks: loaders that return :class:`OpenItem` and the grader each uses.

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

A spec may end in ``@grader`` to grade with another rule
(``nq_open@exact_match``).  Errors name the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import get_field, iter_csv, iter_jsonl, require_str
from llmcal.tasks.formats_public import _split_answers
from llmcal.tasks.graders import GRADERS
from llmcal.tasks.open_item import OpenItem

OpenLoader = Callable[[Path | None], list[OpenItem]]


def _builtin_open(_: Path | None) -> list[OpenItem]:
    from llmcal.tasks.builtin import builtin_open_items

    return [OpenItem(id=d["id"] + "-open", task=d["task"], question=d["question"], answers=tuple(d["answers"]),
                     grader="contains", meta=d["meta"]) for d in builtin_open_items()]


def _nq_open(data_dir: Path | None) -> list[OpenItem]:
    path = _file(data_dir, "nq_open_dev.jsonl", "nq_open")
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


def _gsm8k(data_dir: Path | None) -> list[OpenItem]:
    path = _file(data_dir, "gsm8k_test.jsonl", "gsm8k")
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


def _truthfulqa_gen(data_dir: Path | None) -> list[OpenItem]:
    path = _file(data_dir, "truthfulqa.csv", "truthfulqa_gen")
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


def _file(data_dir: Path | None, name: str, task: str) -> Path:
    from llmcal.tasks import registry

    return registry._file(registry.resolve_data_dir(data_dir, task), name, task)


#: open task name -> (loader, needs the data folder)
OPEN_TASKS: dict[str, tuple[OpenLoader, bool]] = {
    "builtin_open": (_builtin_open, False),
    "nq_open": (_nq_open, True),
    "gsm8k": (_gsm8k, True),
    "truthfulqa_gen": (_truthfulqa_gen, True),
}
_ALIASES = {"nq": "nq_open", "nq-open": "nq_open", "truthfulqa_generation": "truthfulqa_gen"}


def open_task_name(spec: str) -> str | None:
    """The open task a spec names (``nq_open``, ``nq_open@exact_match``), or None."""
    name = spec.strip().split("@")[0].split(":")[0].lower()
    name = _ALIASES.get(name, name)
    return name if name in OPEN_TASKS else None


def load_open_task(spec: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[OpenItem]:
    """The items of an open task spec, optionally graded by another rule (``name@grader``)."""
    name = open_task_name(spec)
    if name is None:
        raise TaskError(f"{spec!r} is not an open-ended task; open tasks: {', '.join(OPEN_TASKS)}")
    grader = spec.split("@", 1)[1].strip() if "@" in spec else None
    if grader is not None and grader not in GRADERS:
        raise TaskError(f"task {spec!r}: unknown grader {grader!r}; graders: {', '.join(GRADERS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive whole number, got {limit!r}")
    loader, _ = OPEN_TASKS[name]
    items = loader(Path(data_dir) if data_dir else None)
    if grader is not None:
        from dataclasses import replace

        items = [replace(it, grader=grader) for it in items]
    return items if limit is None else items[:limit]
