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
  ``ptrue_scoring`` (a True/False scoring pass), ``hidden_states``.
* :data:`COSTS`: what it adds on top of answering: ``"free"``,
  ``"+1 scoring pass"``, ``"+1 short generation"``, ``"+k samples"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("mc", "open")
INPUTS = ("option_logprobs", "option_token_counts", "token_logprobs", "token_entropies", "top_logprobs",
          "samples", "embeddings", "followup_generation", "ptrue_scoring", "hidden_states")
COSTS = ("free", "+1 scoring pass", "+1 short generation", "+k samples")
OWN = "llmcal"  # the citation of a signal that is llmcal's own construction
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class SignalSpec:
    """One confidence signal: a float in [0, 1] per item, higher = more sure.

    ``name`` is its key in a sample's ``signals``; ``family`` the ``--signals``
    switch that turns it on (None: always computed, as every multiple-choice
    signal is); ``default`` whether that family is on when ``--signals`` is
    not given; ``citation`` the paper it comes from, or ``"llmcal"``;
    ``computed_by`` the function that computes it (``module:function``).
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
                "description": self.description, "computed_by": self.computed_by}


__all__ = ["SignalSpec", "KINDS", "INPUTS", "COSTS", "OWN"]
