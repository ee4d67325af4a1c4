"""Graders, the verbalized-confidence parser, P(True), agreement / semantic entropy and the
token-probability signals: reference values and invariants, no model needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcal.core.requests import Generation
from llmcal.signals.agreement import (cluster_agreement, cluster_answers, numbers_in, same_meaning,
                                      semantic_entropy_conf)
from llmcal.signals.generation import token_signals
from llmcal.signals.ptrue import ptrue_from_logprobs, ptrue_request
from llmcal.signals.verbalized import parse_confidence
from llmcal.tasks.graders import (exact_match, f1_score, grade, last_number, normalize, numeric,
                                  token_f1, truthful_f1, contains)


# ------------------------------------------------------------------ graders
def test_normalize_is_squads():
    assert normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize("An apple, a day") == "apple day"


def test_exact_match_and_contains():
    assert exact_match("Paris.", ["paris"]) and not exact_match("It is Paris.", ["Paris"])
    assert contains("The capital of France is Paris.", ["Paris", "Paris, France"])
    assert not contains("Parisian food", ["Paris"])  # whole words only
    assert not contains("anything", ["", "  "])  # an empty reference matches nothing


def test_token_f1_reference_values():
    # SQuAD F1: 'capital paris' vs 'paris': precision 1/2, recall 1 -> 2/3
    assert f1_score("the capital Paris", "Paris") == pytest.approx(2 / 3)
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0
    assert token_f1("the capital Paris", ["Paris"]) and not token_f1("Lyon", ["Paris"])


def test_numeric_grader_reads_the_last_number():
    assert last_number("3 + 4 = 7, so the answer is 1,000.") == 1000.0
    assert last_number("no digits") is None
    assert numeric("So she makes $18 every day.", ["18"])
    assert not numeric("She makes 18 dollars, or 36 in two days.", ["18"])
    assert numeric("The answer is -2.5", ["-2.50"])


def test_truthful_f1_needs_closer_to_true_than_false():
    right = ["The seeds pass through your digestive system"]
    wrong = ["You grow watermelons in your stomach"]
    assert truthful_f1("They pass through your digestive system.", right, wrong)
    assert not truthful_f1("Watermelons grow in your stomach.", right, wrong)
    assert grade("truthful_f1", "They pass through your digestive system.", right, wrong)
    with pytest.raises(ValueError, match="unknown 'bleu'"):
        grade("bleu", "a", ["a"])


# ------------------------------------------------------------------ verbalized
@pytest.mark.parametrize("reply, scale, expected", [
    ("8", "1-10", 0.8),
    ("I'd say 7 out of 10.", "1-10", 0.7),
    ("9/10", "1-10", 0.9),
    ("85%", "1-10", 0.85),
    ("About 60 percent", "percent", 0.6),
    ("75", "percent", 0.75),
    ("10", "1-10", 1.0),
    ("very sure", "1-10", 0.9),
    ("Not sure at all.", "1-10", 0.05),
    ("I am not very sure", "percent", 0.3),
    ("seven", "1-10", 0.7),
    ("0% to 100%: 80", "percent", 0.8),
    ("On a scale of 1 to 10, I would say 6", "1-10", 0.6),
    ("9. I am quite sure that the answer is right because the book says so", "1-10", 0.9),
])
def test_verbalized_parser_reads_numbers_percentages_and_words(reply, scale, expected):
    assert parse_confidence(reply, scale) == pytest.approx(expected)


@pytest.mark.parametrize("reply, scale", [("", "1-10"), ("Paris is the capital.", "1-10"), ("42", "1-10"),
                                          ("150%", "percent"), ("0", "1-10"),
                                          ("To convert 7 meters to centimeters, you would multiply", "percent")])
def test_unreadable_replies_are_missing_not_half(reply, scale):
    assert parse_confidence(reply, scale) is None


def test_verbalized_unknown_scale():
    with pytest.raises(ValueError, match="scale"):
        parse_confidence("5", "1-5")


# ------------------------------------------------------------------ P(True)
def test_ptrue_is_the_two_way_softmax():
    assert ptrue_from_logprobs(-1.0, -1.0) == pytest.approx(0.5)
    assert ptrue_from_logprobs(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    req = ptrue_request("What is 2+2?", " 4 ")
    assert "Proposed Answer: 4\n" in req.context and req.continuations == (" (A) True", " (B) False")


# ------------------------------------------------------------------ agreement
def test_semantic_entropy_reference_values():
    assert semantic_entropy_conf([0, 0, 0, 0]) == 1.0
    assert semantic_entropy_conf([0, 1, 2, 3]) == pytest.approx(0.0)
    # two clusters of 2 among 4: H = log 2, conf = 1 - log2/log4 = 0.5
    assert semantic_entropy_conf([0, 0, 1, 1]) == pytest.approx(0.5)
    assert cluster_agreement([0, 0, 1, 0, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        semantic_entropy_conf([0])


def test_same_meaning_rules():
    e = np.eye(3)
    # numbers differ -> different, even with identical embeddings
    assert not same_meaning("700 centimeters", "70 centimeters", e[0], e[0])
    assert numbers_in("A spider has eight legs") == numbers_in("8 legs") == frozenset({"8"})
    # containment -> same, even with orthogonal embeddings
    assert same_meaning("Paris", "The capital of France is Paris.", e[0], e[1])
    # otherwise the cosine decides
    v = np.array([0.95, 0.312, 0.0])
    assert same_meaning("Lyon", "Marseille", e[0], v / np.linalg.norm(v))
    assert not same_meaning("Lyon", "Marseille", e[0], e[1])
    ids = cluster_answers(["Paris", "paris!", "London", "It is Paris"], np.stack([e[0], e[0], e[1], e[2]]))
    assert ids.tolist() == [0, 0, 1, 0]


# ------------------------------------------------------------------ token signals
def test_token_signals_reference_values():
    lp = np.log([0.5, 0.8, 0.25])
    g = Generation(text="x", token_ids=[1, 2, 3], token_logprobs=lp, entropies=np.array([0.0, 0.0, 0.0]),
                   top_logprobs=[[("a", math.log(0.5)), ("b", math.log(0.3))]])
    s = token_signals(g, vocab_size=100)
    assert s["seq_prob"] == pytest.approx(0.1)
    assert s["mean_token_prob"] == pytest.approx(0.1 ** (1 / 3))
    assert s["min_token_prob"] == pytest.approx(0.25)
    assert s["entropy_conf"] == pytest.approx(1.0)
    assert s["first_token_margin"] == pytest.approx(0.2)
    g2 = Generation(text="x", token_ids=[1], token_logprobs=np.array([0.0]),
                    entropies=np.array([math.log(100)]))
    s2 = token_signals(g2, vocab_size=100)
    assert s2["entropy_conf"] == pytest.approx(0.0) and math.isnan(s2["first_token_margin"])
    for v in s.values():
        assert 0.0 <= v <= 1.0
    with pytest.raises(ValueError, match="no tokens"):
        token_signals(Generation("", [], np.array([]), np.array([])))


def test_one_normalization_for_graders_and_agreement():
    import llmcal.signals.agreement as agreement_mod
    from llmcal.core import text
    from llmcal.tasks import graders

    assert graders.normalize is text.normalize and agreement_mod.normalize is text.normalize
    assert text.normalize("The \u201cEiffel\u201d Tower, an icon") == "eiffel tower icon"
