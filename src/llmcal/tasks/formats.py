"""Reading records from JSONL / JSON / CSV files, and the generic multiple-choice format.

The helpers here are shared by every loader: they yield ``(line, record)``
pairs with 1-based line numbers, and :func:`make_item` turns checked values
into an :class:`MCItem`, raising :class:`TaskError` with the file and line when
they are not a valid question.

The generic format (documented in ``docs/tasks.md``) reads any ``.jsonl``,
``.json`` or ``.csv`` file whose records have a question, a list of choices
and an answer; a *mapping* renames the fields::

    load_generic("my.jsonl", mapping="question=stem,choices=options,answer=label")

Field names may be dotted paths into nested JSON (``question.stem``,
``choices.0``); ``choices`` may also name several fields joined by ``|``
(``choices=A|B|C|D``), one choice each.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from llmcal.tasks.errors import TaskError
from llmcal.tasks.prompts import letter_index, option_letter
from llmcal.core.items import MCItem

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: Keys a mapping may set.  ``question``, ``choices``, ``answer`` and ``id``
#: name fields; ``meta`` names fields (``|``-separated) copied into
#: ``MCItem.meta``; ``answer_type`` says how to read the answer.
#: ``answers`` (an alias list) and ``grader`` read an open-ended file; ``header`` (yes/no/auto)
#: says whether a CSV's first row names its columns.
MAPPING_KEYS = ("question", "choices", "answer", "id", "meta", "answer_type", "answers", "grader", "header")
HEADER_VALUES = ("auto", "yes", "no")
ANSWER_TYPES = ("auto", "index", "index1", "letter", "label", "text")

# Field names tried, in order, where the mapping does not name one.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "question": ("question",),
    "choices": ("choices", "options"),
    "answer": ("answer", "answerKey", "label"),
    "id": ("id",),
}

_MISSING = object()


# --------------------------------------------------------------------------- reading


def _decode_line(raw: bytes, source: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=source, line=lineno) from e
    if lineno == 1:
        text = text.lstrip("\ufeff")
    return text


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise TaskError("file not found", source=path) from e
    except IsADirectoryError as e:
        raise TaskError("is a folder, not a file", source=path) from e
    except OSError as e:
        raise TaskError(f"cannot read: {e.strerror or e}", source=path) from e


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of a JSON-lines file.

    A line that is not JSON, or is JSON but not an object, raises
    :class:`TaskError` naming the file and line.
    """
    path = Path(path)
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
        text = _decode_line(raw, path, lineno)
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"malformed JSON ({e.msg} at column {e.colno})", source=path, line=lineno) from e
        if not isinstance(obj, dict):
            raise TaskError(f"expected a JSON object, got {_jtype(obj)}", source=path, line=lineno)
        yield lineno, obj


def _read_text(path: Path) -> str:
    """The file as UTF-8 text without a BOM; a decoding error names the line."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TaskError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=path, line=line) from e


def iter_json_list(path: str | Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(line, item, object)`` for each element of a file holding one JSON list of objects.

    ``line`` is the line where the element starts and ``item`` its 1-based
    position.  A file whose first character is ``{`` is read as JSON lines
    instead (``item`` then counts the non-blank lines).
    """
    path = Path(path)
    text = _read_text(path)
    pos = _skip_ws(text, 0)
    if pos < len(text) and text[pos] == "{":
        for n, (lineno, obj) in enumerate(iter_jsonl(path), 1):
            yield lineno, n, obj
        return
    if pos >= len(text):
        return
    if text[pos] != "[":
        raise TaskError("expected a JSON list of objects (the file should start with '[')",
                        source=path, line=text.count("\n", 0, pos) + 1)
    decoder = json.JSONDecoder()
    line, last = 1, 0
    pos = _skip_ws(text, pos + 1)
    item = 0
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line += text.count("\n", last, pos)
        last = pos
        item += 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise TaskError(f"malformed JSON in item {item} ({e.msg} at column {e.colno})",
                            source=path, line=e.lineno) from e
        if not isinstance(obj, dict):
            raise TaskError(f"item {item}: expected a JSON object, got {_jtype(obj)}", source=path, line=line)
        yield line, item, obj
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) != len(text):
                raise TaskError("unexpected text after the closing ']'",
                                source=path, line=text.count("\n", 0, pos) + 1)
            return
        raise TaskError(f"malformed JSON after item {item} (expected ',' or ']')",
                        source=path, line=text.count("\n", 0, min(pos, len(text))) + 1)


