"""MC confidence signals and prompt styles, on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcal.signals.mc import mc_signals
from llmcal.core.items import MCItem
from llmcal.tasks.prompts import build_request, normalization_lengths


def test_signals_on_known_values():
    ll = np.log([0.5, 0.25, 0.25])  # already a distribution
    pred, s = mc_signals(ll, np.array([1, 1, 1]))
    assert pred == 0
    assert s["option_prob"] == pytest.approx(0.5)
    assert s["margin"] == pytest.approx(0.25)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert s["entropy"] == pytest.approx(1 - h / math.log(3))
    # per-token normalization: option 0 spread over 2 tokens becomes less likely
    _, s2 = mc_signals(ll, np.array([2, 1, 1]))
    p = np.exp(ll / np.array([2, 1, 1]))
    assert s2["option_prob_norm"] == pytest.approx(p[0] / p.sum())


def test_signals_bounds_and_uniform():
    pred, s = mc_signals(np.array([-3.0, -3.0, -3.0, -3.0]), np.array([2, 2, 2, 2]))
    assert s["option_prob"] == pytest.approx(0.25)
    assert s["entropy"] == pytest.approx(0.0, abs=1e-12)
    assert s["margin"] == pytest.approx(0.0)
    _, s = mc_signals(np.array([0.0, -1000.0]), np.array([1, 1]))
    assert all(0.0 <= v <= 1.0 for v in s.values())
    assert s["option_prob"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="logprobs"):
        mc_signals(np.array([0.0]), np.array([1]))


def test_cloze_prompt_matches_lm_eval():
    item = MCItem("a-1", "arc", "Which is a planet?", ("Mars", "the Sun"), 0)
    req = build_request(item, "cloze")
    assert req.context == "Question: Which is a planet?\nAnswer:"
    assert req.continuations == (" Mars", " the Sun")
    assert normalization_lengths(item, "cloze") == [4, 7]


def test_letters_prompt_lists_options():
    item = MCItem("a-1", "arc", "Which is a planet?", ("Mars", "the Sun", "Moon"), 2)
    req = build_request(item, "letters")
    assert req.context == "Question: Which is a planet?\nA. Mars\nB. the Sun\nC. Moon\nAnswer:"
    assert req.continuations == (" A", " B", " C")


def test_chat_template_wraps_question():
    item = MCItem("a-1", "arc", "Q?", ("x", "y"), 1)
    req = build_request(item, "cloze", chat_template=lambda u: f"<user>{u}</user><assistant>")
    assert req.context == "<user>Question: Q?</user><assistant>"
    assert req.continuations == ("x", "y")


def test_unknown_style_and_bad_items():
    item = MCItem("a-1", "arc", "Q?", ("x", "y"), 1)
    with pytest.raises(ValueError, match="prompt style"):
        build_request(item, "essay")
    with pytest.raises(ValueError, match="not among"):
        MCItem("b", "t", "Q?", ("x", "y"), 2)
    with pytest.raises(ValueError, match="at least 2"):
        MCItem("b", "t", "Q?", ("x",), 0)


# --------------------------------------------------------------------------- open-ended prompts


def test_open_prompts_ask_with_the_instruction():
    from llmcal.core.items import OpenItem
    from llmcal.tasks.prompts import (GSM8K_INSTRUCTION, INSTRUCTION, answer_messages, answer_prompt,
                                      followup_prompt, plain_prompt, user_message)

    item = OpenItem("q-1", "t", "  Capital of France? ", ("Paris",))
    math = OpenItem("g-1", "gsm8k", "2+2?", ("4",), grader="numeric")
    assert user_message(item) == f"{INSTRUCTION}\n\nQuestion: Capital of France?"
    assert user_message(math).startswith(GSM8K_INSTRUCTION + "\n\n")
    assert answer_messages(item) == [{"role": "user", "content": user_message(item)}]
    # no chat template: plain Question/Answer text, the assistant's turn after "Answer: "
    assert answer_prompt(item) == user_message(item) + "\nAnswer:"
    assert followup_prompt(item, "", "How sure?") == (user_message(item) + "\nAnswer: (no answer)\nHow sure?\nAnswer:")
    assert plain_prompt([{"role": "user", "content": "a"}]) == "a\nAnswer:"
    # a chat template gets the conversation (a copy: the template may not change the caller's messages)
    seen = []
    out = followup_prompt(item, "Paris.", "How sure?", chat_template=lambda m: seen.append(m) or "<chat>")
    assert out == "<chat>" and [m["role"] for m in seen[0]] == ["user", "assistant", "user"]
    assert seen[0][1]["content"] == "Paris." and seen[0][2]["content"] == "How sure?"
    assert answer_prompt(item, chat_template=list) == answer_messages(item)  # a server that takes messages


def test_letters_go_on_past_z():
    """Issue 14: 27 or more options in the letters style gave an IndexError; now AA, AB, ..."""
    from llmcal.tasks.prompts import letter_index, option_letter

    assert [option_letter(i) for i in (0, 25, 26, 27, 51, 52, 701, 702)] == [
        "A", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA"]
    assert all(letter_index(option_letter(i)) == i for i in range(1000))
    assert letter_index("a") is None and letter_index("") is None and letter_index("A1") is None
    item = MCItem("m-1", "m", "Pick", tuple(f"o{i}" for i in range(28)), 27)
    req = build_request(item, "letters")
    assert req.continuations[-3:] == (" Z", " AA", " AB") and "\nAB. o27\nAnswer:" in req.context
    assert normalization_lengths(item, "letters")[-3:] == [1, 2, 2]
