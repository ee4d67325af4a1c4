"""Fuzz (hypothesis): no input escapes as a traceback (issue 14).

* **Task files**: lines of JSONL and CSV in the generic format of docs/tasks.md -- near-valid
  records with every field of the wrong type, empty, huge, nested or missing, and raw bytes.
  ``load_task`` either returns valid items (which both prompt styles can ask) or raises
  :class:`~llmcal.tasks.errors.TaskError` (a ``ValueError``) with a message; nothing else.
* **API bodies**: arbitrary JSON and near-valid bodies for ``/v1/ask`` and
  ``/v1/chat/completions`` (FastAPI's TestClient, the fake answerer of tests/test_serve.py):
  every answer is a 2xx or a 4xx in OpenAI's error shape, never a 5xx.

Bounded and derandomized (the same examples every run): the file runs in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcal.core.items import MCItem
from llmcal.tasks.errors import TaskError
from llmcal.tasks.prompts import build_request
from llmcal.tasks.registry import load_task

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])

_text = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "A", "AA", "0", "1", "-1", "26", "\u2028",
                                                         "x;y", "a|b", "\x00", "NaN", "Paris"]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(_text, inner, max_size=4)), max_leaves=12)
_choices = st.one_of(st.lists(_scalar, max_size=30), st.lists(_text, min_size=2, max_size=30), _text,
                     st.fixed_dictionaries({"text": st.lists(_scalar, max_size=5)},
                                           optional={"label": st.lists(_scalar, max_size=5)}),
                     st.lists(st.fixed_dictionaries({"text": _scalar}, optional={"label": _scalar}), max_size=5),
                     _json)
_record = st.fixed_dictionaries(
    {}, optional={"question": st.one_of(_text, _json), "choices": _choices, "options": _choices,
                  "answer": st.one_of(_scalar, _json), "answerKey": _scalar, "label": _scalar, "id": _scalar,
                  "A": _text, "B": _text, "C": _text})


# near-valid records: what a real file holds, one field a little off (many choices, odd answers)
_word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)
_near_valid = st.fixed_dictionaries(
    {"question": _word, "choices": st.one_of(st.lists(_word, max_size=5), st.lists(_word, min_size=25, max_size=40)),
     "answer": st.one_of(st.integers(-2, 45), st.sampled_from(["A", "Z", "AA", "AN", "ZZ", "b", "0", "27"]),
                         _word)},
    optional={"id": st.one_of(_word, st.integers(0, 3))})


def _line(value) -> bytes:
    return json.dumps(value).encode()


_jsonl_line = st.one_of(_near_valid.map(_line), _record.map(_line), _json.map(_line), st.binary(max_size=20),
                        st.text(max_size=20).map(str.encode))


def _check_items(items) -> None:
    assert items, "load_task returned no items and no error"
    for it in items:
        assert isinstance(it, MCItem) and 0 <= it.answer < len(it.choices) and len(it.choices) >= 2
        for style in ("cloze", "letters"):
            req = build_request(it, style)
            assert len(req.continuations) == len(it.choices)


def _load(name: str, data: bytes):
    with tempfile.TemporaryDirectory(prefix="llmcal-fuzz-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            items = load_task(str(path))
        except TaskError as err:  # the one allowed outcome besides items: a message naming the place
            assert str(err).strip()
            return None
    _check_items(items)
    return items


@FUZZ
@given(st.lists(_jsonl_line, min_size=1, max_size=4))
def test_fuzz_jsonl_task_files(lines):
    _load("fuzz.jsonl", b"\n".join(lines) + b"\n")


_cell = st.one_of(_text, st.integers(-5, 40).map(str), st.sampled_from(["", '"', "a,b", "x\ny", "A", "AA"]))


@FUZZ
@given(st.lists(st.sampled_from(["question", "choices", "answer", "id", "A", "B", "C", "D", "label", "x", ""]),
                min_size=1, max_size=6),
       st.lists(st.lists(_cell, max_size=7), min_size=0, max_size=5), st.booleans())
def test_fuzz_csv_task_files(header, rows, bom):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    _load("fuzz.csv", (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode())


# ------------------------------------------------------------------ the API
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from test_serve import FakeAnswerer  # noqa: E402

from llmcal.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(FakeAnswerer(), max_prompt_chars=400, max_queue=4, request_timeout=10)) as c:
        yield c


_message = st.fixed_dictionaries({}, optional={"role": st.one_of(st.sampled_from(["user", "system", "assistant",
                                                                                  "tool", "wizard"]), _scalar),
                                               "content": st.one_of(_text, _json, st.lists(
                                                   st.fixed_dictionaries({}, optional={"type": _text,
                                                                                       "text": _scalar}),
                                                   max_size=3))})
_common = {"max_tokens": _scalar, "max_completion_tokens": _scalar, "temperature": _scalar, "seed": _scalar,
           "samples": _scalar, "confidence": _scalar, "n": _scalar, "stream": _scalar, "model": _scalar}
_num = st.one_of(st.integers(-3, 600), st.sampled_from([0.0, 0.7, 2.0, 2.5, 2**32, 2**70, -(2**63)]),
                 st.floats(-1, 3, allow_nan=False))
_plausible = {"max_tokens": st.integers(-1, 600), "temperature": _num, "seed": _num, "samples": st.integers(-1, 20),
              "confidence": st.booleans()}
_near_ask = st.fixed_dictionaries({"question": _word},
                                  optional={"choices": st.lists(_text, min_size=0, max_size=28), **_plausible})
_near_chat = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                 "content": st.one_of(_word, _text)}), min_size=1, max_size=3)},
    optional={"options": st.lists(_text, min_size=0, max_size=28), **_plausible})
_chat_body = st.fixed_dictionaries({}, optional={"messages": st.one_of(st.lists(_message, max_size=4), _json),
                                                 "options": st.one_of(st.lists(_text, max_size=30), _json),
                                                 **_common})
_ask_body = st.fixed_dictionaries({}, optional={"question": st.one_of(_text, _json),
                                                "choices": st.one_of(st.lists(_text, max_size=30), _json),
                                                **_common})


def _post(client, path: str, content: bytes):
    r = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (path, content[:300], r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["message"] and err["type"]
    return r


def _body(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity too: Python's json reads them


@FUZZ
@given(st.one_of(_near_ask, _ask_body, _json).map(_body))
def test_fuzz_ask_bodies(client, content):
    _post(client, "/v1/ask", content)


@FUZZ
@given(st.one_of(_near_chat, _chat_body, _json).map(_body))
def test_fuzz_chat_bodies(client, content):
    _post(client, "/v1/chat/completions", content)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64), st.sampled_from(["/v1/ask", "/v1/chat/completions"]))
def test_fuzz_raw_bytes(client, content, path):
    _post(client, path, content)