def iter_csv(path: str | Path, header: bool = True) -> Iterator[tuple[int, Any]]:
    """``(line, row)`` for each record of a CSV file (UTF-8, a BOM is allowed).

    With ``header`` the first record names the columns and rows are dicts
    (a row with more cells than the header raises :class:`TaskError`);
    without it rows are lists.  ``line`` is the line where the record starts
    (a quoted cell may span lines).  Blank lines are skipped.
    """
    path = Path(path)
    text = _read_text(path)
    # io splits lines at \n / \r only; str.splitlines would also split at U+0085,
    # U+2028 ..., which occur inside MMLU questions
    reader = csv.reader(io.StringIO(text, newline=""))
    columns: list[str] | None = None
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise TaskError(f"malformed CSV ({e})", source=path, line=start) from e
        line, start = start, reader.line_num + 1
        if not row or all(not c.strip() for c in row):
            continue
        if header and columns is None:
            columns = [c.strip() for c in row]
            if len(set(columns)) != len(columns):
                dup = sorted({c for c in columns if columns.count(c) > 1})
                raise TaskError(f"header names a column twice: {dup}", source=path, line=line)
            continue
        if columns is None:
            yield line, row
            continue
        if len(row) > len(columns):
            raise TaskError(f"{len(row)} cells but the header has {len(columns)} columns", source=path, line=line)
        yield line, {c: (row[i] if i < len(row) else "") for i, c in enumerate(columns)}


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- fields


def get_field(record: Mapping[str, Any], path: str, default: Any = _MISSING, **where: Any) -> Any:
    """The value at a dotted ``path`` (``question.stem``, ``choices.0``) of ``record``.

    A missing field raises :class:`TaskError` (``where`` gives its source,
    line and unit) unless a ``default`` is given.
    """
    if path in record:  # a flat key that itself contains a dot
        return record[path]
    value: Any = record
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and re.fullmatch(r"\d+", part) and int(part) < len(value):
            value = value[int(part)]
        else:
            if default is not _MISSING:
                return default
            raise TaskError(f"field {path!r} is missing", field=path, **where)
    return value


def require_str(value: Any, field: str, *, allow_number: bool = False, **where: Any) -> str:
    """``value`` as a non-blank string, else :class:`TaskError` naming ``field``."""
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TaskError(f"field {field!r} should be a string, got {_jtype(value)}", field=field, **where)
    if not value.strip():
        raise TaskError(f"field {field!r} is empty", field=field, **where)
    return value


def make_item(
    *,
    task: str,
    id: str,
    question: str,
    choices: Iterable[str],
    answer: int,
    meta: dict[str, Any],
    source: str | Path,
    line: int | None,
    unit: str = "line",
) -> MCItem:
    """An :class:`MCItem`, or :class:`TaskError` at ``source`` ``line`` when it is not valid.

    Choices must be non-blank strings (at least two); identical choice texts
    are allowed (some public sets have them) and flagged in ``meta``:
    ``duplicate_choices`` and, where the correct text also appears as a wrong
    choice, ``answer_duplicated`` (cloze scoring cannot tell such choices apart).
    """
    where = {"source": source, "line": line, "unit": unit}
    choices = tuple(choices)
    if not question.strip():
        raise TaskError("the question is empty", **where)
    if len(choices) < 2:
        raise TaskError(f"needs at least 2 choices, got {len(choices)}", **where)
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise TaskError(f"choice {i} should be a string, got {_jtype(c)}", **where)
        if not c.strip():
            raise TaskError(f"choice {i} is empty", **where)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise TaskError(f"answer index {answer!r} is not among the {len(choices)} choices", **where)
    if len(set(choices)) != len(choices):
        meta["duplicate_choices"] = True
        if choices.count(choices[answer]) > 1:
            meta["answer_duplicated"] = True
    try:
        return MCItem(id=id, task=task, question=question, choices=choices, answer=answer, meta=meta)
    except ValueError as e:  # MCItem's own checks; the ones above should catch them first
        raise TaskError(str(e), **where) from e


