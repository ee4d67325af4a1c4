"""A run folder's saved calibration, applied to one answer at a time.

``llmcal run`` leaves ``calibration.json`` in the run folder::

    {"signal": "option_prob", "primary": "temperature", "threshold": 0.75,
     "style": "cloze", "chat": false, "model_args": {...},
     "calibrators": {"temperature": {...to_dict()...}, ...},
     "generation": {"signal": "mean_token_prob", "calibrator": {...to_dict()...}}}   # optional

and, with ``--probe``, ``probe.json`` + ``probe.npz`` (the external probe and the
``combined`` stack).  :class:`SavedCalibration` turns one answer's raw scores into the
calibrated confidence the policy needs, exactly as ``llmcal ask`` does:

* multiple choice: ``combined`` (internal signals + the probe on the last prompt token's
  hidden states, stacked and calibrated) when the run has a probe artifact, else the
  run's primary calibrator on ``option_prob`` -- temperature scaling acts on the option
  log-likelihoods (one temperature for any number of options), the binary calibrators on
  ``option_prob``;
* free form: the ``generation`` entry's calibrator on its signal (default
  ``mean_token_prob``, the geometric-mean token probability), else that signal raw, with
  ``calibrator = "none"`` and ``calibrated = False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmcal.policy import Thresholds

GENERATION_SIGNAL = "mean_token_prob"


@dataclass
class Confidence:
    """One answer's confidence, before the policy turns it into words."""

    score: float  # calibrated (or raw, when calibrated is False), in [0, 1]
    raw_score: float  # the signal before calibration
    signal: str  # option_prob, combined, mean_token_prob, ...
    calibrator: str  # temperature, platt, ..., or "none"
    calibrated: bool
    probs: np.ndarray | None = field(default=None, repr=False)  # (k,) option probabilities (multiple choice)


class SavedCalibration:
    """What a run saved for presenting confidence; ``SavedCalibration.none()`` when there is no run."""

    def __init__(self, data: dict[str, Any] | None = None, path: Path | None = None, probe=None) -> None:
        from llmcal.calibrators import from_dict

        self.data = dict(data or {})
        self.path = path
        self.style: str = self.data.get("style") or "cloze"
        self.chat: bool = bool(self.data.get("chat"))
        self.model_args: dict[str, Any] = {k: v for k, v in (self.data.get("model_args") or {}).items()
                                           if k != "batch_size"}
        self.primary: str | None = self.data.get("primary")
        self.signal: str = self.data.get("signal") or "option_prob"
        self.threshold: float = float(self.data.get("threshold", 0.75))
        self.calibrator = from_dict(self.data["calibrators"][self.primary]) if self.primary else None
        gen = self.data.get("generation") or {}
        self.gen_signal: str = gen.get("signal") or GENERATION_SIGNAL
        self.gen_calibrator = from_dict(gen["calibrator"]) if gen.get("calibrator") else None
        # an open-ended run (``"kind": "open"``) generated with its top-level chat setting
        self.gen_chat: bool = bool(gen.get("chat", self.data.get("chat", True) if self.data.get("kind") == "open"
                                            else True))
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
        data = json.loads(cal_path.read_text())
        probe = None
        if use_probe and (path / "probe.json").exists():
            from llmcal.probe.artifact import ProbeArtifact

            art = ProbeArtifact.load(path / "probe.json")
            probe = art if art.combiner is not None else None
        return cls(data, path, probe)

    def thresholds(self, high: float | None = None, abstain: float | None = None) -> Thresholds:
        return Thresholds(high=0.90 if high is None else high, abstain=self.threshold if abstain is None else abstain)

    def describe(self) -> dict[str, Any]:
        return {
            "run": self.path.name if self.path else None,  # the folder's name only: /health is open
            "multiple_choice": {"signal": "combined" if self.probe else self.signal,
                                "calibrator": self._mc_calibrator_name()},
            "free_form": {"signal": self.gen_signal,
                          "calibrator": self.gen_calibrator.name if self.gen_calibrator else "none"},
            "style": self.style, "chat": self.chat,
        }

    def _mc_calibrator_name(self) -> str:
        if self.probe is not None:
            return f"combined+{self.probe.combiner.calibrator}"
        return self.primary or "none"

    # ------------------------------------------------------------ applying
    def mc(self, logprobs: np.ndarray, n_tokens: np.ndarray, sample: dict[str, Any] | None = None,
           hidden: np.ndarray | None = None, positions: list[str] | None = None) -> tuple[int, Confidence]:
        """The predicted option and its confidence, from the option log-likelihoods (k,).

        ``sample`` (a ``samples.jsonl``-style record), ``hidden`` (the answer's hidden row as
        a run stores it, (n_positions * n_kept, hidden_size)) and its ``positions`` are
        needed for ``combined``; without them the run's calibrator is used.
        """
        from llmcal.signals.mc import mc_signals, softmax

        ll = np.asarray(logprobs, dtype=np.float64)  # (k,)
        pred, signals = mc_signals(ll, n_tokens)
        raw = signals["option_prob"]
        probs = softmax(ll)
        if self.primary == "temperature":
            probs = softmax(ll / float(self.calibrator.temperature_))
        if self.probe is not None and sample is not None and hidden is not None:
            score = self.probe.predict_one(sample, hidden, kept_positions=positions)["combined"]
            return pred, Confidence(float(score), raw, "combined", self._mc_calibrator_name(), True, probs)
        if self.primary == "temperature":
            score = float(probs[pred])
        elif self.calibrator is not None:
            score = float(self.calibrator.predict(np.array([raw]))[0])
        else:
            score = raw
        return pred, Confidence(float(score), raw, "option_prob", self.primary or "none", self.calibrator is not None,
                                probs)

    def generation(self, signals: dict[str, float]) -> Confidence:
        """A free-form answer's confidence from its token signals (``signals.generation.token_signals``)."""
        raw = float(signals[self.gen_signal])
        if self.gen_calibrator is None:
            return Confidence(raw, raw, self.gen_signal, "none", False)
        score = float(self.gen_calibrator.predict(np.array([raw]))[0])
        return Confidence(score, raw, self.gen_signal, self.gen_calibrator.name, True)
