"""A run folder's saved calibration, applied to one answer at a time.

``llmcal run`` leaves ``calibration.json`` in the run folder: a
:class:`~llmcal.calibrators.calibration.CalibrationSet` (its layout, and the older one it
still reads, are in ``calibrators/calibration.py``), and, with ``--probe``, ``probe.json``
+ ``probe.npz`` (the external probe and the ``combined`` stack).
:class:`SavedCalibration` turns one answer's raw scores into the calibrated confidence the
policy needs, exactly as ``llmcal ask`` does:

* multiple choice: ``combined`` (internal signals + the probe on the last prompt token's
  hidden states, stacked and calibrated) when the run has a probe artifact, else the
  run's primary :class:`~llmcal.calibrators.calibration.Calibration` of a
  multiple-choice run (temperature on the option log-likelihoods works for any number of
  options), else the raw ``option_prob``;
* free form: the run's free-form calibration (an open run's primary, or a saved
  ``generation`` entry) on its signal, else that signal raw (default
  ``mean_token_prob``, the geometric-mean token probability), with
  ``calibrator = "none"`` and ``calibrated = False``.

``version`` names the calibration by its bytes (:func:`~llmcal.serve.events.calibration_version`:
the first 12 hex digits of the SHA-256 of ``calibration.json``), so every answer says which file
scored it, across hot reloads (``"none"`` without one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from llmcal.calibrators.calibration import GENERATION_SIGNAL, LOGIT_SIGNAL, Calibration, CalibrationSet
from llmcal.policy import Thresholds
from llmcal.serve.events import UNCALIBRATED, calibration_version


@dataclass
class Confidence:
    """One answer's confidence, before the policy turns it into words."""

    score: float  # calibrated (or raw, when calibrated is False), in [0, 1]
    raw_score: float  # the signal before calibration
    signal: str  # option_prob, combined, mean_token_prob, ...
    calibrator: str  # temperature, platt, ..., or "none"
    calibrated: bool
    probs: np.ndarray | None = field(default=None, repr=False)  # (k,) option probabilities (multiple choice)
    signals: dict[str, float] = field(default_factory=dict)  # every raw signal of the answer (for the answer log)
    # whether the question looks like the calibration data (the probe's shift score); None: no score saved
    in_distribution: bool | None = None


