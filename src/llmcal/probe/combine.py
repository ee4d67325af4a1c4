"""``combined``: a stacked model over the internal signals and the probe, then a calibrator.

The internal signals (``option_prob``, ``option_prob_norm``, ``margin``,
``entropy``) are cheap and already rank answers; the external probe reads the
hidden state (Kadavath et al. 2022; Azaria & Mitchell 2023; Liu et al. 2024).
Liu et al. 2024 and Kadavath et al. 2022 both find that the two carry partly
different information, so they are stacked (Wolpert 1992): a logistic
regression over their logits

    z = b + sum_j a_j * logit(signal_j) + a_p * probe_logit        (n,)

(standardized inputs, a fixed mild L2 penalty ``C = 1``), followed by a binary calibrator
(``llmcal.calibrators``; Platt by default) on the stacker's probability.

No stage sees the probe's in-sample output: the stacker is fitted on
out-of-fold probe logits (``models.cross_fit_logits``), and the calibrator on
out-of-fold stacker outputs, all inside the calibration part.  At inference the
probe and the stacker fitted on the whole calibration part are used.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from llmcal.probe.features import SIGNALS, logit
from llmcal.probe.models import LogisticProbe, Probe, cross_fit_logits, sigmoid

#: Inverse L2 strength of the stacker (on standardized inputs; weak for n >= 50).
STACKER_C = 1.0
#: The stacker's inputs, in column order.
STACK_INPUTS = tuple(f"logit_{s}" for s in SIGNALS) + ("probe_logit",)


def stack_inputs(signals: Mapping[str, np.ndarray], probe_logits: np.ndarray,
                 names: Sequence[str] = SIGNALS) -> np.ndarray:
    """(n, len(names) + 1): the logits of the internal signals, then the probe's logit."""
    cols = [logit(np.asarray(signals[s], dtype=np.float64)) for s in names]
    cols.append(np.asarray(probe_logits, dtype=np.float64))
    return np.stack(cols, axis=1)


class Combiner:
    """Stacker (logistic regression on logits) + calibrator; ``fit`` / ``predict``.

    ``signals``: dict name -> (n,) in [0, 1]; ``probe_logits`` (n,); ``y`` (n,) 0/1.
    """

    def __init__(self, calibrator: str = "platt", signals: Sequence[str] = SIGNALS, n_folds: int = 5,
                 seed: int = 0) -> None:
        self.calibrator = calibrator
        self.signals = tuple(signals)
        self.n_folds = int(n_folds)
        self.seed = int(seed)

    def fit(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray, y: np.ndarray) -> "Combiner":
        """``probe_logits`` must be out-of-fold (see ``cross_fit_logits``) for an honest stack."""
        from llmcal.calibrators import get_calibrator

        S = stack_inputs(signals, probe_logits, self.signals)  # (n, k + 1)
        # a handful of standardized inputs and hundreds of items: a fixed mild penalty suffices
        self.stacker_ = LogisticProbe(C=STACKER_C, n_hidden=0, n_components=None, n_folds=self.n_folds,
                                      seed=self.seed)
        self.stacker_.fit(S, y, tune=False)
        oof = sigmoid(cross_fit_logits(self.stacker_, S, y, self.n_folds, self.seed + 1))  # (n,)
        self.calibrator_ = get_calibrator(self.calibrator).fit(oof, y)
        return self

    def stacked(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray) -> np.ndarray:
        """The stacker's probability before the calibrator, (n,)."""
        return sigmoid(self.stacker_.logit(stack_inputs(signals, probe_logits, self.signals)))

    def predict(self, signals: Mapping[str, np.ndarray], probe_logits: np.ndarray) -> np.ndarray:
        """``combined`` confidence, (n,) in [0, 1]."""
        return np.asarray(self.calibrator_.predict(self.stacked(signals, probe_logits)), dtype=np.float64)

    def predict_one(self, signals: Mapping[str, float], probe_logit: float) -> float:
        """``predict`` for one answer, on Python floats (the serving path; no (n,) arrays to build)."""
        w = self.stacker_.coef_
        z = float(self.stacker_.intercept_[0]) + float(w[-1]) * float(probe_logit)
        for j, s in enumerate(self.signals):
            p = min(max(float(signals[s]), 1e-6), 1.0 - 1e-6)
            z += float(w[j]) * (math.log(p) - math.log1p(-p))
        stacked = 0.5 * (1.0 + math.tanh(0.5 * z))
        return float(self.calibrator_.predict(np.array([stacked]))[0])

    def weights(self) -> dict[str, float]:
        """The stacker's weights on each input's logit, in the input's own units."""
        return {name: float(w) for name, w in zip([f"logit_{s}" for s in self.signals] + ["probe_logit"],
                                                  self.stacker_.coef_)} | {
            "intercept": float(self.stacker_.intercept_[0])}

    # -- serialization (numpy arrays go into the artifact's .npz) ------------------------
    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"calibrator": self.calibrator, "signals": list(self.signals), "n_folds": self.n_folds,
                "seed": self.seed, "stacker_params": self.stacker_.params(),
                "calibrator_state": self.calibrator_.to_dict(), "weights": self.weights()}
        return meta, self.stacker_.to_arrays()

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "Combiner":
        from llmcal.calibrators import from_dict

        obj = cls(meta["calibrator"], meta["signals"], meta["n_folds"], meta["seed"])
        obj.stacker_ = LogisticProbe.from_arrays(dict(meta["stacker_params"]), dict(arrays))
        obj.calibrator_ = from_dict(dict(meta["calibrator_state"]))
        return obj


def fit_probe_and_combiner(probe: Probe, X: np.ndarray, signal_values: Mapping[str, np.ndarray], y: np.ndarray,
                           calibrator: str = "platt", n_folds: int = 5, seed: int = 0,
                           tune: bool = True, stack: Sequence[str] = SIGNALS) -> tuple[Probe, Combiner, np.ndarray]:
    """Fit the probe on all of ``X`` (n, D) and the combiner on its out-of-fold logits.

    Returns (fitted probe, fitted combiner, out-of-fold probe logits (n,)).
    """
    probe.fit(X, y, tune=tune)
    oof = cross_fit_logits(probe, X, y, n_folds, seed)
    comb = Combiner(calibrator, signals=tuple(stack), n_folds=n_folds, seed=seed).fit(signal_values, oof, y)
    return probe, comb, oof
