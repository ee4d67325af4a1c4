"""A tiny deterministic backend for the fault-injection tests (no model, no network).

``python tests/fault_backend.py <llmcal args>`` runs the ``llmcal`` command with this
backend registered as ``--model fake``; the tests run it in a subprocess where the
process must die at a write point (``LLMCAL_FAULT``), and in-process otherwise.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llmcal.backends.base import Backend
from llmcal.core.requests import MCRequest, MCScore

HIDDEN = 8
N_LAYERS = 4


class FakeBackend(Backend):
    """Scores from a hash of the prompt and option: the same bytes every run, hidden states included."""

    name = "fake"
    capabilities = frozenset({"score", "hidden_states"})
    model_name = "fake-model"
    n_layers = N_LAYERS
    hidden_size = HIDDEN

    @classmethod
    def load(cls, seed: int = 0, fail: str = "") -> "FakeBackend":
        if fail:
            raise ValueError("fake: the model could not be loaded (fail=...)")
        return cls()

    def set_hidden_layers(self, layers: Sequence[int]) -> None:
        self.hidden_layers = tuple(layers)

    def score_mc(self, requests: Sequence[MCRequest],
                 progress: Callable[[int], None] | None = None) -> list[MCScore]:
        out = []
        for r in requests:
            seed = int(hashlib.sha256(r.context.encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            k = len(r.continuations)
            out.append(MCScore(logprobs=-rng.uniform(0.1, 5.0, size=k), n_tokens=np.ones(k, dtype=np.int64),
                               is_greedy=np.zeros(k, dtype=bool),
                               hidden=rng.normal(size=(len(self.hidden_layers) or 1, HIDDEN)).astype(np.float32)))
            if progress:
                progress(1)
        return out

    def fingerprint(self) -> str:
        return "fake0000"

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "model": "fake-model", "n_layers": N_LAYERS, "hidden_size": HIDDEN}


def register() -> None:
    from llmcal.backends.registry import BACKENDS

    BACKENDS["fake"] = "fault_backend:FakeBackend"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    register()
    from llmcal.cli.main import main

    sys.exit(main(sys.argv[1:]))