# --------------------------------------------------------------------------- generic format


def fields_spec(value: str) -> str:
    """``--fields``: a ``key=field,...`` string as given, or a YAML file of ``key: field`` pairs as that string.

    Errors name the YAML file (and the key) so that a user finds the line to fix.
    """
    value = value.strip()
    if not value.lower().endswith((".yaml", ".yml")):
        parse_mapping(value)  # checked now, before any model is loaded
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise TaskError("--fields: the fields YAML file does not exist", source=path)
    import yaml

    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TaskError(f"--fields: not valid YAML ({getattr(e, 'problem', e)})", source=path,
                        line=mark.line + 1 if mark is not None else None) from None
    if not isinstance(data, Mapping) or not data:
        raise TaskError("--fields: the YAML file must map keys to field names (question: sentence ...; keys: "
                        f"{', '.join(MAPPING_KEYS)})", source=path)
    parts = []
    for key, field in data.items():
        if isinstance(field, list):
            field = "|".join(str(f) for f in field)  # choices: [option1, option2]
        if not isinstance(field, (str, int)) or isinstance(field, bool) or "," in str(field):
            raise TaskError(f"--fields: {key}: expected a field name (or a list of them for choices), got "
                            f"{field!r}", source=path, field=str(key))
        parts.append(f"{key}={field}")
    spec = ",".join(parts)
    try:
        parse_mapping(spec)
    except TaskError as e:
        raise TaskError(f"--fields: {e.detail}", source=path, field=e.field) from None
    return spec


def parse_mapping(mapping: str | Mapping[str, str] | None) -> dict[str, str]:
    """A field mapping from ``"question=stem,choices=options,answer=label"`` or a dict.

    Keys are among :data:`MAPPING_KEYS`; values are field names (dotted paths
    allowed; for ``choices`` and ``meta`` several names joined by ``|``).
    """
    if mapping is None:
        return {}
    if isinstance(mapping, str):
        out: dict[str, str] = {}
        for part in mapping.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise TaskError(f"mapping {mapping!r}: {part!r} is not key=field "
                                f"(keys: {', '.join(MAPPING_KEYS)})", field=part)
            key, _, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if key == "answer" and ":" in value and value.rsplit(":", 1)[1] in ANSWER_TYPES:
                value, out["answer_type"] = value.rsplit(":", 1)  # answer=FIELD:TYPE
            out[key] = value
        mapping = out
    result: dict[str, str] = {}
    for key, value in mapping.items():
        if key not in MAPPING_KEYS:
            raise TaskError(f"mapping: unknown key {key!r}; use {', '.join(MAPPING_KEYS)}", field=key)
        if not isinstance(value, str) or not value.strip():
            raise TaskError(f"mapping: {key}= needs a field name", field=key)
        result[key] = value.strip()
    if result.get("header", "auto") not in HEADER_VALUES:
        raise TaskError(f"mapping: header={result['header']!r} is not one of {', '.join(HEADER_VALUES)}",
                        field="header")
    if result.get("answer_type", "auto") not in ANSWER_TYPES:
        raise TaskError(f"mapping: answer_type={result['answer_type']!r} is not one of "
                        f"{', '.join(ANSWER_TYPES)}", field="answer_type")
    return result


def _pick_field(record: Mapping[str, Any], key: str, mapping: dict[str, str], where: dict) -> tuple[str, Any]:
    """(field name, value) for ``key``: the mapped name, else the first default name present."""
    if key in mapping:
        name = mapping[key]
        return name, get_field(record, name, **where)
    for name in DEFAULT_FIELDS[key]:
        value = get_field(record, name, None)
        if value is not None:
            return name, value
    tried = " or ".join(repr(n) for n in DEFAULT_FIELDS[key])
    raise TaskError(f"field {tried} is missing (name the {key} field: --fields {key}=FIELD on the command "
                    f"line, a fields YAML file, or mapping={{'{key}': FIELD}} in Python)",
                    field=DEFAULT_FIELDS[key][0], **where)


