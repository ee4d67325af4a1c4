"""Every confidence signal llmcal knows: name -> :class:`~llmcal.signals.spec.SignalSpec`.

Each signal module declares what it computes in a ``SPECS`` tuple beside the
code; this module collects those of :data:`BUILTIN_MODULES` in that order
(multiple-choice first, then the open-ended families from cheapest to
dearest), so listings and ``--signals`` defaults are stable.  A new estimator
is one file (its function and its ``SPECS``) plus one registration: its
module name in :data:`BUILTIN_MODULES`, or, from outside llmcal,
``register(SignalSpec(...))``.

Nothing here imports torch or a backend: listing signals (``llmcal signals``)
or checking ``--signal NAME`` costs an import of numpy at most.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Iterable

from llmcal.signals.spec import KINDS, SignalSpec

#: Modules whose ``SPECS`` are registered on import, in listing order.
BUILTIN_MODULES = (
    "llmcal.signals.mc",
    "llmcal.signals.density",
    "llmcal.signals.generation",
    "llmcal.signals.ptrue",
    "llmcal.signals.verbalized",
    "llmcal.signals.agreement",
    "llmcal.signals.sequence_entropy",
    "llmcal.signals.lexical",
    "llmcal.signals.graph",
    "llmcal.signals.kle",
    "llmcal.signals.eigenscore",
    "llmcal.signals.cocoa",
    "llmcal.signals.semantic_density",
    "llmcal.signals.pmi",
    "llmcal.signals.sar",
    "llmcal.signals.ccp",
)

#: Every registered signal, by name, in registration order.
SIGNALS: dict[str, SignalSpec] = {}


def register(spec: SignalSpec, *, replace: bool = False) -> SignalSpec:
    """Add ``spec`` to :data:`SIGNALS` and return it.

    A name is one key in a sample's ``signals`` whatever the kind, so it may be
    registered once (``replace=True`` swaps a spec in).  All signals of a
    family share its ``default``, since ``--signals`` turns a family on as one.
    """
    if not isinstance(spec, SignalSpec):
        raise TypeError(f"register: expected a SignalSpec, got {type(spec).__name__}")
    old = SIGNALS.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ValueError(f"signal {spec.name!r} is already registered (by {old.computed_by or 'another module'}); "
                         "pass replace=True to swap it")
    if spec.family is not None:
        for other in SIGNALS.values():
            if other.name != spec.name and other.family == spec.family:
                if other.kind != spec.kind:
                    raise ValueError(f"signal {spec.name!r}: family {spec.family!r} is a {other.kind} family "
                                     f"(signal {other.name!r}), not {spec.kind}")
                if other.default != spec.default:
                    raise ValueError(f"signal {spec.name!r}: family {spec.family!r} has default={other.default} "
                                     f"(signal {other.name!r}); a family is on or off as one")
    SIGNALS[spec.name] = spec
    return spec


def unregister(name: str) -> SignalSpec:
    """Remove a signal (for tests and plugins that swap one out); returns its spec."""
    try:
        return SIGNALS.pop(name)
    except KeyError:
        raise ValueError(f"signal {name!r} is not registered; known: {', '.join(SIGNALS)}") from None


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def get_signal(name: str) -> SignalSpec:
    """The spec of a registered signal; a ValueError listing every name otherwise."""
    try:
        return SIGNALS[name]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}{_hint(name, SIGNALS)}; known: {', '.join(SIGNALS)}") from None


def families(kind: str) -> list[str]:
    """The ``--signals`` families of ``kind``, in registration order (always-on signals have none)."""
    _check_kind(kind)
    out: list[str] = []
    for s in SIGNALS.values():
        if s.kind == kind and s.family is not None and s.family not in out:
            out.append(s.family)
    return out


def default_families(kind: str) -> list[str]:
    """The families of ``kind`` computed when ``--signals`` is not given."""
    return [f for f in families(kind) if all(s.default for s in SIGNALS.values() if s.family == f)]


def check_families(kind: str, names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple once every one is a family of ``kind``; a ValueError naming the bad ones."""
    names = tuple(names)
    known = families(kind)
    bad = [f for f in names if f not in known]
    if bad:
        raise ValueError(f"--signals: unknown {bad}; known: {', '.join(known)}")
    return names


