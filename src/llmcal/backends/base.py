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

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class MCRequest:
    context: str
    continuations: tuple[str, ...]


@dataclass
class MCScore:
    logprobs: np.ndarray  # (k,) float64: sum of log p(continuation tokens | context)
    n_tokens: np.ndarray  # (k,) int: tokens in each continuation
    is_greedy: np.ndarray  # (k,) bool: every continuation token is the argmax
    hidden: np.ndarray | None = None  # (n_layers_kept, hidden) at the last context token
    answer_hidden: np.ndarray | None = None  # (k, n_layers_kept, hidden): mean over each option's tokens


class MCBackend(Protocol):
    """Anything that scores multiple-choice requests."""

    name: str

    def score_mc(self, requests: Sequence[MCRequest]) -> list[MCScore]: ...

    def describe(self) -> dict: ...