def _read_choices(
    record: Mapping[str, Any], mapping: dict[str, str], where: dict
) -> tuple[str, list[str], list[str] | None]:
    """(field description, choice texts, labels or None)."""
    spec = mapping.get("choices")
    if spec is None and not any(get_field(record, n, None) is not None for n in DEFAULT_FIELDS["choices"]):
        # CSV style: columns A, B, C, ... hold the choices
        letters = [L for L in LETTERS if L in record]
        if len(letters) >= 2 and "".join(letters) == LETTERS[: len(letters)]:
            spec = "|".join(letters)
    if spec is not None and "|" in spec:
        names = [n.strip() for n in spec.split("|") if n.strip()]
        values = [get_field(record, n, **where) for n in names]
        while values and (values[-1] is None or (isinstance(values[-1], str) and not values[-1].strip())):
            values.pop()  # trailing empty columns: fewer choices in this row
        texts = [require_str(v, n, allow_number=True, **where) for n, v in zip(names, values)]
        return spec, texts, None
    field, value = _pick_field(record, "choices", mapping if spec is None else {**mapping, "choices": spec}, where)
    if isinstance(value, str):
        texts = [p.strip() for p in value.split(";") if p.strip()]
        return field, texts, None
    if isinstance(value, Mapping):  # {"text": [...], "label": [...]} (CommonsenseQA, HF ARC)
        if "text" not in value or not isinstance(value["text"], list):
            raise TaskError(f"field {field!r} is an object without a 'text' list", field=field, **where)
        texts = [require_str(t, f"{field}.text.{i}", allow_number=True, **where) for i, t in enumerate(value["text"])]
        labels = value.get("label")
        if labels is None:
            return field, texts, None
        if not isinstance(labels, list) or len(labels) != len(texts):
            raise TaskError(f"field {field!r}: 'label' should be a list as long as 'text' ({len(texts)})",
                            field=field, **where)
        return field, texts, _check_labels([str(lab) for lab in labels], field, where)
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value):  # [{"label": "A", "text": ...}] (ARC)
            texts, labels = [], []
            for i, v in enumerate(value):
                if "text" not in v:
                    raise TaskError(f"field '{field}.{i}' has no 'text'", field=f"{field}.{i}", **where)
                texts.append(require_str(v["text"], f"{field}.{i}.text", allow_number=True, **where))
                labels.append(None if v.get("label") is None else str(v["label"]))
            if all(lab is None for lab in labels):
                return field, texts, None
            if any(lab is None for lab in labels):
                raise TaskError(f"field {field!r}: some choices have a 'label' and some do not",
                                field=field, **where)
            return field, texts, _check_labels(labels, field, where)
        texts = [require_str(v, f"{field}.{i}", allow_number=True, **where) for i, v in enumerate(value)]
        return field, texts, None
    raise TaskError(f"field {field!r} should be a list of choices (or a ';'-separated string), "
                    f"got {_jtype(value)}", field=field, **where)


def _check_labels(labels: list[str], field: str, where: dict) -> list[str]:
    if len(set(labels)) != len(labels):
        raise TaskError(f"field {field!r}: choice labels repeat: {labels}", field=field, **where)
    return labels


