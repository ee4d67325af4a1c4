"""One fitted calibration: the confidence a user sees, computed in one place.

A :class:`Calibration` knows which signal it calibrates (``option_prob``,
``option_prob_norm``, ``mean_token_prob``, ...), which calibrator (or ``"none"``), the
fitted state, the kind of run (``"mc"`` or ``"open"``), the model it belongs to
(``fingerprint``) and what it was fitted on (``fitted_on``: tasks, n, seed, cal_fraction,
the run folder).  ``confidence(sample)`` is the calibrated confidence of one answer;
evaluate, report, ``llmcal ask``, serve, posttrain pairs and the probe protocol all call it,
so no caller branches on a calibrator's name or reads its fitted attributes.

What is fitted on what:

* temperature scaling on ``option_prob`` of a multiple-choice run is fitted on the
  (n, k_max) option log-likelihood matrix (``-inf`` padded) against the reference
  option (Guo et al. 2017): one T divides every option's log-likelihood, so it applies
  to items with any number of options, and ``option_probs`` is the whole calibrated
  option distribution;
* ``temperature_norm`` in a multiple-choice run is fitted the same way on the per-token
  option log-likelihoods (each divided by its option's token count, the logits of
  ``option_prob_norm``), whatever the signal, and its confidence is the calibrated
  probability of the prediction (issue #15: one T on summed scores does not carry from
  short options to full sentences);
* every other pairing -- another calibrator, another signal, a free-form run -- fits
  the calibrator on that signal's values against correctness (temperature then is its
  binary form ``sigmoid(logit(p) / T)``).

Which pairing applies is decided by the calibrator's capability (``accepts_logits``)
and the signal, never by the calibrator's name.

Files
-----
``Calibration.save(path)`` writes one calibration; a run folder's ``calibration.json``
holds a :class:`CalibrationSet` (``calibration_version`` 2)::

    {"calibration_version": 2, "kind": "mc", "primary": "temperature", "threshold": 0.75,
     "calibrations": {"temperature": {<Calibration.to_dict()>}, "platt": {...}},
     "generation": {<Calibration.to_dict()>}}          # optional, see below

    Calibration.to_dict():
    {"calibration_version": 2, "signal": "option_prob", "calibrator": "temperature",
     "kind": "mc", "threshold": 0.75,
     "state": {<the calibrator's to_dict()>} | null,
     "fingerprint": {"model": ..., "backend": ..., "weights": ...} | null,
     "fitted_on": {"tasks": [...], "n": 200, "seed": 0, "cal_fraction": 0.5, "run": "..."},
     "context": {"style": "cloze", "chat": false, "model_args": {...}}}

``primary`` names the calibration presented to users; ``generation`` is the free-form
calibration and is written only when it is not the primary (an open run's primary *is*
its free-form calibration).  Run folders written before version 2 (keys ``signal``,
``primary``, ``calibrators``, ``threshold``, ``style``, ``chat``, ``model_args``, optional
``generation`` and ``kind``) load into the same objects.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from llmcal.calibrators.base import Calibrator
from llmcal.core.files import atomic_write_bytes

#: hex digits of a calibration file's version
VERSION_CHARS = 12


def calibration_version(data: bytes) -> str:
    """A ``calibration.json``'s version: the first 12 hex digits of the SHA-256 of its bytes.

    What serve shows in every confidence object, the answer log records per answer, and the
    monitor and ``--from-feedback`` group answers by: any change to the file is a new version.
    """
    import hashlib

    return hashlib.sha256(data).hexdigest()[:VERSION_CHARS]
from llmcal.calibrators.registry import from_dict as calibrator_from_dict
from llmcal.calibrators.registry import get_calibrator

#: Version of the layout :meth:`Calibration.to_dict` and :meth:`CalibrationSet.to_dict` write.
CALIBRATION_VERSION = 2
#: The signal that temperature scaling recomputes from the option log-likelihoods:
#: softmax(ll)[prediction] is ``option_prob``, softmax(ll / T)[prediction] its calibrated form.
LOGIT_SIGNAL = "option_prob"
#: The free-form signal served when a run saved no free-form calibration.
GENERATION_SIGNAL = "mean_token_prob"
KINDS = ("mc", "open")
NONE = "none"


class MissingSignalError(ValueError):
    """A sample lacks what a calibration reads (its signal, or its option log-likelihoods)."""


@dataclass
class _Answer:
    """One fresh answer (``llmcal ask``, serve): what :meth:`Calibration.confidence` reads of a sample."""

    signals: Mapping[str, float]
    option_logprobs: Sequence[float] = ()
    option_ntokens: Sequence[int] = ()
    id: str = "answer"
    prediction: int | None = None
    missing: Sequence[str] = ()


def _softmax(ll: np.ndarray) -> np.ndarray:
    """softmax over (k,) log-likelihoods (-inf entries get 0), as ``signals.mc.softmax``."""
    z = ll - np.max(ll)
    e = np.exp(z)
    return e / e.sum()


def option_logit_matrix(samples: Sequence[Any], why: str = "", per_token: bool = False) -> np.ndarray:
    """(n, k_max) option log-likelihoods of multiple-choice samples, ``-inf`` padded for missing options.

    ``per_token``: each divided by its option's token count (at least 1), the logits of
    ``option_prob_norm``; a sample without token counts raises :class:`MissingSignalError`.
    """
    for s in samples:
        if len(s.option_logprobs) < 2:
            raise MissingSignalError(f"sample {s.id!r} has no option log-likelihoods (a free-form answer?)"
                                     + (f"; {why} needs them" if why else ""))
        if per_token and len(getattr(s, "option_ntokens", ()) or ()) != len(s.option_logprobs):
            raise MissingSignalError(f"sample {s.id!r} has no token count for each option"
                                     + (f"; {why} needs them (per-token log-likelihoods)" if why else ""))
    if not samples:
        raise ValueError("option_logit_matrix: no samples")
    k = max(len(s.option_logprobs) for s in samples)
    out = np.full((len(samples), k), -np.inf)  # (n, k_max)
    for i, s in enumerate(samples):
        ll = np.asarray(s.option_logprobs, dtype=np.float64)
        if per_token:
            ll = ll / np.maximum(np.asarray(s.option_ntokens, dtype=np.float64), 1.0)
        out[i, : len(ll)] = ll
    return out


def options_of(samples: Sequence[Any], why: str = "") -> np.ndarray:
    """(n,) each multiple-choice sample's number of options (what a calibrator floored at chance, 1/k,
    reads); a sample with fewer than two raises :class:`MissingSignalError`."""
    out = np.empty(len(samples))
    for i, s in enumerate(samples):
        k = len(getattr(s, "option_logprobs", ()) or ())
        if k < 2:
            raise MissingSignalError(f"sample {s.id!r} has no options (a free-form answer?)"
                                     + (f"; {why} needs their number" if why else ""))
        out[i] = k
    return out


def predictions_of(samples: Sequence[Any]) -> np.ndarray:
    """(n,) each multiple-choice sample's predicted option: its ``prediction``, else the argmax of
    its summed option log-likelihoods (lm-eval's ``acc``; what every signal is the confidence in)."""
    out = np.empty(len(samples), dtype=np.int64)
    for i, s in enumerate(samples):
        pred = getattr(s, "prediction", None)
        out[i] = int(np.argmax(np.asarray(s.option_logprobs, dtype=np.float64))) if pred is None else int(pred)
    return out


def model_fingerprint(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model a run's ``config.json`` describes: name, backend and weight fingerprint (None if unknown)."""
    if not config:
        return None
    be = config.get("backend") or {}
    fp = {"model": config.get("model_desc") or be.get("model") or config.get("model"),
          "backend": be.get("backend") or config.get("model"),
          "weights": be.get("fingerprint")}
    return fp if any(v is not None for v in fp.values()) else None


def _jsonable(obj: Any, where: str) -> Any:
    """Plain JSON values (numpy scalars and arrays, paths and tuples converted); non-finite floats refused."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v, where) for v in (sorted(obj) if isinstance(obj, set) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where}: cannot store the non-finite value {obj!r}")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ValueError(f"{where}: cannot store a {type(obj).__name__} in calibration.json")


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(payload, indent=2, allow_nan=False).encode("utf-8"))
    return path


def _read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no calibration file; run `llmcal run` (or `llmcal calibrate`) first")
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); the calibration file is damaged") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read; the calibration file is damaged") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def _check_state(state: Calibrator, where: str) -> Calibrator:
    """A loaded calibrator's fitted numbers, checked: finite, then its own constraints (``state_problem``).

    A hand-edited or damaged calibration.json (``temperature_: -1.5`` inverts every confidence,
    ``1e-300`` forces them to 0 or 1) is refused on load, naming the file and the field.
    """
    for key in state._state:
        if not hasattr(state, key):
            continue
        v = getattr(state, key)
        if isinstance(v, str):
            continue
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: field 'state.{key}': expected numbers, got {v!r}") from None
        if isinstance(v, bool) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: field 'state.{key}': {v!r} is not a finite number")
    problem = state.state_problem()
    if problem:
        raise ValueError(f"{where}: {problem}")
    return state


def _check_version(d: Mapping[str, Any], where: str) -> None:
    v = d.get("calibration_version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{where}: field 'calibration_version': expected a positive integer, got {v!r}")
    if v > CALIBRATION_VERSION:
        raise ValueError(f"{where}: calibration_version {v} was written by a newer llmcal "
                         f"(this one reads up to {CALIBRATION_VERSION})")


@dataclass
class Calibration:
    """A fitted calibration of one signal; see the module docstring.

    ``state`` is the fitted :class:`~llmcal.calibrators.base.Calibrator`, or None with
    ``calibrator == "none"`` (the raw signal is the confidence).  ``context`` holds what
    presenting an answer needs besides the map (``style``, ``chat``, ``model_args``).
    """

    signal: str
    calibrator: str = NONE
    state: Calibrator | None = None
    kind: str = "mc"
    fingerprint: dict[str, Any] | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.75
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.signal, str) or not self.signal:
            raise ValueError(f"Calibration: signal must be a non-empty string, got {self.signal!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Calibration: kind must be 'mc' or 'open', got {self.kind!r}")
        if self.state is None:
            if self.calibrator != NONE:
                raise ValueError(f"Calibration: calibrator {self.calibrator!r} has no fitted state "
                                 "(use calibrator='none' for the raw signal)")
        else:
            if self.state.name != self.calibrator:
                raise ValueError(f"Calibration: calibrator {self.calibrator!r} but the state is "
                                 f"{self.state.name!r}")
            if not self.state.is_fitted:
                raise ValueError(f"Calibration: the {self.calibrator} state is not fitted")
        self.threshold = float(self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Calibration: threshold must be in [0, 1], got {self.threshold}")
        self.fitted_on = dict(self.fitted_on or {})
        self.context = dict(self.context or {})

    # ------------------------------------------------------------------ building
    @classmethod
    def none(cls, signal: str = LOGIT_SIGNAL, kind: str = "mc", **kwargs: Any) -> "Calibration":
        """No calibration: the raw ``signal`` is the confidence."""
        return cls(signal=signal, calibrator=NONE, state=None, kind=kind, **kwargs)

    @classmethod
    def fit(cls, samples: Sequence[Any], signal: str = LOGIT_SIGNAL, calibrator: str = "temperature", *,
            threshold: float = 0.75, fingerprint: dict[str, Any] | None = None,
            context: dict[str, Any] | None = None, **fitted_on: Any) -> "Calibration":
        """Fit ``calibrator`` on ``signal`` of ``samples`` (the calibration part of a run).

        ``samples`` are :class:`~llmcal.core.sample.Sample` records of one kind.
        ``fitted_on`` (e.g. ``seed=0, cal_fraction=0.5, run="runs/x"``) is stored as given,
        with ``n`` and ``tasks`` filled in from the samples.  Raises ``ValueError`` where
        the calibrator cannot be fitted (one class only, too few samples; its message
        says why) and :class:`MissingSignalError` when a sample lacks ``signal``.
        """
        if not samples:
            raise ValueError("Calibration.fit: no samples")
        kinds = {s.kind for s in samples}
        if len(kinds) > 1:
            raise ValueError(f"Calibration.fit: samples of both kinds {sorted(kinds)}; fit one kind at a time")
        kind = kinds.pop()
        correct = np.array([bool(s.correct) for s in samples])  # (n,)
        fitted_on = {"n": len(samples), "tasks": sorted({s.task for s in samples}), **fitted_on}
        who = f"fitting {calibrator} on {signal}"
        logits = labels = values = None
        state0 = get_calibrator(calibrator) if calibrator != NONE else None
        if state0 is not None and cls._pairs_with_logits(state0, signal, kind):
            logits = option_logit_matrix(samples, why=who, per_token=state0.per_token_logits)
            labels = np.array([s.reference for s in samples])
        else:
            values = cls.none(signal, kind)._values(samples, who)
        n_options = None
        if state0 is not None and state0.needs_options:
            if kind != "mc":
                raise ValueError(f"{who}: {calibrator} is floored at chance (1/k of the options), so it needs "
                                 "multiple-choice answers; this run is free-form")
            n_options = options_of(samples, who)
        return cls.fit_arrays(signal, calibrator, correct, values=values, logits=logits, labels=labels,
                              n_options=n_options, kind=kind, threshold=threshold, fingerprint=fingerprint,
                              context=context, **fitted_on)

    @classmethod
    def fit_arrays(cls, signal: str, calibrator: str, correct: np.ndarray, values: np.ndarray | None = None,
                   logits: np.ndarray | None = None, labels: np.ndarray | None = None,
                   n_options: np.ndarray | None = None, *, kind: str = "mc",
                   threshold: float = 0.75, fingerprint: dict[str, Any] | None = None,
                   context: dict[str, Any] | None = None, **fitted_on: Any) -> "Calibration":
        """:meth:`fit` on arrays: ``values`` (n,) the signal, ``correct`` (n,) 0/1, and for a
        multiple-choice fit the option ``logits`` (n, k) (``-inf`` padded; per-token ones for
        ``temperature_norm``: ``option_logit_matrix(..., per_token=True)``) with the reference
        ``labels`` (n,); ``n_options`` (n,) each answer's number of options for a calibrator floored
        at chance (``platt_chance``).  For callers that hold arrays, not samples (the probe protocol)."""
        kw = dict(kind=kind, threshold=threshold, fingerprint=fingerprint, context=context or {},
                  fitted_on=fitted_on)
        if calibrator == NONE:
            return cls.none(signal, **kw)
        state = get_calibrator(calibrator)
        if cls._pairs_with_logits(state, signal, kind):
            if logits is None or labels is None:
                raise ValueError(f"Calibration.fit_arrays: {calibrator} on {signal} of a multiple-choice run "
                                 "is fitted on the option log-likelihoods; pass logits and labels")
            state.fit(logits, labels)
        else:
            if values is None:
                raise ValueError(f"Calibration.fit_arrays: pass the {signal!r} values to fit {calibrator} on")
            if state.needs_options:
                state.fit(values, correct, n_options=n_options)
            else:
                state.fit(values, correct)
        return cls(signal=signal, calibrator=calibrator, state=state, **kw)

    @staticmethod
    def _pairs_with_logits(state: Calibrator, signal: str, kind: str) -> bool:
        """Whether the fit is on the option log-likelihoods: a calibrator that takes logits, on
        ``option_prob`` (what softmax of those log-likelihoods is) of a multiple-choice run; a
        per-token one (``temperature_norm``) on any signal of a multiple-choice run."""
        if not state.accepts_logits or kind != "mc":
            return False
        return state.per_token_logits or signal == LOGIT_SIGNAL

    @property
    def per_token(self) -> bool:
        """True when the confidence comes from the per-token option log-likelihoods (``temperature_norm``)."""
        return self.uses_logits and bool(self.state.per_token_logits)

    def for_run(self, config: Mapping[str, Any] | None, run_path: str | os.PathLike | None = None) -> "Calibration":
        """A copy bound to a run: the model fingerprint, style, chat and model_args of its ``config.json``."""
        config = config or {}
        context = dict(self.context)
        for key in ("style", "chat"):
            if key in config:
                context[key] = config[key]
        if "model_args" in config:
            context["model_args"] = {k: v for k, v in (config.get("model_args") or {}).items() if k != "batch_size"}
        fitted_on = dict(self.fitted_on)
        if run_path is not None:
            fitted_on["run"] = os.fspath(run_path)
        return replace(self, fingerprint=model_fingerprint(config) or self.fingerprint, context=context,
                       fitted_on=fitted_on)

    # ------------------------------------------------------------------ what it is
    @property
    def is_fitted(self) -> bool:
        """True when a calibrator was fitted (False: the raw signal is the confidence)."""
        return self.state is not None

    @property
    def uses_logits(self) -> bool:
        """True when the confidence is computed from the option log-likelihoods, not the signal value."""
        return self.state is not None and self.state.acts_on_logits

    def describe(self) -> str:
        """``"temperature on option_prob"``, ``"none on mean_token_prob"``, ..."""
        return f"{self.calibrator} on {self.signal}"

    def mismatch(self, fingerprint: Mapping[str, Any] | None) -> str | None:
        """Why a model with ``fingerprint`` is not the one this was fitted for (None: no known difference)."""
        if not self.fingerprint or not fingerprint:
            return None
        for key in ("model", "weights"):
            a, b = self.fingerprint.get(key), fingerprint.get(key)
            if a is not None and b is not None and a != b:
                return f"{key} {b!r} (calibrated for {a!r})"
        return None

    # ------------------------------------------------------------------ applying
    def predict(self, values: np.ndarray | None = None, logits: np.ndarray | None = None,
                predictions: np.ndarray | None = None, n_options: np.ndarray | None = None) -> np.ndarray:
        """Calibrated confidence (n,) from arrays: the signal ``values`` (n,), or for a calibration
        on the option log-likelihoods the ``logits`` (n, k), any k >= 2, ``-inf`` padded -- per-token
        ones with the ``predictions`` (n,) (the summed argmax) for ``temperature_norm``; ``n_options`` (n,)
        for a calibrator floored at chance (``platt_chance``)."""
        if self.uses_logits:
            if logits is None:
                raise ValueError(f"{self.describe()}: pass the option log-likelihoods (logits)")
            if self.per_token:
                if predictions is None:
                    raise ValueError(f"{self.describe()}: pass the per-token logits and the predictions")
                proba = self.state.predict_proba(logits)  # (n, k)
                return np.asarray(proba[np.arange(len(proba)), np.asarray(predictions, dtype=np.int64)],
                                  dtype=np.float64)
            return np.asarray(self.state.predict(logits), dtype=np.float64)
        if values is None:
            raise ValueError(f"{self.describe()}: pass the {self.signal!r} values")
        if self.state is None:
            return np.asarray(values, dtype=np.float64)
        if self.state.needs_options:
            return np.asarray(self.state.predict(values, n_options=n_options), dtype=np.float64)
        return np.asarray(self.state.predict(values), dtype=np.float64)

    def confidences(self, samples: Sequence[Any]) -> np.ndarray:
        """Calibrated confidence of each sample's prediction, (n,) in [0, 1]."""
        if not samples:
            return np.zeros(0)
        if self.uses_logits:
            return self.predict(logits=option_logit_matrix(samples, why=self.describe(), per_token=self.per_token),
                                predictions=predictions_of(samples))
        if self.state is not None and self.state.needs_options:
            return self.predict(values=self._values(samples), n_options=options_of(samples, self.describe()))
        return self.predict(values=self._values(samples))

    def confidence(self, sample: Any) -> float:
        """Calibrated confidence of one sample's prediction, in [0, 1]."""
        return float(self.confidences([sample])[0])

    def option_probs(self, sample: Any) -> np.ndarray | None:
        """Calibrated probabilities of a multiple-choice sample's options, (k,); None for a free-form one.

        Temperature on the option log-likelihoods gives softmax(ll / T).  Any other
        calibration moves only the prediction's probability (to :meth:`confidence`); the
        other options share the rest in proportion to softmax(ll), so the listed
        alternatives keep their order and the distribution sums to 1.
        """
        ll = np.asarray(sample.option_logprobs, dtype=np.float64)  # (k,)
        if ll.size < 2:
            return None
        if self.uses_logits:
            z = option_logit_matrix([sample], why=self.describe(), per_token=self.per_token)  # (1, k)
            return np.asarray(self.state.predict_proba(z)[0], dtype=np.float64)
        conf = self.confidence(sample)
        p = _softmax(ll)
        pred = getattr(sample, "prediction", None)
        pred = int(np.argmax(ll)) if pred is None else int(pred)
        rest = 1.0 - p[pred]
        out = p * ((1.0 - conf) / rest) if rest > 0 else np.full_like(p, (1.0 - conf) / (len(p) - 1))
        out[pred] = conf
        return out

    def score(self, signals: Mapping[str, float], option_logprobs: Sequence[float] | None = None,
              option_ntokens: Sequence[int] | None = None) -> tuple[float, np.ndarray | None]:
        """A fresh answer's (confidence, option probabilities or None), from its signals and, for
        multiple choice, its option log-likelihoods (k,) (and their token counts (k,), which
        ``temperature_norm`` needs): what ``llmcal ask`` and serve show."""
        answer = _Answer(signals=signals, option_logprobs=[] if option_logprobs is None else
                         [float(x) for x in option_logprobs],
                         option_ntokens=[] if option_ntokens is None else [int(x) for x in option_ntokens])
        return self.confidence(answer), self.option_probs(answer)

    def _values(self, samples: Sequence[Any], who: str | None = None) -> np.ndarray:
        """The raw signal of each sample, (n,); a sample without it raises :class:`MissingSignalError`."""
        out = np.empty(len(samples))
        for i, s in enumerate(samples):
            v = s.signals.get(self.signal)
            if v is None:
                recorded = " (recorded missing: it could not be computed for this answer)" \
                    if self.signal in (getattr(s, "missing", None) or ()) else ""
                raise MissingSignalError(
                    f"sample {s.id!r} has no {self.signal!r} signal{recorded}; it has "
                    f"{', '.join(sorted(s.signals)) or 'none'}; "
                    + (who or f"this calibration ({self.describe()})") + " needs it")
            out[i] = float(v)
        return out

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of the module docstring (floats round-trip exactly)."""
        return {
            "calibration_version": CALIBRATION_VERSION,
            "signal": self.signal,
            "calibrator": self.calibrator,
            "kind": self.kind,
            "threshold": self.threshold,
            "state": None if self.state is None else self.state.to_dict(),
            "fingerprint": _jsonable(self.fingerprint, "fingerprint"),
            "fitted_on": _jsonable(self.fitted_on, "fitted_on"),
            "context": _jsonable(self.context, "context"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "calibration") -> "Calibration":
        """Rebuild from :meth:`to_dict` (also after a JSON round trip); errors name ``where`` and the field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        _check_version(d, where)
        for key in ("signal", "calibrator"):
            if not isinstance(d.get(key), str):
                raise ValueError(f"{where}: field {key!r}: expected a string, got {d.get(key)!r}")
        state = None
        if d.get("state") is not None:
            try:
                state = calibrator_from_dict(dict(d["state"]))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: field 'state': {err}") from None
            _check_state(state, where)
        for key in ("fitted_on", "context"):
            if d.get(key) is not None and not isinstance(d[key], Mapping):
                raise ValueError(f"{where}: field {key!r}: expected an object")
        try:
            return cls(signal=d["signal"], calibrator=d["calibrator"], state=state, kind=d.get("kind", "mc"),
                       fingerprint=d.get("fingerprint"), fitted_on=dict(d.get("fitted_on") or {}),
                       threshold=d.get("threshold", 0.75), context=dict(d.get("context") or {}))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); returns the path."""
        return _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        """Read a file written by :meth:`save`, or a run folder's ``calibration.json`` (its primary)."""
        d = _read_json(Path(path))
        if "signal" in d and "calibrator" in d and "calibration_version" in d:
            return cls.from_dict(d, where=str(path))
        primary = CalibrationSet.from_dict(d, where=str(path)).primary
        if primary is None:
            raise ValueError(f"{path}: the run fitted no calibration (every calibrator failed, or none asked)")
        return primary

    @staticmethod
    def load_run_file(path: str | os.PathLike) -> "CalibrationSet":
        """A run folder's ``calibration.json`` (either layout): the primary plus the others by name."""
        return CalibrationSet.load(path)


class CalibrationSet:
    """A run's calibrations: every calibrator fitted on the chosen signal, by name, and which one
    is presented (``primary``); ``generation`` is the free-form one (an open run's primary)."""

    def __init__(self, by_name: Mapping[str, Calibration] | None = None, primary_name: str | None = None,
                 generation: Calibration | None = None) -> None:
        self.by_name: dict[str, Calibration] = dict(by_name or {})
        if primary_name is not None and primary_name not in self.by_name:
            raise ValueError(f"CalibrationSet: primary {primary_name!r} is not among the calibrations "
                             f"({', '.join(self.by_name) or 'none'})")
        self.primary_name = primary_name
        self._generation = generation

    @classmethod
    def of_run(cls, by_name: Mapping[str, Calibration], primary_name: str | None,
               config: Mapping[str, Any] | None, run_path: str | os.PathLike | None = None) -> "CalibrationSet":
        """A run's set: each calibration bound to the run's ``config.json`` (:meth:`Calibration.for_run`)."""
        return cls({n: c.for_run(config, run_path) for n, c in by_name.items()}, primary_name)

    def __repr__(self) -> str:
        return (f"CalibrationSet(primary={self.primary_name!r}, by_name={list(self.by_name)}, "
                f"generation={self.generation.describe() if self.generation else None})")

    @property
    def primary(self) -> Calibration | None:
        """The calibration presented to users (None when the run fitted none)."""
        return self.by_name.get(self.primary_name) if self.primary_name is not None else None

    @property
    def generation(self) -> Calibration | None:
        """The free-form calibration: the one saved for it, else an open run's primary."""
        if self._generation is not None:
            return self._generation
        p = self.primary
        return p if p is not None and p.kind == "open" else None

    def _first(self) -> Calibration | None:
        return self.primary or self._generation or next(iter(self.by_name.values()), None)

    @property
    def kind(self) -> str:
        first = self._first()
        return first.kind if first is not None else "mc"

    @property
    def threshold(self) -> float:
        first = self._first()
        return first.threshold if first is not None else 0.75

    @property
    def context(self) -> dict[str, Any]:
        first = self._first()
        return dict(first.context) if first is not None else {}

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"calibration_version": CALIBRATION_VERSION, "kind": self.kind,
                               "primary": self.primary_name, "threshold": self.threshold,
                               "calibrations": {n: c.to_dict() for n, c in self.by_name.items()}}
        if self._generation is not None:
            out["generation"] = self._generation.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "calibration.json") -> "CalibrationSet":
        """Either layout: ``calibration_version`` 2, or the one runs wrote before it."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        if "calibration_version" not in d:
            return cls._from_legacy(d, where)
        _check_version(d, where)
        cals = d.get("calibrations") or {}
        if not isinstance(cals, Mapping):
            raise ValueError(f"{where}: field 'calibrations': expected an object")
        by_name = {str(n): Calibration.from_dict(c, where=f"{where}: calibrations.{n}") for n, c in cals.items()}
        gen = d.get("generation")
        generation = Calibration.from_dict(gen, where=f"{where}: generation") if gen else None
        try:
            return cls(by_name, d.get("primary"), generation)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @classmethod
    def _from_legacy(cls, d: Mapping[str, Any], where: str) -> "CalibrationSet":
        """The layout before version 2 (see the module docstring)."""
        kind = d.get("kind") or "mc"
        threshold = float(d.get("threshold", 0.75))
        context = {k: d[k] for k in ("style", "chat", "model_args") if k in d}
        signal = d.get("signal") or LOGIT_SIGNAL
        by_name: dict[str, Calibration] = {}
        for name, sd in (d.get("calibrators") or {}).items():
            try:
                state = calibrator_from_dict(dict(sd))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: field 'calibrators.{name}': {err}") from None
            _check_state(state, f"{where}: calibrators.{name}")
            by_name[str(name)] = Calibration(signal=signal, calibrator=state.name, state=state, kind=kind,
                                             threshold=threshold, context=dict(context))
        primary = d.get("primary")
        if primary is not None and primary not in by_name:
            raise ValueError(f"{where}: primary {primary!r} has no entry in 'calibrators'")
        generation = None
        gen = d.get("generation") or {}
        if gen.get("calibrator"):
            try:
                state = calibrator_from_dict(dict(gen["calibrator"]))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: field 'generation.calibrator': {err}") from None
            _check_state(state, f"{where}: generation.calibrator")
            # free-form answers were generated through the chat template unless the run said otherwise
            chat = gen.get("chat", d.get("chat", True) if kind == "open" else True)
            fitted_on = {"cal_auroc": gen["cal_auroc"]} if gen.get("cal_auroc") is not None else {}
            generation = Calibration(signal=gen.get("signal") or GENERATION_SIGNAL, calibrator=state.name,
                                     state=state, kind="open", threshold=threshold,
                                     context={**context, "chat": chat}, fitted_on=fitted_on)
            if kind == "open" and primary is None:  # an open run presents its free-form calibration
                by_name[generation.calibrator] = generation
                primary, generation = generation.calibrator, None
        return cls(by_name, primary, generation)

    def save(self, path: str | os.PathLike) -> Path:
        return _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationSet":
        return cls.from_dict(_read_json(Path(path)), where=str(path))