class SavedCalibration:
    """What a run saved for presenting confidence; ``SavedCalibration.none()`` when there is no run.

    ``calibrations``: a :class:`CalibrationSet`, or a ``calibration.json`` dict of either layout.
    ``version``: the file's :func:`~llmcal.serve.events.calibration_version` (``from_run`` computes
    it); without one, that of the set's canonical JSON, or ``"none"`` when there is no calibration.
    """

    def __init__(self, calibrations: CalibrationSet | Mapping[str, Any] | None = None, path: Path | None = None,
                 probe=None, version: str | None = None) -> None:
        if isinstance(calibrations, CalibrationSet):
            cset = calibrations
        else:
            cset = CalibrationSet.from_dict(dict(calibrations or {}), where=str(path or "calibration.json"))
        if version is None:
            version = (UNCALIBRATED if cset.primary is None and cset.generation is None
                       else calibration_version(json.dumps(cset.to_dict(), sort_keys=True).encode()))
        self.version: str = version
        self.calibrations = cset
        self.path = path
        primary = cset.primary
        self.mc_calibration: Calibration = (primary if primary is not None and primary.kind == "mc"
                                            else Calibration.none(LOGIT_SIGNAL, "mc"))
        self.gen_calibration: Calibration = cset.generation or Calibration.none(GENERATION_SIGNAL, "open")
        context = cset.context
        self.style: str = context.get("style") or "cloze"
        self.chat: bool = bool(context.get("chat"))
        self.model_args: dict[str, Any] = {k: v for k, v in (context.get("model_args") or {}).items()
                                           if k != "batch_size"}
        self.primary: str | None = self.mc_calibration.calibrator if self.mc_calibration.is_fitted else None
        self.signal: str = self.mc_calibration.signal
        self.threshold: float = cset.threshold
        self.gen_signal: str = self.gen_calibration.signal
        # free-form answers are generated through the chat template unless the run said otherwise
        self.gen_chat: bool = bool(self.gen_calibration.context.get("chat", True))
        self.probe = probe  # a ProbeArtifact with a combiner, or None

    # ------------------------------------------------------------ loading
    @classmethod
    def none(cls) -> "SavedCalibration":
        return cls()

    @classmethod
    def from_run(cls, run_dir: str | Path, use_probe: bool = True) -> "SavedCalibration":
        path = Path(run_dir)
        cal_path = path / "calibration.json"
        if not cal_path.exists():
            raise FileNotFoundError(f"{cal_path}: not found; run `llmcal run` first (or serve without --run)")
        for _ in range(5):  # the version must name the bytes that were read: a writer may replace the file meanwhile
            data = cal_path.read_bytes()
            cset = CalibrationSet.load(cal_path)
            if cal_path.read_bytes() == data:
                break
        else:
            raise OSError(f"{cal_path}: changed on every read; try again once its writer is done")
        probe = None
        if use_probe and (path / "probe.json").exists():
            from llmcal.probe.artifact import ProbeArtifact

            art = ProbeArtifact.load(path / "probe.json")
            probe = art if art.combiner is not None else None
        return cls(cset, path, probe, version=calibration_version(data))

    def thresholds(self, high: float | None = None, abstain: float | None = None) -> Thresholds:
        return Thresholds(high=0.90 if high is None else high, abstain=self.threshold if abstain is None else abstain)

    def describe(self) -> dict[str, Any]:
        return {
            "run": self.path.name if self.path else None,  # the folder's name only: /health is open
            "calibration_version": self.version,
            "multiple_choice": {"signal": "combined" if self.probe else self.mc_calibration.signal,
                                "calibrator": self._mc_calibrator_name()},
            "free_form": {"signal": self.gen_signal, "calibrator": self.gen_calibration.calibrator},
            "style": self.style, "chat": self.chat,
        }

    def _mc_calibrator_name(self) -> str:
        if self.probe is not None:
            return f"combined+{self.probe.combiner.calibrator}"
        return self.mc_calibration.calibrator

    # ------------------------------------------------------------ applying
    def mc(self, logprobs: np.ndarray, n_tokens: np.ndarray, sample=None,
           hidden: np.ndarray | None = None, positions: list[str] | None = None) -> tuple[int, Confidence]:
        """The predicted option and its confidence, from the option log-likelihoods (k,).

        ``sample`` (the answer's :class:`~llmcal.core.sample.Sample`), ``hidden`` (its hidden
        row as a run stores it, (n_positions * n_kept, hidden_size)) and its ``positions`` are
        needed for ``combined``; without them the run's calibration is used.
        """
        from llmcal.signals.mc import mc_signals

        ll = np.asarray(logprobs, dtype=np.float64)  # (k,)
        pred, signals = mc_signals(ll, n_tokens)
        cal = self.mc_calibration
        raw = float(signals[cal.signal])
        score, probs = cal.score(signals, ll, n_tokens)  # temperature_norm needs the token counts
        in_dist = None
        if self.probe is not None and hidden is not None:
            in_dist = self.probe.in_distribution(hidden, kept_positions=positions)
        if self.probe is not None and sample is not None and hidden is not None:
            combined = self.probe.predict_one(sample, hidden, kept_positions=positions)["combined"]
            return pred, Confidence(float(combined), raw, "combined", self._mc_calibrator_name(), True, probs,
                                    {**signals, "combined": float(combined)}, in_dist)
        return pred, Confidence(float(score), raw, cal.signal, cal.calibrator, cal.is_fitted, probs, dict(signals),
                                in_dist)

    def generation(self, signals: dict[str, float]) -> Confidence:
        """A free-form answer's confidence from its token signals (``signals.generation.token_signals``)."""
        cal = self.gen_calibration
        if signals.get(cal.signal) is None:
            raise ValueError(f"free-form answer: no {cal.signal!r} signal to calibrate "
                             f"(it has {', '.join(sorted(signals)) or 'none'})")
        raw = float(signals[cal.signal])
        score, _ = cal.score(signals)
        return Confidence(float(score), raw, cal.signal, cal.calibrator, cal.is_fitted, signals=dict(signals))