def resolve_answer(
    value: Any,
    choices: list[str],
    labels: list[str] | None,
    field: str,
    answer_type: str = "auto",
    **where: Any,
) -> int:
    """The 0-based index of the correct choice from an answer field's ``value``.

    ``auto``: an integer is a 0-based index; with choice labels a string must
    be a label (or the text of one choice); otherwise a string may be a 0-based index
    (``"2"``), a letter ``A``.. or the text of exactly one choice -- when two
    readings disagree (``"2"`` among the choices ``["1", "2", "3"]``) the record
    is refused as ambiguous and ``answer_type`` must say which is meant.
    """
    n = len(choices)
    shown = f"field {field!r} = {value!r}"

    def fail(why: str) -> TaskError:
        return TaskError(f"{shown} {why}", field=field, **where)

    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise fail(f"should be an index, a letter or a choice text, not {_jtype(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise fail("is not a whole number")
        value = int(value)
    text = value.strip() if isinstance(value, str) else None

    def as_index(offset: int) -> int | None:
        if isinstance(value, int):
            return value - offset
        if text is not None and re.fullmatch(r"-?\d+", text):
            return int(text) - offset
        return None

    def as_letter() -> int | None:
        # A..Z, and AA, AB, .. past 26 choices (the letters style's labels, tasks.prompts.option_letter)
        if text is not None and text.isupper() and (len(text) == 1 or n > len(LETTERS)):
            return letter_index(text)
        return None

    def as_text() -> list[int]:
        if not isinstance(value, str):
            return []
        hits = [i for i, c in enumerate(choices) if c == value]
        return hits or [i for i, c in enumerate(choices) if c.strip() == text]

    letters = f"A..{option_letter(n - 1)}" if n else "A"
    if answer_type in ("index", "index1"):
        idx = as_index(1 if answer_type == "index1" else 0)
        lo = 1 if answer_type == "index1" else 0
        if idx is None:
            raise fail(f"is not an index (answer_type={answer_type})")
        if not 0 <= idx < n:
            raise fail(f"is not an index among the {n} choices ({lo}..{n - 1 + lo})")
        return idx
    if answer_type == "letter":
        idx = as_letter()
        if idx is None or idx >= n:
            raise fail(f"is not a letter {letters} for the {n} choices")
        return idx
    if answer_type == "auto" and isinstance(value, int):
        if not 0 <= value < n:
            raise fail(f"is not an index among the {n} choices (0..{n - 1})")
        return value
    if answer_type == "label" or (answer_type == "auto" and labels is not None):
        if labels is None:
            raise fail("cannot be read as a label: the choices have no labels")
        key = str(value).strip()
        if key in labels:
            return labels.index(key)
        hits = as_text() if answer_type == "auto" else []
        if len(hits) == 1:
            return hits[0]
        raise fail(f"is not among the choice labels {labels}")
    if answer_type == "text":
        hits = as_text()
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise fail(f"matches {len(hits)} identical choices {hits}; give an index instead")
        raise fail(f"is not among the choices {choices}")
    # auto, no labels, a string
    readings: dict[str, int] = {}
    idx = as_index(0)
    if idx is not None and 0 <= idx < n:
        readings["index"] = idx
    idx = as_letter()
    if idx is not None and idx < n:
        readings["letter"] = idx
    hits = as_text()
    if len(hits) > 1:
        if not readings:
            raise fail(f"matches {len(hits)} identical choices {hits}; give an index or a letter instead")
    elif hits:
        readings["text"] = hits[0]
    if not readings:
        raise fail(f"is neither an index 0..{n - 1}, a letter {letters} nor one of the choices {choices}")
    if len(set(readings.values())) > 1:
        which = ", ".join(f"{k} -> choice {v}" for k, v in readings.items())
        raise fail(f"is ambiguous ({which}); set answer_type=index|letter|text in the mapping")
    return next(iter(readings.values()))


def _question_of(record: Any, m: dict[str, str], source: str | Path, number: int,
                 unit: str) -> tuple[dict[str, Any], str]:
    """(where, question text) of one record of either kind, or :class:`TaskError` at its line."""
    where = {"source": source, "line": number, "unit": unit}
    if not isinstance(record, Mapping):
        raise TaskError(f"expected a record with fields, got {_jtype(record)}", **where)
    qfield, qvalue = _pick_field(record, "question", m, where)
    return where, require_str(qvalue, qfield, **where)


def records_to_items(
    records: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    task: str,
    source: str | Path,
    mapping: str | Mapping[str, str] | None = None,
    unit: str = "line",
) -> list[MCItem]:
    """Items from ``(number, record)`` pairs read in the generic format; all are checked first.

    Ids are ``<task>-<id field>`` where the record has an id, else
    ``<task>-<number>``; ``meta`` holds ``source`` and ``line`` (or ``row``).
    """
    m = parse_mapping(mapping)
    answer_type = m.get("answer_type", "auto")
    meta_fields = [f.strip() for f in m.get("meta", "").split("|") if f.strip()]
    items: list[MCItem] = []
    seen: dict[str, int] = {}
    for number, record in records:
        where, question = _question_of(record, m, source, number, unit)
        cfield, choices, labels = _read_choices(record, m, where)
        if len(choices) < 2:
            raise TaskError(f"field {cfield!r} holds {len(choices)} choice(s); at least 2 are needed",
                            field=cfield, **where)
        afield, avalue = _pick_field(record, "answer", m, where)
        answer = resolve_answer(avalue, choices, labels, afield, answer_type, **where)
        if "id" in m:
            rid = get_field(record, m["id"], **where)
        else:
            rid = get_field(record, "id", None)
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            item_id = f"{task}-{number}"
        else:
            item_id = f"{task}-{str(rid).strip()}"
        if item_id in seen:
            raise TaskError(f"id {item_id!r} repeats the record at {unit} {seen[item_id]}", field=m.get("id", "id"),
                            **where)
        seen[item_id] = number
        meta: dict[str, Any] = {"source": str(source), unit: number}
        if labels is not None:
            meta["labels"] = labels
        for f in meta_fields:
            meta[f] = get_field(record, f, None)
        items.append(make_item(task=task, id=item_id, question=question, choices=choices, answer=answer,
                               meta=meta, **where))
    if not items:
        raise TaskError("no items (the file or split is empty)", source=source)
    return items


GENERIC_SUFFIXES = (".jsonl", ".json", ".csv")
#: the open-ended format's alias-list field names, tried in order; a CSV cell splits at ``|``
ANSWERS_FIELDS = ("answers", "aliases", "answer")
#: a headerless CSV row of six cells ending in A-D is MMLU's layout
MMLU_ROW_MAPPING = {"question": "0", "choices": "1|2|3|4", "answer": "5", "answer_type": "letter"}


def _field_names(mapping: Mapping[str, str]) -> set[str]:
    names = {n.lower() for names in DEFAULT_FIELDS.values() for n in names} | {n.lower() for n in ANSWERS_FIELDS}
    for key in ("question", "choices", "answer", "id", "answers", "meta"):
        names |= {n.strip().lower() for n in mapping.get(key, "").split("|") if n.strip()}
    return names


def csv_has_header(path: Path, mapping: Mapping[str, str]) -> bool:
    """Whether the CSV's first row names its columns: as declared (``header=yes|no``), else
    when a cell of it is a field name the format or the mapping uses (``question``, ``answer``...)."""
    declared = mapping.get("header", "auto")
    if declared != "auto":
        return declared == "yes"
    first = next(iter_csv(path, header=False), None)
    if first is None:
        return True
    return any(c.strip().lower() in _field_names(mapping) for c in first[1])


def _csv_records(path: Path, m: dict[str, str]) -> tuple[Iterable[tuple[int, Mapping[str, Any]]], dict[str, str]]:
    """A CSV's records as dicts (a headerless file's columns are named "0", "1", ...) and the mapping to use."""
    if csv_has_header(path, m):
        return iter_csv(path, header=True), m
    rows = list(iter_csv(path, header=False))
    if not any(k in m for k in ("question", "choices", "answer", "answers")):
        first = rows[0][1] if rows else []
        if len(first) == 6 and first[5].strip() in ("A", "B", "C", "D"):
            m = {**MMLU_ROW_MAPPING, **m}
        else:
            raise TaskError(f"the first row ({len(first)} cells) names no column this format knows and is not an "
                            "MMLU row (question, A, B, C, D, letter): name the columns with --fields "
                            "question=0,choices=1|2|3,answer=4 (headerless columns are numbered from 0), or "
                            "declare header=yes", source=path, line=rows[0][0] if rows else None)
    return [(line, {str(i): c for i, c in enumerate(row)}) for line, row in rows], m


def _records(path: Path, m: dict[str, str]) -> tuple[Iterable[tuple[int, Mapping[str, Any]]], dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return iter_jsonl(path), m
    if suffix == ".json":
        return ((line, obj) for line, _, obj in iter_json_list(path)), m
    if suffix == ".csv":
        return _csv_records(path, m)
    raise TaskError(f"unknown file type {suffix or '(none)'!r}; use {', '.join(GENERIC_SUFFIXES)}", source=path)


def _is_open(record: Mapping[str, Any], m: Mapping[str, str]) -> bool:
    """An open-ended record: no choices, and an alias list (or a mapped ``answers`` field)."""
    if "choices" in m or any(get_field(record, n, None) is not None for n in DEFAULT_FIELDS["choices"]):
        return False
    if "answers" in m:
        return True
    if any(get_field(record, n, None) is not None for n in ANSWERS_FIELDS[:2]):  # answers, aliases
        return True
    return isinstance(get_field(record, "answer", None), list)  # NQ-open's {"answer": [...]}


def generic_kind(path: str | Path, mapping: str | Mapping[str, str] | None = None) -> str:
    """``"mc"`` or ``"open"`` for a generic file (or folder), from its first record only."""
    path = Path(path)
    m = parse_mapping(mapping)
    files = folder_files(path) if path.is_dir() else [path]
    records, m = _records(files[0], m)
    first = next(iter(records), None)
    return "open" if first is not None and isinstance(first[1], Mapping) and _is_open(first[1], m) else "mc"


def _aliases(value: Any, field: str, where: dict) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [a for a in (x.strip() for x in value.split("|")) if a]
    if not isinstance(value, list) or not value or not all(isinstance(a, (str, int, float)) for a in value):
        raise TaskError(f"field {field!r} must be a non-empty list of answers (a CSV cell: answers joined "
                        "by '|')", field=field, **where)
    return tuple(str(a).strip() for a in value if str(a).strip())


def records_to_open_items(records: Iterable[tuple[int, Mapping[str, Any]]], *, task: str, source: str | Path,
                          m: dict[str, str], unit: str = "line") -> list[Any]:
    """Open-ended items (question + accepted answers), graded ``contains`` unless a ``grader`` field says."""
    from llmcal.core.items import OpenItem

    items: list[Any] = []
    for number, record in records:
        where, question = _question_of(record, m, source, number, unit)
        if "answers" in m:
            afield = m["answers"]
            avalue = get_field(record, afield, **where)
        else:
            afield = next((n for n in ANSWERS_FIELDS if get_field(record, n, None) is not None), ANSWERS_FIELDS[0])
            avalue = get_field(record, afield, **where)
        answers = _aliases(avalue, afield, where)
        grader = m.get("grader") or get_field(record, "grader", None) or "contains"
        rid = get_field(record, m.get("id", "id"), None)
        item_id = f"{task}-{str(rid).strip()}" if rid not in (None, "") else f"{task}-{number}"
        items.append(OpenItem(id=item_id, task=task, question=question, answers=answers, grader=str(grader),
                              meta={"source": str(source), unit: number}))
    if not items:
        raise TaskError("no items (the file is empty)", source=source)
    return items


def folder_files(path: Path) -> list[Path]:
    """The task files of a folder, sorted: every ``.csv`` / ``.jsonl`` / ``.json`` directly inside."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in GENERIC_SUFFIXES)
    if not files:
        raise TaskError(f"the folder holds no {', '.join(GENERIC_SUFFIXES)} file", source=path)
    return files


def _subject(stem: str) -> str:
    m = re.fullmatch(r"(.+)_(dev|val|test)", stem)  # MMLU's <subject>_<split>.csv
    return m.group(1) if m else stem


def load_generic(
    path: str | Path,
    mapping: str | Mapping[str, str] | None = None,
    task: str | None = None,
) -> list[Any]:
    """Items from a ``.jsonl``, ``.json`` (a list of objects) or ``.csv`` file, or a folder of them.

    ``task`` defaults to the file's (or folder's) stem.  A CSV's header is detected
    (:func:`csv_has_header`) or declared (``header=yes|no``); a headerless six-column
    CSV is read as MMLU's rows.  Records without choices but with an alias list
    (``answers`` / ``aliases``) are open-ended (:class:`~llmcal.core.items.OpenItem`).
    A folder's files are one task; each file's stem (MMLU's ``<subject>_<split>``
    gives the subject) is its items' ``subject``, for the per-subtask breakdown.  See
    :func:`records_to_items` and ``docs/tasks.md``.
    """
    path = Path(path)
    if path.is_dir():
        task = task or path.name
        items: list[Any] = []
        for f in folder_files(path):
            sub = _subject(f.stem)
            for it in load_generic(f, mapping, task=f"{task}-{sub}"):
                items.append(replace(it, task=task, meta={**it.meta, "subject": sub}))
        return items
    task = task or path.stem
    m = parse_mapping(mapping)
    records, m = _records(path, m)
    records = list(records)
    if records and isinstance(records[0][1], Mapping) and _is_open(records[0][1], m):
        return records_to_open_items(records, task=task, source=path, m=m)
    return records_to_items(records, task=task, source=path, mapping=m)
