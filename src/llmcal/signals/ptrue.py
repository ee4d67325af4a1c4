"""P(True) (Kadavath et al. 2022, "Language Models (Mostly) Know What They Know").

The model is shown the question and its own proposed answer and asked whether
the answer is true; the confidence is the probability it gives to "True"
against "False", renormalized over the two (one extra scoring pass per item,
no generation).  Two forms:

* ``ptrue``: the paper's format (its Figure 8 without the brainstormed
  samples), a fresh prompt that quotes question and answer, as LM-Polygraph's
  ``PTrue`` does;
* ``ptrue_chat``: the same question asked as a follow-up turn of the
  conversation that produced the answer ("Is your answer correct? Reply True
  or False."), scored on the reply's first token.  It ranks answers better than
  the paper's form on llmcal's free-form tasks with the embedded model
  (docs/benchmarks.md, "P(True) in the chat") and, since the conversation
  begins with the prompt and answer whose keys/values the greedy call kept, a
  local model prefills only the follow-up turn (``Backend.next_token_logprobs``).
"""

from __future__ import annotations

import math

from llmcal.core.requests import MCRequest
from llmcal.signals.spec import SignalSpec

PROMPT = ("Question: {question}\nProposed Answer: {answer}\n"
          "Is the proposed answer:\n (A) True\n (B) False\nThe proposed answer is:")
CONTINUATIONS = (" (A) True", " (B) False")
CHAT_QUESTION = "Is your answer correct? Reply True or False."
CHAT_CANDIDATES = ("True", "False")  # the reply's first token

SPECS = (
    SignalSpec("ptrue", "open", ("ptrue_scoring",), "+1 scoring pass", "Kadavath et al. 2022",
               "P(True) that the proposed answer is true, renormalized over True/False", family="ptrue",
               computed_by="llmcal.signals.ptrue:ptrue_from_logprobs", default=False),
    SignalSpec("ptrue_chat", "open", ("ptrue_scoring",), "+1 scoring pass", "Kadavath et al. 2022",
               "P(True) asked as a follow-up turn of the answer's conversation, renormalized over True/False "
               "(a local model prefills only the follow-up)", family="ptrue_chat",
               computed_by="llmcal.signals.ptrue:ptrue_from_logprobs"),
)


def ptrue_request(question: str, answer: str) -> MCRequest:
    """The scoring request whose two options are "True" and "False"."""
    return MCRequest(PROMPT.format(question=question.strip(), answer=answer.strip() or "(no answer)"),
                     CONTINUATIONS)


def chat_candidates(prompt: str) -> tuple[str, str]:
    """The reply's first word after a follow-up prompt: "True" / "False" where the prompt ends in
    whitespace (a chat template's assistant header), " True" / " False" after ``Answer:``."""
    return CHAT_CANDIDATES if prompt[-1:].isspace() else tuple(" " + c for c in CHAT_CANDIDATES)


def ptrue_from_logprobs(logprob_true: float, logprob_false: float) -> float:
    """P(True) renormalized over the two options: sigmoid(lp_true - lp_false)."""
    d = float(logprob_true) - float(logprob_false)
    return 0.5 * (1.0 + math.tanh(0.5 * d))
