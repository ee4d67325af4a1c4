"""What ``llmcal serve`` tells a listener after every answer: one :class:`AnswerEvent` per answer.

``create_app(..., on_answer=fn)`` calls ``fn(event)`` once for every answer a client received
(a plain, a streamed and each of ``n`` choices alike: choice 0 of ``chatcmpl-X`` is event
``chatcmpl-X``, choice ``i > 0`` is ``chatcmpl-X-i``; ``/v1/ask`` answers carry their event id as
``id``).  That is the answer log's feed (who records it, and where, is the listener's business:
``llmcal.serve`` only promises the fields below).  A listener that raises is logged and never
fails the request; it runs on the event loop, so a slow one should hand the event to a thread.

:func:`calibration_version` names a calibration by its bytes, so that a logged answer can be
traced to the exact ``calibration.json`` that scored it, across hot reloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from llmcal.calibrators.calibration import calibration_version  # noqa: F401  (re-exported for serve)

#: The version of "no calibration": raw signals.
UNCALIBRATED = "none"


def finite_signals(signals: Mapping[str, Any] | None) -> dict[str, float]:
    """``signals`` as plain floats, without the ones that are not finite (an undefined margin is NaN)."""
    out: dict[str, float] = {}
    for name, value in (signals or {}).items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[str(name)] = v
    return out


@dataclass(frozen=True)
class AnswerEvent:
    """One answer as it left the server.

    ``answer`` is the model's text (also when the policy abstained or replaced it with the
    refusal); ``confidence`` is None when the client asked for none (``confidence: false``).
    ``threshold`` is the abstain threshold applied to this request (the server's, or the
    request's ``confidence_threshold``).  ``signals``: the raw signal values, finite ones only.
    ``latency_ms``: arrival to answer, queueing included.  ``run``: the run folder's name.
    """

    id: str  # "chatcmpl-..." (choice i > 0 of a chat completion: "chatcmpl-...-i")
    created: float  # unix seconds
    question: str
    answer: str
    confidence: float | None
    level: str  # "high" | "medium" | "low", "" without a confidence
    abstained: bool
    threshold: float
    signals: dict[str, float] = field(default_factory=dict)
    calibration_version: str = UNCALIBRATED
    model_fingerprint: str = ""
    latency_ms: float = 0.0
    run: str = ""
