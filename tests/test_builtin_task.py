"""The built-in task: deterministic, balanced, well-formed, and its answers are right.

Arithmetic and calendar answers are recomputed here from the question text
(arithmetic with a small parser, days and months with :mod:`datetime` /
:mod:`calendar`); facts are spot-checked against values written out here.
"""

from __future__ import annotations

import calendar
import collections
import datetime
import hashlib
import json
import re

import pytest

from llmcal.tasks import builtin_facts as facts
from llmcal.tasks.builtin import (
    CATEGORIES,
    DIFFICULTIES,
    builtin_items,
    builtin_open_items,
    number_words,
)
from llmcal.core.items import MCItem


@pytest.fixture(scope="module")
def items() -> list[MCItem]:
    return builtin_items()


@pytest.fixture(scope="module")
def many() -> list[MCItem]:
    """A set large enough to hold every fact question at least once."""
    return builtin_items(n=3000, seed=7)


def _answer(it: MCItem) -> str:
    return it.choices[it.answer]


def _find(pool: list[MCItem], question: str) -> MCItem:
    hits = [it for it in pool if it.question == question]
    assert hits, f"{question!r} not generated"
    return hits[0]


def _dump(its: list[MCItem]) -> str:
    return json.dumps([[it.id, it.task, it.question, list(it.choices), it.answer, it.meta] for it in its],
                      ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------- determinism and shape


def test_same_seed_same_items_and_other_seed_differs(items):
    again = builtin_items()
    assert again == items and _dump(again) == _dump(items)  # MCItem equality ignores meta; the dump does not
    other = builtin_items(seed=1)
    assert [it.question for it in other] != [it.question for it in items]
    assert _dump(builtin_items(n=50, seed=3)) == _dump(builtin_items(n=50, seed=3))


def test_default_set_is_pinned(items):
    """Same output on every machine and Python version: a change here means the draw changed.

    If generation was changed on purpose, update the digest (and say so in the changelog:
    results on ``builtin`` are then not comparable with earlier runs).
    """
    digest = hashlib.sha256(_dump(items).encode()).hexdigest()
    assert digest == PINNED_DIGEST, f"builtin_items() changed: sha256 {digest}"


def test_count_ids_and_task(items):
    assert len(items) == 600 >= 500
    assert all(it.task == "builtin" for it in items)
    ids = [it.id for it in items]
    assert len(set(ids)) == len(ids)
    assert ids == [f"builtin-{i:05d}" for i in range(len(items))]
    assert len({it.question for it in items}) == len(items)  # no question asked twice


@pytest.mark.parametrize("n", [0, 1, 7, 31])
def test_other_sizes(n):
    its = builtin_items(n=n, seed=2)
    assert len(its) == n and len({it.id for it in its}) == n


def test_bad_n_is_refused():
    for bad in (-1, 2.5, "10", True):
        with pytest.raises(ValueError):
            builtin_items(n=bad)


def _norm(choice: str) -> str:
    return choice.replace(",", "").strip().casefold()


def test_choices_are_well_formed(items):
    for it in items:
        assert len(it.choices) == 4, it
        assert 0 <= it.answer < 4
        assert len({_norm(c) for c in it.choices}) == 4, f"duplicate choices in {it}"
        for c in it.choices:
            assert c == c.strip() and c and not c.endswith("."), it
            assert len(c) <= 40, it
        assert it.question.endswith("?") and it.question[0].isupper()


def test_correct_position_is_uniform(items):
    counts = collections.Counter(it.answer for it in items)
    for pos in range(4):
        assert 0.15 <= counts[pos] / len(items) <= 0.35, counts
    other = collections.Counter(it.answer for it in builtin_items(n=101, seed=5))
    assert max(other.values()) - min(other.values()) <= 1  # balanced, not just random


def test_categories_and_difficulties_balanced(items):
    cats = collections.Counter(it.meta["category"] for it in items)
    assert set(cats) == set(CATEGORIES) and max(cats.values()) - min(cats.values()) <= 1
    cells = collections.Counter((it.meta["category"], it.meta["difficulty"]) for it in items)
    for c in CATEGORIES:
        for d in DIFFICULTIES:
            assert cells[c, d] >= 30, (c, d, cells)
    assert all(set(it.meta) >= {"category", "difficulty"} for it in items)
    # the order is mixed, so a --limit prefix still sees every category
    assert {it.meta["category"] for it in items[:40]} == set(CATEGORIES)


# --------------------------------------------------------------------------- arithmetic


def _evaluate(expr: str) -> int:
    """Integer expression with + - × ÷ and parentheses, usual precedence; ÷ must be exact."""
    tokens = re.findall(r"\d+|[-+×÷()]", expr)
    assert "".join(tokens) == expr.replace(" ", ""), f"unparsed text in {expr!r}"
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> int:
        t = take()
        if t == "(":
            v = sum_()
            assert take() == ")"
            return v
        assert t.isdigit(), t
        return int(t)

    def product() -> int:
        v = atom()
        while peek() in ("×", "÷"):
            op, w = take(), atom()
            if op == "×":
                v *= w
            else:
                assert v % w == 0, f"inexact division in {expr!r}"
                v //= w
        return v

    def sum_() -> int:
        v = product()
        while peek() in ("+", "-"):
            op, w = take(), product()
            v = v + w if op == "+" else v - w
        return v

    value = sum_()
    assert pos == len(tokens), expr
    return value


def test_parser_itself():
    assert _evaluate("12 + 7 × 3") == 33 and _evaluate("(12 + 7) × 3") == 57
    assert _evaluate("84 ÷ 7") == 12 and _evaluate("9 - 4") == 5


def test_arithmetic_answers_are_correct(items, many):
    seen = 0
    for it in items + many:
        if it.meta["category"] != "arithmetic":
            continue
        m = re.fullmatch(r"What is (.+)\?", it.question)
        assert m, it.question
        value = _evaluate(m.group(1))
        assert _answer(it) == str(value), it
        assert all(c.isdigit() for c in it.choices), it  # near misses are non-negative numbers
        seen += 1
    assert seen >= 120


def test_arithmetic_difficulty_grows(items):
    def size(it):
        return max(int(x) for x in re.findall(r"\d+", it.question))

    by = {d: [size(it) for it in items if it.meta["category"] == "arithmetic" and it.meta["difficulty"] == d]
          for d in DIFFICULTIES}
    assert max(by["easy"]) <= 9 and max(by["medium"]) <= 108 and max(by["hard"]) >= 100


# --------------------------------------------------------------------------- calendar

_DAYS = [calendar.day_name[i] for i in range(7)]  # Monday first, from the standard library
_MONTHS = [calendar.month_name[i] for i in range(1, 13)]
_WORDS = {number_words(k): k for k in range(1, 13)}


def _day_shift(day: str, k: int) -> str:
    start = datetime.date(2024, 1, 1) + datetime.timedelta(days=_DAYS.index(day))  # 2024-01-01 was a Monday
    return (start + datetime.timedelta(days=k)).strftime("%A")


def _month_shift(month: str, k: int) -> str:
    return _MONTHS[(_MONTHS.index(month) + k) % 12]


def _calendar_truth(q: str) -> str:
    if m := re.fullmatch(r"What day comes (?:(\w+) days )?(after|before) (\w+)\?", q):
        k = _WORDS[m.group(1)] if m.group(1) else 1
        return _day_shift(m.group(3), k if m.group(2) == "after" else -k)
    if m := re.fullmatch(r"If today is (\w+), what day will it be in (\d+) days\?", q):
        return _day_shift(m.group(1), int(m.group(2)))
    if m := re.fullmatch(r"If today is (\w+), what day was it (\d+) days ago\?", q):
        return _day_shift(m.group(1), -int(m.group(2)))
    if m := re.fullmatch(r"What month comes (after|before) (\w+)\?", q):
        return _month_shift(m.group(2), 1 if m.group(1) == "after" else -1)
    if m := re.fullmatch(r"What month is (\w+) months (after|before) (\w+)\?", q):
        k = _WORDS[m.group(1)]
        return _month_shift(m.group(3), k if m.group(2) == "after" else -k)
    if m := re.fullmatch(r"What is the (\w+) month of the year\?", q):
        order = {"first": 1, "last": 12, **{w: i + 1 for i, w in enumerate(facts.ORDINALS)}}
        return calendar.month_name[order[m.group(1)]]
    if m := re.fullmatch(r"How many days are in (\w+)\?", q):
        return str(calendar.monthrange(2023, _MONTHS.index(m.group(1)) + 1)[1])
    if q == "How many days are in February in a leap year?":
        return str(calendar.monthrange(2024, 2)[1])
    if q == "How many days are in February in a common (non-leap) year?":
        return str(calendar.monthrange(2023, 2)[1])
    raise AssertionError(f"unrecognized calendar question {q!r}")


def test_calendar_answers_are_correct(items, many):
    seen = 0
    for it in items + many:
        if it.meta["category"] == "calendar":
            assert _answer(it) == _calendar_truth(it.question), it
            seen += 1
    assert seen >= 120
    assert _answer(_find(many, "What day comes after Sunday?")) == "Monday"
    assert _answer(_find(many, "What month comes before January?")) == "December"


# --------------------------------------------------------------------------- facts


CAPITAL_SPOTS = {"France": "Paris", "Japan": "Tokyo", "Mongolia": "Ulaanbaatar", "Australia": "Canberra",
                 "Canada": "Ottawa", "Turkey": "Ankara", "Kyrgyzstan": "Bishkek",
                 "Burkina Faso": "Ouagadougou", "Tanzania": "Dodoma", "the United States": "Washington, DC"}
SYMBOL_SPOTS = {"gold": "Au", "silver": "Ag", "iron": "Fe", "sodium": "Na", "potassium": "K", "lead": "Pb",
                "mercury": "Hg", "tin": "Sn", "tungsten": "W", "antimony": "Sb", "oxygen": "O", "helium": "He"}
CONVERSION_SPOTS = {"centimeters are in a meter": "100", "feet are in a mile": "5,280",
                    "ounces are in a pound": "16", "yards are in a mile": "1,760", "inches are in a foot": "12",
                    "seconds are in an hour": "3600", "days are in a week": "7",
                    "centimeters are in an inch": "2.54"}


def test_fact_spot_checks(many):
    for country, capital in CAPITAL_SPOTS.items():
        assert _answer(_find(many, f"What is the capital of {country}?")) == capital
        bare = country.removeprefix("the ")
        assert _answer(_find(many, f"{capital} is the capital of which country?")) == bare
    for element, symbol in SYMBOL_SPOTS.items():
        assert _answer(_find(many, f"What is the chemical symbol for {element}?")) == symbol
        assert _answer(_find(many, f"Which element has the chemical symbol {symbol}?")) == element.capitalize()
    for what, value in CONVERSION_SPOTS.items():
        assert _answer(_find(many, f"How many {what}?")) == value


def test_every_item_agrees_with_the_tables(many):
    capital_of = {r[0]: r[3] for r in facts.CAPITALS}
    region = {r[0].removeprefix("the "): r[1] for r in facts.CAPITALS}
    region.update({r[3]: r[1] for r in facts.CAPITALS})
    country_of = {r[3]: r[0].removeprefix("the ") for r in facts.CAPITALS}
    symbol = {e[2].lower(): e[1] for e in facts.ELEMENTS}
    name = {e[1]: e[2] for e in facts.ELEMENTS}
    factor = {(r[0], r[1]): r[3] for r in facts.CONVERSIONS}
    plural = {(r[0], r[2]): r[3] for r in facts.CONVERSIONS}
    for it in many:
        q, a = it.question, _answer(it)
        if m := re.fullmatch(r"What is the capital of (.+)\?", q):
            assert a == capital_of[m.group(1)]
            assert {region[c] for c in it.choices} == {region[a]}  # distractors from the same region
        elif m := re.fullmatch(r"(.+) is the capital of which country\?", q):
            assert a == country_of[m.group(1)]
            assert {region[c] for c in it.choices} == {region[a]}
        elif m := re.fullmatch(r"What is the chemical symbol for (\w+)\?", q):
            assert a == symbol[m.group(1)] and all(c in name for c in it.choices)
        elif m := re.fullmatch(r"Which element has the chemical symbol (\w+)\?", q):
            assert a == name[m.group(1)] and all(c in name.values() for c in it.choices)
        elif m := re.fullmatch(r"How many (.+) are in (an? .+)\?", q):
            assert a == factor[m.group(1), m.group(2)], q
        elif m := re.fullmatch(r"How many (.+) are in (\d) (.+)\?", q):
            k, f = int(m.group(2)), plural[m.group(1), m.group(3)]
            assert int(a.replace(",", "")) == k * int(f.replace(",", "")), q
        else:
            assert it.meta["category"] in ("arithmetic", "calendar"), q


def test_fact_tables_are_consistent():
    assert [e[0] for e in facts.ELEMENTS] == list(range(1, 119))
    assert len({e[1] for e in facts.ELEMENTS}) == 118 and len({e[2] for e in facts.ELEMENTS}) == 118
    tiered = [s for d in DIFFICULTIES for s in facts.ELEMENT_TIERS[d]]
    assert sorted(tiered) == sorted(e[1] for e in facts.ELEMENTS if e[0] <= 103)
    assert len({r[0] for r in facts.CAPITALS}) == len({r[3] for r in facts.CAPITALS}) == len(facts.CAPITALS)
    regions = collections.Counter(r[1] for r in facts.CAPITALS)
    assert min(regions.values()) >= 4
    for r in facts.CONVERSIONS:
        assert r[3] not in r[5] and len(set(r[5])) == len(r[5]) >= 3, r
    assert facts.MONTH_DAYS == tuple(calendar.monthrange(2023, m)[1] for m in range(1, 13))


# --------------------------------------------------------------------------- open questions


def test_open_items_match_the_multiple_choice_ones(items):
    open_items = builtin_open_items()
    assert open_items == builtin_open_items()
    assert len(open_items) == len(items)
    for mc, op in zip(items, open_items):
        assert set(op) == {"id", "task", "question", "answers", "meta"}
        assert op["task"] == "builtin_open" and op["id"] == mc.id and op["question"] == mc.question
        assert op["meta"] == mc.meta
        assert op["answers"][0] == _answer(mc) and len(set(op["answers"])) == len(op["answers"])
        wrong = {_norm(c) for i, c in enumerate(mc.choices) if i != mc.answer}
        assert not wrong & {_norm(a) for a in op["answers"]}, op  # no alias is a distractor


def test_open_aliases():
    by_q = {}
    for op in builtin_open_items(n=3000, seed=7):
        by_q.setdefault(op["question"], op["answers"])
    assert {"Ulaanbaatar", "Ulan Bator"} <= set(by_q["What is the capital of Mongolia?"])
    assert {"Kyiv", "Kiev"} <= set(by_q["What is the capital of Ukraine?"])
    assert by_q["What is the chemical symbol for tungsten?"] == ["W"]
    assert {"Tungsten", "Wolfram"} <= set(by_q["Which element has the chemical symbol W?"])
    assert {"5,280", "5280", "five thousand two hundred eighty"} <= set(by_q["How many feet are in a mile?"])
    assert {"100", "one hundred"} <= set(by_q["How many centimeters are in a meter?"])
    assert {"United Kingdom", "UK"} <= set(by_q["London is the capital of which country?"])


def test_number_words():
    assert number_words(0) == "zero" and number_words(85) == "eighty-five"
    assert number_words(100) == "one hundred" and number_words(1440) == "one thousand four hundred forty"
    assert number_words(100_000) == "one hundred thousand" and number_words(2_000_000) == "two million"


PINNED_DIGEST = "648c398b5812c963f3af172ae4a5b81c86cd53189482513451ef627fb5c50da4"