def signals_for(kind: str, families: Iterable[str] | None = None) -> list[SignalSpec]:
    """The signals a run of ``kind`` computes, in registration order: all of them, or, with
    ``families``, the always-on ones and those of the named families."""
    _check_kind(kind)
    chosen = None if families is None else set(check_families(kind, families))
    return [s for s in SIGNALS.values()
            if s.kind == kind and (chosen is None or s.family is None or s.family in chosen)]


def check_signal(name: str, kind: str) -> SignalSpec:
    """The spec of signal ``name`` for a run of ``kind`` (``--signal NAME``); a ValueError that lists
    the signals of that kind when it is unknown or belongs to the other kind."""
    _check_kind(kind)
    known = [s.name for s in SIGNALS.values() if s.kind == kind]
    spec = SIGNALS.get(name)
    if spec is not None and spec.kind == kind:
        return spec
    what = {"mc": "multiple-choice", "open": "open-ended"}
    if spec is not None:
        raise ValueError(f"--signal {name!r} is a signal of {what[spec.kind]} runs, not {what[kind]} ones; "
                         f"{what[kind]} signals: {', '.join(known)}")
    raise ValueError(f"--signal: unknown signal {name!r}{_hint(name, known)}; "
                     f"{what[kind]} signals: {', '.join(known)}")


def describe_signals(kind: str | None = None) -> list[dict[str, Any]]:
    """One row per signal (``SignalSpec.to_dict``: name, kind, family, default, inputs, cost,
    citation, description, computed_by), for ``llmcal signals``; only ``kind``'s when given."""
    _check_kind(kind)
    return [s.to_dict() for s in SIGNALS.values() if kind is None or s.kind == kind]


#: What each input needs, as ``llmcal signals`` words it, and the backend capability that supplies it
#: (None: supplied outside the model: the sentence embedder, ``--nli_model``).
NEEDS: dict[str, tuple[str, str | None]] = {
    "option_logprobs": ("scoring", "score"), "option_token_counts": ("scoring", "score"),
    "token_logprobs": ("logprobs", "generate"), "token_entropies": ("entropies", "generate"),
    "top_logprobs": ("top-k logprobs", "generate"), "samples": ("samples", "generate"),
    "followup_generation": ("follow-up", "generate"), "ptrue_scoring": ("scoring", "score"),
    "bare_scoring": ("scoring", "score"), "hidden_states": ("hidden states", "hidden_states"),
    "bare_token_scoring": ("per-token scoring", "score_tokens"),
    "embeddings": ("embedder", None), "nli_model": ("NLI model (or embeddings)", None),
    "nli_judge": ("NLI model (or a lexical judge)", None),
}


def needs(spec: SignalSpec) -> list[str]:
    """What a signal needs, in words (logprobs, samples, hidden states, an NLI model ...), deduplicated."""
    out: list[str] = []
    for i in spec.inputs:
        word = NEEDS[i][0]
        if word not in out:
            out.append(word)
    return out


def availability(spec: SignalSpec, capabilities: Iterable[str], *, approximate_entropy: bool = False,
                 nli_model: bool = False) -> str:
    """Whether a backend with ``capabilities`` can supply ``spec``: ``"yes"``, ``"no: <what is missing>"``,
    or ``"approx: <why>"`` (an OpenAI-compatible server's entropies are top-k sums; an estimator that
    reads an NLI model falls back to embeddings without ``--nli_model``)."""
    caps = set(capabilities)
    missing = sorted({NEEDS[i][1] for i in spec.inputs if NEEDS[i][1] is not None and NEEDS[i][1] not in caps})
    if missing:
        return "no: the backend cannot " + ", ".join(missing).replace("_", " ")
    notes = []
    if approximate_entropy and "token_entropies" in spec.inputs:
        notes.append("entropy from the server's top-k log-probabilities")
    if approximate_entropy and "top_logprobs" in spec.inputs:
        notes.append("as many alternatives as the server sends")
    if "nli_model" in spec.inputs and not nli_model:
        notes.append("embeddings in place of an NLI model (--nli_model)")
    if "nli_judge" in spec.inputs and not nli_model:
        notes.append("a lexical judge in place of an NLI model (--nli_model)")
    return "approx: " + "; ".join(notes) if notes else "yes"


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _register_builtins() -> None:
    for module in BUILTIN_MODULES:
        for spec in importlib.import_module(module).SPECS:
            register(spec)


_register_builtins()

__all__ = ["SIGNALS", "BUILTIN_MODULES", "SignalSpec", "register", "unregister", "get_signal", "families",
           "default_families", "check_families", "signals_for", "check_signal", "describe_signals", "NEEDS",
           "needs", "availability"]
