"""The typed record of one answered item: the one thing written to and read from ``samples.jsonl``.

Every stage after scoring reads a run through :class:`Sample` and nothing else, so a
field that is missing, of the wrong type or not finite is found once, on read, and
reported with the file, the line and the field (``samples.jsonl line 12: field
'option_logprobs': ...``) instead of surfacing later as a ``KeyError`` in a metric.

Both kinds of item share one record:

* common: ``id``, ``task``, ``kind`` (``"mc"`` or ``"open"``), ``question``, ``prompt``,
  ``prediction_text``, ``correct`` and ``signals`` (name -> confidence in [0, 1],
  higher = more sure; a signal a sample could not compute is absent and named in
  ``missing``);
* multiple choice: the options and their log-likelihoods (lm-eval's ``loglikelihood``
  per option), the reference and prediction indices, the length-normalized prediction;
* free form: the accepted ``answers``, the ``grader``, and what the generation left
  (``finish_reason``, ``n_tokens``, per-signal ``cost``; sampled answers in ``extra``).

``SAMPLE_VERSION`` versions the record; a record without ``"v"`` is version 1 (the
layout before the field existed, which is the same layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SAMPLE_VERSION = 1

# Field order of a written line: stable, so two runs of the same items write the same bytes.
_COMMON = ("id", "task", "kind", "prompt", "question")
_MC = ("choices", "reference", "reference_text", "prediction", "prediction_text", "correct",
       "prediction_norm", "correct_norm", "option_logprobs", "option_ntokens", "option_nchars",
       "option_is_greedy", "signals", "meta")
_OPEN = ("answers", "grader", "prediction_text", "correct", "finish_reason", "n_tokens",
         "signals", "missing", "meta", "cost")


class SampleError(ValueError):
    """A ``samples.jsonl`` record that does not hold what a run needs (names file, line, field)."""


@dataclass
class Sample:
    """One answered item, with every confidence signal of its prediction."""

    id: str
    task: str
    question: str
    prediction_text: str
    correct: bool
    signals: dict[str, float]
    kind: str = "mc"
    prompt: str | list[dict[str, str]] = ""  # the text the model saw, or the conversation a chat server templated
    meta: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    hidden_row: int | None = None
    # multiple choice
    choices: list[str] = field(default_factory=list)
    reference: int | None = None
    reference_text: str | None = None
    prediction: int | None = None
    prediction_norm: int | None = None
    correct_norm: bool | None = None
    option_logprobs: list[float] = field(default_factory=list)
    option_ntokens: list[int] = field(default_factory=list)
    option_nchars: list[int] = field(default_factory=list)
    option_is_greedy: list[bool] = field(default_factory=list)
    # free form
    answers: list[str] = field(default_factory=list)
    grader: str | None = None
    finish_reason: str | None = None
    n_tokens: int | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    # anything else a stage recorded (sampled answers, cluster ids, verbalized replies)
    extra: dict[str, Any] = field(default_factory=dict)
    # content hash of the item as it was scored (question, options/answers, reference, grader, task):
    # a resumed run re-checks it; absent in records written before it existed (then not checked)
    item_hash: str | None = None

    # ------------------------------------------------------------ what it is
    @property
    def is_mc(self) -> bool:
        return self.kind == "mc"

    def signal(self, name: str) -> float | None:
        """The named confidence, or None where this sample could not compute it."""
        v = self.signals.get(name)
        return None if v is None else float(v)

    # ------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The JSON line, in the layout ``samples.jsonl`` has always had."""
        names = _COMMON + (_MC if self.is_mc else _OPEN)
        out: dict[str, Any] = {}
        for name in names:
            if name == "kind" and self.is_mc:
                continue  # multiple-choice lines never carried a kind
            out[name] = getattr(self, name)
        if self.is_mc and self.missing:
            out["missing"] = list(self.missing)
        out.update(self.extra)
        if self.item_hash is not None:
            out["item_hash"] = self.item_hash
        if self.hidden_row is not None:
            out["hidden_row"] = self.hidden_row
        return out

    # ------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: Any, where: str = "sample") -> "Sample":
        """Validate one record; ``where`` (``"path line N"``) prefixes every error."""
        if not isinstance(d, dict):
            raise SampleError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("v", 1)
        if version != SAMPLE_VERSION:
            raise SampleError(f"{where}: field 'v': record version {version!r}; this llmcal reads {SAMPLE_VERSION}")
        kind = d.get("kind", "mc")
        if kind not in ("mc", "open"):
            raise SampleError(f"{where}: field 'kind': {kind!r} is neither 'mc' nor 'open'")
        r = _Reader(d, where)
        s = cls(
            id=r.text("id"), task=r.text("task"), kind=kind,
            question=r.text("question", default=""), prompt=r.prompt(),
            prediction_text=r.text("prediction_text", default=""), correct=r.boolean("correct"),
            signals=r.signals(), meta=r.mapping("meta"), missing=r.names("missing"),
            hidden_row=r.index("hidden_row", optional=True),
            item_hash=r.text("item_hash", default=None) if d.get("item_hash") is not None else None,
        )
        known = set(_COMMON) | {"v", "missing", "hidden_row", "item_hash"}
        if kind == "mc":
            s.choices = r.texts("choices", min_len=2)
            k = len(s.choices)
            s.reference = r.index("reference", below=k)
            s.reference_text = r.text("reference_text", default=s.choices[s.reference])
            s.prediction = r.index("prediction", below=k)
            s.prediction_norm = r.index("prediction_norm", below=k, default=s.prediction)
            s.correct_norm = r.boolean("correct_norm")
            s.option_logprobs = r.logprobs("option_logprobs", k)
            s.option_ntokens = r.counts("option_ntokens", k)
            s.option_nchars = r.counts("option_nchars", k)
            s.option_is_greedy = r.flags("option_is_greedy", k)
            known |= set(_MC)
        else:
            s.answers = r.texts("answers", min_len=1)
            s.grader = r.text("grader")
            s.finish_reason = r.text("finish_reason", default="stop")
            s.n_tokens = r.index("n_tokens", optional=True)
            s.cost = r.mapping("cost")
            known |= set(_OPEN)
        s.extra = {k: v for k, v in d.items() if k not in known}
        return s


