"""P(True) (Kadavath et al. 2022, "Language Models (Mostly) Know What They Know").

The model is shown the question and its own proposed answer and asked whether
the answer is true; the confidence is the probability it gives to "True"
against "False", renormalized over the two (one extra scoring pass per item,
no generation).  The prompt follows the paper's format (its Figure 8 without
the brainstormed samples).
"""

from __future__ import annotations

import math

from llmcal.core.requests import MCRequest
from llmcal.signals.spec import SignalSpec

PROMPT = ("Question: {question}\nProposed Answer: {answer}\n"
          "Is the proposed answer:\n (A) True\n (B) False\nThe proposed answer is:")
CONTINUATIONS = (" (A) True", " (B) False")

SPECS = (
    SignalSpec("ptrue", "open", ("ptrue_scoring",), "+1 scoring pass", "Kadavath et al. 2022",
               "P(True) that the proposed answer is true, renormalized over True/False", family="ptrue",
               computed_by="llmcal.signals.ptrue:ptrue_from_logprobs"),
)


def ptrue_request(question: str, answer: str) -> MCRequest:
    """The scoring request whose two options are "True" and "False"."""
    return MCRequest(PROMPT.format(question=question.strip(), answer=answer.strip() or "(no answer)"),
                     CONTINUATIONS)


def ptrue_from_logprobs(logprob_true: float, logprob_false: float) -> float:
    """P(True) renormalized over the two options: sigmoid(lp_true - lp_false)."""
    d = float(logprob_true) - float(logprob_false)
    return 0.5 * (1.0 + math.tanh(0.5 * d))
