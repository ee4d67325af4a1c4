"""What a confidence signal is, as data: :class:`SignalSpec`.

A signal module declares the signals it computes as a ``SPECS`` tuple of
these, next to the code that computes them; :mod:`llmcal.signals.registry`
collects them.  This module imports nothing, so any signal module can use it
without a circular import and the registry stays free of torch.

The vocabularies are closed, so a typo fails at registration, not in a
report:

* :data:`KINDS`: which runs compute it: ``"mc"`` (multiple-choice items,
  from the option scores) or ``"open"`` (free-form answers).
* :data:`INPUTS`: the evidence it reads.  ``option_logprobs`` /
  ``option_token_counts`` (the scored options), ``token_logprobs`` /
  ``token_entropies`` / ``top_logprobs`` (per token of a generated answer),
  ``samples`` (extra sampled answers), ``embeddings`` (sentence embeddings of
  the answers), ``followup_generation`` (a reply to a follow-up question),
  ``ptrue_scoring`` (a True/False scoring pass), ``hidden_states``,
  ``bare_scoring`` (the answer scored after the prompt without its question, for
  PMI), ``nli_model`` (an NLI cross-encoder, ``--nli_model``; without one the
  estimator falls back to sentence embeddings and says so), ``nli_judge`` (likewise, with a lexical
  judge as the fallback: claim-conditioned probability).
* :data:`COSTS`: what it adds on top of answering: ``"free"``,
  ``"+1 scoring pass"``, ``"+1 short generation"``, ``"+k samples"``,
  ``"+embedder passes"`` (one sentence-embedding pass per answer token), ``"+NLI passes"``
  (cross-encoder pairs per answer token with ``--nli_model``; free without one).
* :data:`SCORES`: what the stored value is.  ``"confidence"``: a confidence in
  [0, 1] as the estimator defines it.  ``"uncertainty"``: the estimator's raw
  score ``u`` is an unbounded uncertainty, ``u >= 0``, lower = more sure (an
  entropy, a negative log-probability); it is stored as ``exp(-u)``, which is
  one-to-one (``u = -log(value)``, :func:`decode`), and it is the calibration
  step (Platt on the calibration part, fitted on ``logit(value)``) that turns it
  into a probability.  ``"log_odds"``: an unbounded real score ``z``, higher =
  more sure (a PMI), stored as ``sigmoid(z)`` (``z = logit(value)``), so Platt
  on the logit is logistic regression on ``z`` itself.  Neither encoding is a
  calibration: their raw ECE is not meaningful (docs/open_ended.md); read the
  recalibrated one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("mc", "open")
INPUTS = ("option_logprobs", "option_token_counts", "token_logprobs", "token_entropies", "top_logprobs",
          "samples", "embeddings", "followup_generation", "ptrue_scoring", "hidden_states",
          "bare_scoring", "bare_token_scoring", "nli_model", "nli_judge")
COSTS = ("free", "+1 scoring pass", "+1 short generation", "+k samples", "+embedder passes", "+NLI passes")
SCORES = ("confidence", "uncertainty", "log_odds")
OWN = "llmcal"  # the citation of a signal that is llmcal's own construction
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class SignalSpec:
    """One confidence signal: a float in [0, 1] per item, higher = more sure.

    ``name`` is its key in a sample's ``signals``; ``family`` the ``--signals``
    switch that turns it on (None: always computed, as every multiple-choice
    signal is); ``default`` whether that family is on when ``--signals`` is
    not given; ``citation`` the paper it comes from, or ``"llmcal"``;
    ``computed_by`` the function that computes it (``module:function``);
    ``score`` what the stored value is (:data:`SCORES`: a confidence, or an
    unbounded uncertainty or log-odds score stored one-to-one in [0, 1] for the
    calibration step to map).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    cost: str
    citation: str
    description: str
    family: str | None = None
    default: bool = True
    computed_by: str = ""
    score: str = "confidence"

    def __post_init__(self) -> None:
        where = f"signal {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"{where}: name must be lower-case letters, digits and _, starting with a letter")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if isinstance(self.inputs, str) or not self.inputs:
            raise ValueError(f"{where}: inputs must be a non-empty tuple of {', '.join(INPUTS)}")
        bad = [i for i in self.inputs if i not in INPUTS]
        if bad:
            raise ValueError(f"{where}: unknown inputs {bad}; known: {', '.join(INPUTS)}")
        if self.cost not in COSTS:
            raise ValueError(f"{where}: cost must be one of {', '.join(map(repr, COSTS))}, got {self.cost!r}")
        for f in ("citation", "description"):
            if not str(getattr(self, f)).strip():
                raise ValueError(f"{where}: {f} is empty (cite the paper, or {OWN!r} for llmcal's own)")
        if self.score not in SCORES:
            raise ValueError(f"{where}: score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.family is not None and not _NAME.match(str(self.family)):
            raise ValueError(f"{where}: family must be lower-case letters, digits and _, got {self.family!r}")
        if self.kind == "open" and self.family is None:
            raise ValueError(f"{where}: an open-ended signal needs a family (the --signals switch that computes it)")
        object.__setattr__(self, "inputs", tuple(self.inputs))

    @property
    def always_on(self) -> bool:
        """Computed on every run of its kind, whatever ``--signals`` says."""
        return self.family is None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "family": self.family, "default": self.default,
                "inputs": list(self.inputs), "cost": self.cost, "citation": self.citation,
                "description": self.description, "computed_by": self.computed_by, "score": self.score}


def encode(raw: float, score: str) -> float:
    """The stored value in [0, 1] of an estimator's raw score (see :data:`SCORES`): the identity
    for a confidence, ``exp(-u)`` for an uncertainty ``u >= 0``, ``sigmoid(z)`` for a log-odds ``z``."""
    raw = float(raw)
    if math.isnan(raw):
        return raw
    if score == "confidence":
        if not 0.0 <= raw <= 1.0:
            raise ValueError(f"a confidence must be in [0, 1], got {raw!r}")
        return raw
    if score == "uncertainty":
        if raw < -1e-9:
            raise ValueError(f"an uncertainty score must be >= 0, got {raw!r}")
        return math.exp(-max(raw, 0.0))
    if score == "log_odds":
        return 1.0 / (1.0 + math.exp(-raw)) if raw >= 0 else math.exp(raw) / (1.0 + math.exp(raw))
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def decode(value: float, score: str) -> float:
    """The raw score behind a stored value (the inverse of :func:`encode`)."""
    value = float(value)
    if score == "confidence":
        return value
    if score == "uncertainty":
        return -math.log(value) if value > 0 else math.inf
    if score == "log_odds":
        if value <= 0 or value >= 1:
            return -math.inf if value <= 0 else math.inf
        return math.log(value) - math.log1p(-value)
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


__all__ = ["SignalSpec", "KINDS", "INPUTS", "COSTS", "SCORES", "OWN", "encode", "decode"]
