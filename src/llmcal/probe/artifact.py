"""The probe artifact: ``probe.json`` (what it belongs to, how it was fitted) + ``probe.npz`` (weights).

A probe reads one model's hidden states at given layers; on another model's
activations (or other layers) its weights are meaningless, and applying it
would produce confident nonsense.  So the artifact carries the model's name,
its weight fingerprint (``HFBackend.fingerprint()``), the number of layers,
the hidden size and the layer indices, and :meth:`ProbeArtifact.check_model`
refuses any mismatch with :class:`ProbeMismatchError`, naming what differs.

``probe.json`` holds only JSON (metadata, hyperparameters, the stacker's
calibrator); ``probe.npz`` the float64 arrays (``probe/<name>``,
``stacker/<name>``, ``shift/<name>``).  Both are written atomically; the pair round-trips
exactly (``tests/test_probe.py``).  ``shift`` (``probe/shift.py``), when the run kept hidden
states, is the per-answer shift score fitted on the same calibration part:
:meth:`ProbeArtifact.in_distribution` is what serve asks for one answer.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmcal._version import __version__
from llmcal.probe.combine import Combiner
from llmcal.probe.features import CHEAP_FEATURES, ModelInfo, RunFeatures, cheap_features_one, design_matrix
from llmcal.probe.models import PROBES, Probe
from llmcal.probe.shift import ShiftScorer

ARTIFACT_VERSION = 1


class ProbeMismatchError(ValueError):
    """The probe belongs to another model (or other layers) than the activations offered."""


@dataclass
class ProbeArtifact:
    """A fitted probe (and optionally its ``combined`` stack) bound to one model's activations."""

    model: ModelInfo          # the model the probe was trained on (layers = the run's kept layers)
    layers: list[int]         # hidden-state layers the probe reads, non-negative, in column order
    use_cheap: bool           # whether the cheap features follow the hidden block
    probe: Probe
    combiner: Combiner | None = None
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted: run, split, metrics
    positions: list[str] = field(default_factory=lambda: ["last_prompt"])  # token positions read per layer
    shift: ShiftScorer | None = None  # the per-answer shift score (None: not fitted, e.g. no hidden states)

    # ------------------------------------------------------------ compatibility
    def check_model(self, other: ModelInfo) -> None:
        """Raise :class:`ProbeMismatchError` unless ``other`` is the same weights with the needed layers."""
        me = self.model
        problems = []
        if other.name != me.name:
            problems.append(f"model name {other.name!r} (probe: {me.name!r})")
        if me.fingerprint and other.fingerprint and other.fingerprint != me.fingerprint:
            problems.append(f"weight fingerprint {other.fingerprint} (probe: {me.fingerprint})")
        elif me.fingerprint and not other.fingerprint:
            problems.append("no weight fingerprint recorded for these activations "
                            f"(probe: {me.fingerprint}); cannot verify they come from the same weights")
        if other.hidden_size != me.hidden_size:
            problems.append(f"hidden size {other.hidden_size} (probe: {me.hidden_size})")
        if other.n_layers != me.n_layers:
            problems.append(f"{other.n_layers} layers (probe: {me.n_layers})")
        missing = [x for x in self.layers if x not in other.layers]
        if missing and self.layers:
            problems.append(f"layers {missing} not kept (kept: {other.layers}; probe reads {self.layers})")
        if problems:
            raise ProbeMismatchError(
                "this probe was trained on the activations of another model and cannot be applied: "
                + "; ".join(problems)
                + ". Train a probe for this model with `llmcal probe RUN_DIR`."
            )

    # ------------------------------------------------------------ inference
    def design(self, rf: RunFeatures) -> np.ndarray:
        """The probe's input for these runs' items, (n, D), after :meth:`check_model`."""
        self.check_model(rf.model)
        return design_matrix(rf, self.layers, self.use_cheap, self.positions)

    def probe_logits(self, rf: RunFeatures) -> np.ndarray:
        return self.probe.logit(self.design(rf))  # (n,)

    def predict(self, rf: RunFeatures) -> dict[str, np.ndarray]:
        """``external`` (the probe's P(right)) and, when fitted, ``combined``; each (n,)."""
        z = self.probe_logits(rf)
        out = {"external": 1.0 / (1.0 + np.exp(-z))}
        if self.combiner is not None:
            out["combined"] = self.combiner.predict(rf.signals, z, n_options=rf.n_options)
        return out

    def predict_one(self, sample, hidden: np.ndarray | None,
                    kept_layers: list[int] | None = None,
                    kept_positions: list[str] | None = None) -> dict[str, float]:
        """One answer, as it is produced: its :class:`~llmcal.core.sample.Sample` and hidden row.

        ``hidden`` (n_kept_positions * n_kept, hidden_size): the answer's hidden row
        as a run stores it, position-major over ``kept_positions`` (default: the
        probe's positions) and ``kept_layers`` (default: the layers of the run the
        probe was trained on).  The model check is
        the caller's, once per run (:meth:`check_model`), not once per answer.
        Returns ``{"external": p, "combined": c}``.
        """
        kept = self.model.layers if kept_layers is None else kept_layers
        kept_pos = self.positions if kept_positions is None else kept_positions
        parts = []
        if self.layers:
            slots = [kept_pos.index(p) * len(kept) + kept.index(x) for p in self.positions for x in self.layers]
            parts.append(np.asarray(hidden, dtype=np.float64)[slots].ravel())
        if self.use_cheap:
            parts.append(cheap_features_one(sample))
        x = np.concatenate(parts)[None, :]  # (1, D)
        z = float(self.probe.logit(x)[0])
        out = {"external": 0.5 * (1.0 + math.tanh(0.5 * z))}
        if self.combiner is not None:
            out["combined"] = self.combiner.predict_one(sample.signals, z, n_options=len(sample.option_logprobs))
        return out

    def in_distribution(self, hidden: np.ndarray, kept_layers: list[int] | None = None,
                        kept_positions: list[str] | None = None) -> bool | None:
        """Whether one answer's question looks like the calibration data (None: no shift score saved).

        ``hidden`` is the answer's hidden row as a run stores it, position-major over
        ``kept_positions`` x ``kept_layers`` (default: the layout of the run it was fitted on).
        """
        if self.shift is None or hidden is None:
            return None
        return self.shift.in_distribution(hidden, kept_positions, kept_layers)

    # ------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {
            "artifact_version": ARTIFACT_VERSION,
            "llmcal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": self.model.to_dict(),
            "layers": list(self.layers),
            "features": {
                "hidden": list(self.positions) if self.layers else None,
                "cheap": list(CHEAP_FEATURES) if self.use_cheap else [],
                "n_columns": int(self.probe.n_features),
            },
            "probe": {"kind": self.probe.kind, "params": self.probe.params(), "cv": self.probe.cv_},
            "combined": self.combiner.to_dict()[0] if self.combiner is not None else None,
            "shift": self.shift.to_json() if self.shift is not None else None,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.json`` and ``<stem>.npz`` (``path`` may name either or a folder)."""
        json_path = _json_path(path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"probe/{k}": v for k, v in self.probe.to_arrays().items()}
        if self.combiner is not None:
            arrays.update({f"stacker/{k}": v for k, v in self.combiner.to_dict()[1].items()})
        if self.shift is not None:
            arrays.update({f"shift/{k}": v for k, v in self.shift.to_arrays().items()})
        npz = json_path.with_suffix(".npz")
        tmp = npz.with_name(npz.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, npz)
        tmpj = json_path.with_name(json_path.name + ".tmp")
        tmpj.write_text(json.dumps(_clean(self.to_json()), indent=2))
        os.replace(tmpj, json_path)
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProbeArtifact":
        json_path = _json_path(path)
        if not json_path.exists():
            raise FileNotFoundError(f"{json_path}: no probe artifact; fit one with `llmcal probe RUN_DIR`")
        meta = json.loads(json_path.read_text())
        if meta.get("artifact_version") != ARTIFACT_VERSION:
            raise ValueError(f"{json_path}: artifact version {meta.get('artifact_version')!r}, "
                             f"this llmcal reads {ARTIFACT_VERSION}")
        npz_path = json_path.with_suffix(".npz")
        if not npz_path.exists():
            raise FileNotFoundError(f"{npz_path}: the probe's weights are missing (expected beside {json_path.name})")
        with np.load(npz_path) as z:
            arrays = {k: z[k] for k in z.files}
        kind = meta["probe"]["kind"]
        if kind not in PROBES:
            raise ValueError(f"{json_path}: unknown probe kind {kind!r}")
        probe = PROBES[kind].from_arrays(meta["probe"]["params"],
                                         {k[6:]: v for k, v in arrays.items() if k.startswith("probe/")})
        probe.cv_ = meta["probe"].get("cv") or {}
        combiner = None
        if meta.get("combined"):
            combiner = Combiner.from_dict(meta["combined"],
                                          {k[8:]: v for k, v in arrays.items() if k.startswith("stacker/")})
        shift = None
        if meta.get("shift"):
            shift = ShiftScorer.from_saved(meta["shift"], {k[6:]: v for k, v in arrays.items() if k.startswith("shift/")})
        m = meta["model"]
        model = ModelInfo(m["name"], m.get("fingerprint"), int(m["n_layers"]), int(m["hidden_size"]),
                          [int(x) for x in m.get("layers", [])])
        return cls(model=model, layers=[int(x) for x in meta["layers"]],
                   use_cheap=bool(meta["features"]["cheap"]), probe=probe, combiner=combiner,
                   info=meta.get("info") or {}, positions=_positions(meta["features"].get("hidden")), shift=shift)


def _positions(hidden: Any) -> list[str]:
    # artifacts before the answer-mean feature wrote the string "last prompt token"
    return list(hidden) if isinstance(hidden, list) else ["last_prompt"]


def _json_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir() or (not p.suffix and not p.exists()):
        return p / "probe.json"
    return p.with_suffix(".json")


def _clean(obj: Any) -> Any:
    from llmcal.records.results import clean

    return clean(obj)
