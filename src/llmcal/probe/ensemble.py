"""A label-tuned ensemble of confidence signals (UQLM's tuned ``UQEnsemble``; Bouchard & Chauhan 2025,
"Uncertainty Quantification for Language Models: A Suite of Black-Box, White-Box, LLM Judge, and
Ensemble Scorers"), fitted on the calibration part and then calibrated.

UQLM scores an answer by a convex combination ``sum_j w_j s_j`` of its component scorers
(``w_j >= 0``, ``sum w_j = 1``) with the weights tuned on graded answers.  llmcal's signals are
not all on one scale (an entropy is stored as ``exp(-H)``, a PMI as ``sigmoid(pmi)``:
:data:`llmcal.signals.spec.SCORES`), so each component is first mapped to a probability by
its own Platt fit on the calibration part; the weights minimize the log-loss of the
combination there (softmax-parametrized, so they stay on the simplex); and the combination
is recalibrated by Platt on the same part.  A component whose Platt fit refuses (it ranks
answers the wrong way) is left out and named in ``dropped``.

It sits beside ``combined`` (the probe + internal-signal stacker, :mod:`llmcal.probe.combine`),
which it does not replace: this one reads only recorded signals, no hidden states.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from llmcal.calibrators.platt import PlattScaling


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


class TunedEnsemble:
    """Weights over the named ``signals``, fitted on (n, m) stored values and correctness."""

    def __init__(self, signals: Sequence[str]) -> None:
        self.signals = list(signals)
        if len(self.signals) < 2 or len(set(self.signals)) != len(self.signals):
            raise ValueError(f"ensemble: need at least two distinct signals, got {self.signals}")

    def _components(self, x: np.ndarray) -> np.ndarray:
        """(n, m_kept) per-component probabilities; NaN where a signal is missing."""
        cols = []
        for j, cal in zip(self.kept_, self.component_):
            col = np.full(len(x), np.nan)
            have = ~np.isnan(x[:, j])
            col[have] = cal.predict(x[have, j])
            cols.append(col)
        return np.stack(cols, axis=1)

    def _combine(self, comp: np.ndarray) -> np.ndarray:
        w = np.where(np.isnan(comp), 0.0, self.weights_[None, :])  # renormalized over the signals present
        total = w.sum(axis=1)
        out = np.full(len(comp), np.nan)  # NaN: the item has none of the kept signals (missing, as a signal is)
        ok = total > 0
        out[ok] = np.nansum(comp[ok] * w[ok], axis=1) / total[ok]
        return out

    def fit(self, x: np.ndarray, correct: np.ndarray) -> "TunedEnsemble":
        """Fit on ``x`` (n, m) in the order of ``signals`` (NaN = missing) and ``correct`` (n,)."""
        from scipy.optimize import minimize

        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(correct, dtype=bool)
        if x.ndim != 2 or x.shape[1] != len(self.signals) or len(x) != len(y):
            raise ValueError(f"ensemble: expected ({len(y)}, {len(self.signals)}) signal values, got {x.shape}")
        self.kept_, self.component_, self.dropped = [], [], {}
        for j, name in enumerate(self.signals):
            have = ~np.isnan(x[:, j])
            try:
                self.component_.append(PlattScaling().fit(x[have, j], y[have]))
                self.kept_.append(j)
            except ValueError as err:
                self.dropped[name] = str(err)
        if not self.kept_:
            raise ValueError(f"ensemble: no signal could be fitted: {self.dropped}")
        self.weights_ = np.full(len(self.kept_), 1.0 / len(self.kept_))
        comp = self._components(x)
        rows = ~np.isnan(comp).all(axis=1)
        comp, yf = comp[rows], y[rows].astype(np.float64)

        def loss(theta: np.ndarray) -> float:
            # softmax of bounded logits: every weight stays > 0, so an item with one signal still has a score
            t = np.clip(theta, -15.0, 15.0)
            self.weights_ = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
            return _log_loss(self._combine(comp), yf)

        best = minimize(loss, np.zeros(len(self.kept_)), method="Powell",
                        options={"xtol": 1e-4, "ftol": 1e-8, "maxiter": 4000})
        loss(best.x)
        self.final_ = PlattScaling().fit(self._combine(comp), y[rows])
        return self

    def confidence(self, x: np.ndarray) -> np.ndarray:
        """The calibrated ensemble confidence (n,) of ``x`` (n, m) in the order of ``signals``; NaN for
        an item that has none of the kept signals."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.signals):
            raise ValueError(f"ensemble: expected (n, {len(self.signals)}) signal values, got {x.shape}")
        score = self._combine(self._components(x))
        out = np.full(len(x), np.nan)
        ok = ~np.isnan(score)
        out[ok] = self.final_.predict(np.clip(score[ok], 0.0, 1.0))
        return out

    def weights(self) -> dict[str, float]:
        """Each kept signal's weight (they sum to 1)."""
        return {self.signals[j]: float(w) for j, w in zip(self.kept_, self.weights_)}

    def to_dict(self) -> dict[str, Any]:
        return {"signals": self.signals, "kept": [self.signals[j] for j in self.kept_],
                "weights": [float(w) for w in self.weights_], "dropped": self.dropped,
                "components": [c.to_dict() for c in self.component_], "final": self.final_.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TunedEnsemble":
        out = cls(d["signals"])
        out.kept_ = [out.signals.index(n) for n in d["kept"]]
        out.weights_ = np.asarray(d["weights"], dtype=np.float64)
        out.dropped = dict(d.get("dropped", {}))
        out.component_ = [PlattScaling.from_dict(c) for c in d["components"]]
        out.final_ = PlattScaling.from_dict(d["final"])
        return out