class _Reader:
    """Typed access to one record's fields, raising :class:`SampleError` with file, line and field."""

    def __init__(self, d: dict[str, Any], where: str) -> None:
        self.d, self.where = d, where

    def _fail(self, name: str, why: str) -> SampleError:
        return SampleError(f"{self.where}: field {name!r}: {why}")

    def _get(self, name: str, default: Any = ...) -> Any:
        if name not in self.d or self.d[name] is None:
            if default is not ...:
                return default
            raise self._fail(name, "missing")
        return self.d[name]

    def text(self, name: str, default: Any = ...) -> str:
        v = self._get(name, default)
        if not isinstance(v, str):
            raise self._fail(name, f"expected a string, got {type(v).__name__}")
        return v

    def prompt(self) -> str | list[dict[str, str]]:
        """The prompt: a string, or a conversation (a list of {"role", "content"} messages)."""
        v = self._get("prompt", "")
        if isinstance(v, str):
            return v
        if isinstance(v, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                       and isinstance(m.get("content"), str) for m in v):
            return [dict(m) for m in v]
        raise self._fail("prompt", "expected a string or a list of {role, content} messages")

    def boolean(self, name: str) -> bool:
        v = self._get(name)
        if not isinstance(v, bool):
            raise self._fail(name, f"expected true or false, got {v!r}")
        return v

    def index(self, name: str, below: int | None = None, default: Any = ..., optional: bool = False) -> Any:
        v = self._get(name, None if optional else default)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (below is not None and v >= below):
            bound = f" in 0..{below - 1}" if below is not None else " >= 0"
            raise self._fail(name, f"expected an integer{bound}, got {v!r}")
        return v

    def mapping(self, name: str) -> dict[str, Any]:
        v = self._get(name, {})
        if not isinstance(v, dict):
            raise self._fail(name, f"expected an object, got {type(v).__name__}")
        return v

    def _list(self, name: str, n: int | None, min_len: int = 0) -> list[Any]:
        v = self._get(name)
        if not isinstance(v, list):
            raise self._fail(name, f"expected a list, got {type(v).__name__}")
        if n is not None and len(v) != n:
            raise self._fail(name, f"has {len(v)} entries for {n} choices")
        if len(v) < min_len:
            raise self._fail(name, f"needs at least {min_len} entries, got {len(v)}")
        return v

    def texts(self, name: str, min_len: int = 0) -> list[str]:
        v = self._list(name, None, min_len)
        if not all(isinstance(x, str) for x in v):
            raise self._fail(name, "expected a list of strings")
        return list(v)

    def names(self, name: str) -> list[str]:
        return self.texts(name) if name in self.d and self.d[name] is not None else []

    def counts(self, name: str, n: int) -> list[int]:
        v = self._list(name, n)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
            raise self._fail(name, "expected non-negative integers")
        return list(v)

    def flags(self, name: str, n: int) -> list[bool]:
        v = self._list(name, n)
        if not all(isinstance(x, bool) for x in v):
            raise self._fail(name, "expected true/false values")
        return list(v)

    def logprobs(self, name: str, n: int) -> list[float]:
        v = self._list(name, n)
        out = []
        for i, x in enumerate(v):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) or x > 1e-6:
                raise self._fail(name, f"entry {i} is {x!r}, not a log-probability (a number <= 0)")
            out.append(float(x))
        if not any(math.isfinite(x) for x in out):
            raise self._fail(name, "no option has a finite log-probability")
        return out

    def signals(self) -> dict[str, float]:
        v = self._get("signals")
        if not isinstance(v, dict):
            raise self._fail("signals", f"expected an object, got {type(v).__name__}")
        out: dict[str, float] = {}
        for k, x in v.items():
            if x is None:
                continue
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= float(x) <= 1.0:
                raise self._fail("signals", f"{k!r} is {x!r}, not a confidence in [0, 1]")
            out[k] = float(x)
        return out
