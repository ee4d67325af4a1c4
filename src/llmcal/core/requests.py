"""What a backend is asked and what it answers, independent of any library.

A multiple-choice question reaches a backend as an :class:`MCRequest`: one
context string and the continuations to score after it (lm-eval's
``loglikelihood`` requests, grouped by question).  The backend answers with an
:class:`MCScore`: the summed log-probability of every continuation, how many
tokens each took, whether greedy decoding would have produced it, and
optionally the hidden states of the last context token and their mean over
each option's tokens (kept for the external probe, from the same forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MCRequest:
    """One question's ``loglikelihood`` requests: ``continuations[o]`` scored after its context.

    ``contexts`` empty (the usual case): every option follows ``context``.  Partial
    scoring (several contexts, one continuation, as lm-eval's WinoGrande) gives one
    context per option in ``contexts``; ``context`` is then the first of them.
    """

    context: str
    continuations: tuple[str, ...]
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.contexts and len(self.contexts) != len(self.continuations):
            raise ValueError(f"MCRequest: {len(self.contexts)} contexts for {len(self.continuations)} continuations")

    def context_of(self, option: int) -> str:
        """The text option ``option``'s continuation is scored after."""
        return self.contexts[option] if self.contexts else self.context


@dataclass
class MCScore:
    logprobs: np.ndarray  # (k,) float64: sum of log p(continuation tokens | context)
    n_tokens: np.ndarray  # (k,) int: tokens in each continuation
    is_greedy: np.ndarray  # (k,) bool: every continuation token is the argmax
    hidden: np.ndarray | None = None  # (n_layers_kept, hidden) at the last context token
    answer_hidden: np.ndarray | None = None  # (k, n_layers_kept, hidden): mean over each option's tokens


@dataclass
class Generation:
    """One generated answer and its per-token evidence."""

    text: str
    token_ids: list[int]
    # token_logprobs/entropies/top_logprobs cover the answer's tokens; an empty
    # answer keeps the one token that ended it (so every answer has evidence)
    token_logprobs: np.ndarray  # (n,) float64: log p(token | prefix) at temperature 1
    entropies: np.ndarray  # (n,) float64: entropy (nats) of the next-token distribution
    top_logprobs: list[list[tuple[str, float]]] = field(default_factory=list)  # per token, top-k
    finish_reason: str = "stop"  # "stop" (eos or a stop string) or "length"

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "token_logprobs": [float(x) for x in self.token_logprobs],
            "entropies": [float(x) for x in self.entropies],
            "top_logprobs": [[[t, float(lp)] for t, lp in row] for row in self.top_logprobs],
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Generation":
        return cls(
            text=d["text"],
            token_ids=list(d["token_ids"]),
            token_logprobs=np.asarray(d["token_logprobs"], dtype=np.float64),
            entropies=np.asarray(d["entropies"], dtype=np.float64),
            top_logprobs=[[(t, float(lp)) for t, lp in row] for row in d.get("top_logprobs", [])],
            finish_reason=d.get("finish_reason", "stop"),
        )
