"""Loaders for the public sets in their released formats (ARC, SciQ, PIQA, CommonsenseQA, MMLU, TruthfulQA).

Each takes the file path(s), checks every record and returns ``list[MCItem]``;
the first bad record raises :class:`TaskError` naming the file and line.  The
choice order and the correct index follow lm-evaluation-harness where it has
the task (ARC, SciQ, PIQA, CommonsenseQA, MMLU), so per-item results can be
compared with it.  Item ids are stable across runs: the set's own id where it
has one (``arc_easy-Mercury_7175875``), else the split and the 1-based record
number (``sciq-test-17``, ``mmlu-anatomy-val-3``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import (
    LETTERS,
    get_field,
    iter_csv,
    iter_json_list,
    iter_jsonl,
    make_item,
    require_str,
)
from llmcal.core.items import MCItem


def _empty(path: Path) -> TaskError:
    return TaskError("no items (the file is empty)", source=path)


def _fmt_value(field: str, value: Any) -> str:
    return f"field {field!r} = {value!r}"


def _check_ids(items: list[MCItem], lines: list[int], path: Path) -> None:
    seen: dict[str, int] = {}
    for it, line in zip(items, lines):
        if it.id in seen:
            raise TaskError(f"id {it.id!r} repeats the record at line {seen[it.id]}", source=path, line=line,
                            field="id")
        seen[it.id] = line


def load_arc(path: str | Path, task: str = "arc_easy", split: str = "test") -> list[MCItem]:
    """ARC (AI2 Reasoning Challenge) JSON lines.

    Fields ``id``, ``question.stem``, ``question.choices[{label, text}]`` and
    ``answerKey``; 3 to 5 choices, labels ``A``.. or ``1``.. . The answer is
    the position of ``answerKey`` among the labels (lm-eval's ``arc_easy`` /
    ``arc_challenge`` gold).  ``meta["labels"]`` keeps the original labels.
    """
    path = Path(path)
    items, lines = [], []
    for line, rec in iter_jsonl(path):
        where = {"source": path, "line": line}
        rid = require_str(get_field(rec, "id", **where), "id", allow_number=True, **where)
        question = require_str(get_field(rec, "question.stem", **where), "question.stem", **where)
        raw = get_field(rec, "question.choices", **where)
        if not isinstance(raw, list):
            raise TaskError("field 'question.choices' should be a list", field="question.choices", **where)
        texts, labels = [], []
        for i, ch in enumerate(raw):
            if not isinstance(ch, dict):
                raise TaskError(f"field 'question.choices.{i}' should be an object with 'label' and 'text'",
                                field=f"question.choices.{i}", **where)
            labels.append(require_str(get_field(ch, "label", **where), f"question.choices.{i}.label",
                                      allow_number=True, **where).strip())
            texts.append(require_str(get_field(ch, "text", **where), f"question.choices.{i}.text",
                                     allow_number=True, **where))
        if len(set(labels)) != len(labels):
            raise TaskError(f"field 'question.choices': labels repeat: {labels}", field="question.choices", **where)
        key = get_field(rec, "answerKey", **where)
        if str(key).strip() not in labels:
            raise TaskError(f"{_fmt_value('answerKey', key)} is not among the choice labels {labels}",
                            field="answerKey", **where)
        items.append(make_item(
            task=task, id=f"{task}-{rid.strip()}", question=question, choices=texts,
            answer=labels.index(str(key).strip()),
            meta={"source": str(path), "line": line, "split": split, "labels": labels}, **where))
        lines.append(line)
    if not items:
        raise _empty(path)
    _check_ids(items, lines, path)
    return items


def load_sciq(path: str | Path, task: str = "sciq", split: str = "test") -> list[MCItem]:
    """SciQ: one JSON list of ``question``, ``correct_answer``, ``distractor1..3`` (and ``support``).

    The choices are ``[distractor1, distractor2, distractor3, correct_answer]``
    and the answer index is 3, lm-eval's ``sciq`` order.  lm-eval also puts the
    ``support`` paragraph before the question; it is not kept here (the
    question alone is the item).
    """
    path = Path(path)
    items = []
    for line, n, rec in iter_json_list(path):
        where = {"source": path, "line": line}
        question = require_str(get_field(rec, "question", **where), "question", **where)
        fields = ("distractor1", "distractor2", "distractor3", "correct_answer")
        choices = [require_str(get_field(rec, f, **where), f, allow_number=True, **where) for f in fields]
        items.append(make_item(task=task, id=f"{task}-{split}-{n}", question=question, choices=choices, answer=3,
                               meta={"source": str(path), "line": line, "item": n, "split": split}, **where))
    if not items:
        raise _empty(path)
    return items


def load_piqa(path: str | Path, labels_path: str | Path, task: str = "piqa", split: str = "valid") -> list[MCItem]:
    """PIQA: JSON lines of ``goal``, ``sol1``, ``sol2`` and a labels file with 0 or 1 a line.

    Choices ``[sol1, sol2]``, the answer the label (lm-eval's ``piqa``).  The
    two files must have the same number of records.
    """
    path, labels_path = Path(path), Path(labels_path)
    labels: list[tuple[int, int]] = []
    try:
        text = labels_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise TaskError("labels file not found", source=labels_path) from e
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read the labels file: {e}", source=labels_path) from e
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        if raw.strip() not in ("0", "1"):
            raise TaskError(f"label {raw.strip()!r} is not 0 or 1", source=labels_path, line=line)
        labels.append((line, int(raw.strip())))
    records = list(iter_jsonl(path))
    if not records:
        raise _empty(path)
    if len(records) != len(labels):
        raise TaskError(f"{len(records)} records but {labels_path.name} has {len(labels)} labels; "
                        "the two files must match line for line", source=path)
    items = []
    for n, ((line, rec), (_, label)) in enumerate(zip(records, labels), 1):
        where = {"source": path, "line": line}
        goal = require_str(get_field(rec, "goal", **where), "goal", **where)
        sols = [require_str(get_field(rec, f, **where), f, **where) for f in ("sol1", "sol2")]
        items.append(make_item(task=task, id=f"{task}-{split}-{n}", question=goal, choices=sols, answer=label,
                               meta={"source": str(path), "line": line, "split": split}, **where))
    return items


def load_commonsenseqa(path: str | Path, task: str = "commonsenseqa", split: str = "dev") -> list[MCItem]:
    """CommonsenseQA JSON lines: ``id``, ``question``, ``choices{label[], text[]}``, ``answerKey``.

    The answer is the position of ``answerKey`` among the labels (lm-eval's
    ``commonsense_qa`` gold); ``meta["concept"]`` keeps ``question_concept``.
    """
    path = Path(path)
    items, lines = [], []
    for line, rec in iter_jsonl(path):
        where = {"source": path, "line": line}
        rid = require_str(get_field(rec, "id", **where), "id", allow_number=True, **where)
        qv = get_field(rec, "question", **where)
        if isinstance(qv, dict):  # the original release nests it like ARC
            qv = get_field(rec, "question.stem", **where)
            qfield = "question.stem"
        else:
            qfield = "question"
        question = require_str(qv, qfield, **where)
        labels_v = get_field(rec, "choices.label", **where)
        texts_v = get_field(rec, "choices.text", **where)
        if not isinstance(labels_v, list) or not isinstance(texts_v, list) or len(labels_v) != len(texts_v):
            raise TaskError("field 'choices' should hold 'label' and 'text' lists of the same length",
                            field="choices", **where)
        labels = [str(x).strip() for x in labels_v]
        texts = [require_str(t, f"choices.text.{i}", allow_number=True, **where) for i, t in enumerate(texts_v)]
        if len(set(labels)) != len(labels):
            raise TaskError(f"field 'choices.label': labels repeat: {labels}", field="choices.label", **where)
        key = get_field(rec, "answerKey", **where)
        if str(key).strip() not in labels:
            raise TaskError(f"{_fmt_value('answerKey', key)} is not among the choice labels {labels}",
                            field="answerKey", **where)
        meta: dict[str, Any] = {"source": str(path), "line": line, "split": split}
        if rec.get("question_concept"):
            meta["concept"] = rec["question_concept"]
        items.append(make_item(task=task, id=f"{task}-{rid.strip()}", question=question, choices=texts,
                               answer=labels.index(str(key).strip()), meta=meta, **where))
        lines.append(line)
    if not items:
        raise _empty(path)
    _check_ids(items, lines, path)
    return items


MMLU_SPLITS = ("dev", "val", "test")


def load_mmlu_csv(path: str | Path, subject: str | None = None, split: str | None = None,
                  task: str = "mmlu") -> list[MCItem]:
    """One MMLU subject file: headerless CSV rows ``question, A, B, C, D, letter``.

    ``subject`` and ``split`` default to what the name ``<subject>_<split>.csv``
    says.  Ids are ``mmlu-<subject>-<split>-<row>``.
    """
    path = Path(path)
    if subject is None or split is None:
        m = re.fullmatch(r"(.+)_(dev|val|test)", path.stem)
        subject = subject or (m.group(1) if m else path.stem)
        split = split or (m.group(2) if m else "test")
    items = []
    for n, (line, row) in enumerate(iter_csv(path, header=False), 1):
        where = {"source": path, "line": line}
        if len(row) != 6:
            raise TaskError(f"{len(row)} cells; an MMLU row has 6 (question, A, B, C, D, answer letter)", **where)
        question = require_str(row[0], "question", **where)
        choices = [require_str(c, f"column {LETTERS[i]}", **where) for i, c in enumerate(row[1:5])]
        key = row[5].strip()
        if key not in ("A", "B", "C", "D"):
            raise TaskError(f"field 'answer' (column 6) = {row[5]!r} is not one of the letters A, B, C, D",
                            field="answer", **where)
        items.append(make_item(
            task=task, id=f"{task}-{subject}-{split}-{n}", question=question, choices=choices,
            answer=LETTERS.index(key),
            meta={"source": str(path), "line": line, "subject": subject, "split": split}, **where))
    if not items:
        raise _empty(path)
    return items


def mmlu_subjects(root: str | Path, split: str = "test") -> list[str]:
    """The subjects with a file in ``root/<split>/``, sorted."""
    folder = Path(root) / split
    suffix = f"_{split}.csv"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


def load_mmlu(root: str | Path, split: str = "test", subjects: list[str] | None = None,
              task: str = "mmlu") -> list[MCItem]:
    """MMLU from ``root/<split>/<subject>_<split>.csv``: the given subjects, or all of them sorted."""
    root = Path(root)
    if split not in MMLU_SPLITS:
        raise TaskError(f"mmlu: unknown split {split!r}; use one of {', '.join(MMLU_SPLITS)}")
    folder = root / split
    if not folder.is_dir():
        raise TaskError(f"mmlu: folder not found (expected {split}/<subject>_{split}.csv files)", source=folder)
    present = mmlu_subjects(root, split)
    if subjects is None:
        subjects = present
        if not subjects:
            raise TaskError(f"no <subject>_{split}.csv files", source=folder)
    items: list[MCItem] = []
    for subject in subjects:
        if subject not in present:
            elsewhere = [s for s in MMLU_SPLITS if s != split and subject in mmlu_subjects(root, s)]
            if elsewhere:
                hint = f"it is in the {' and '.join(elsewhere)} split(s): use mmlu:{subject}:{elsewhere[-1]}"
            else:
                import difflib

                close = difflib.get_close_matches(subject, present, n=3)
                hint = f"did you mean {', '.join(close)}?" if close else f"subjects: {', '.join(present)}"
            raise TaskError(f"mmlu: no subject {subject!r} in the {split} split; {hint}", source=folder)
        items.extend(load_mmlu_csv(folder / f"{subject}_{split}.csv", subject=subject, split=split, task=task))
    return items


def _split_answers(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(";"):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def load_truthfulqa_mc1(path: str | Path, task: str = "truthfulqa_mc1") -> list[MCItem]:
    """TruthfulQA's CSV as single-true multiple choice: ``[Best Answer] + Incorrect Answers``, answer 0.

    ``Incorrect Answers`` is ``;``-separated; empty parts (a trailing ``;``)
    and repeats are dropped.  The correct answer comes first as in lm-eval's
    ``truthfulqa_mc1`` -- but lm-eval reads the Hugging Face
    ``truthful_qa/multiple_choice`` targets, whose wrong answers are not
    exactly this CSV's, so scores are close to, not equal to, lm-eval's.
    """
    path = Path(path)
    items = []
    for n, (line, row) in enumerate(iter_csv(path, header=True), 1):
        where = {"source": path, "line": line}
        for col in ("Question", "Best Answer", "Incorrect Answers"):
            if col not in row:
                raise TaskError(f"column {col!r} is missing (columns: {list(row)})", field=col, **where)
        question = require_str(row["Question"], "Question", **where)
        best = require_str(row["Best Answer"], "Best Answer", **where).strip()
        wrong = [w for w in _split_answers(row["Incorrect Answers"]) if w != best]
        if not wrong:
            raise TaskError("field 'Incorrect Answers' has no answer (nothing to choose between)",
                            field="Incorrect Answers", **where)
        meta: dict[str, Any] = {"source": str(path), "line": line}
        for col, key in (("Category", "category"), ("Type", "type")):
            if row.get(col, "").strip():
                meta[key] = row[col].strip()
        items.append(make_item(task=task, id=f"{task}-{n}", question=question, choices=[best, *wrong], answer=0,
                               meta=meta, **where))
    if not items:
        raise _empty(path)
    return items
