"""The one error a task loader raises: bad input, named down to the file and line.

Every loader validates all of its records before it returns, and a record that
cannot become an :class:`~llmcal.core.items.MCItem` stops the load with a
:class:`TaskError` whose message says where the problem is::

    arc_easy_test.jsonl line 17: field 'answerKey' = 'E' is not among the choice labels ['A', 'B', 'C', 'D']

``TaskError`` is a ``ValueError``, so the command line's ordinary handling of
bad input applies to it.
"""

from __future__ import annotations

from pathlib import Path


def location(source: str | Path | None, number: int | None = None, unit: str = "line") -> str:
    """``"file.jsonl line 17"``, ``"file.json item 3"``, ``"hf:x:test row 5"`` or just the source."""
    if source is None:
        return "" if number is None else f"{unit} {number}"
    src = str(source)
    return src if number is None else f"{src} {unit} {number}"


class TaskError(ValueError):
    """A task could not be loaded; the message names the file and line (1-based) or field.

    ``source`` (file path or dataset name), ``line`` (1-based line, item or row
    number, per ``unit``) and ``field`` are kept as attributes for callers that
    want them separately; ``detail`` is the message without the location.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.source = None if source is None else str(source)
        self.line = line
        self.field = field
        self.unit = unit
        self.detail = message
        where = location(source, line, unit)
        super().__init__(f"{where}: {message}" if where else message)
