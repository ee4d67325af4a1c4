"""Isotonic regression calibration (Zadrozny & Elkan 2002, "Transforming classifier scores
into accurate multiclass probability estimates", KDD).

The non-decreasing step function of confidence that best fits correctness in squared error
(pool-adjacent-violators), fitted with scikit-learn's ``IsotonicRegression`` (``y_min=0``,
``y_max=1``, ``out_of_bounds="clip"``).  Only its breakpoints are kept, and ``predict``
interpolates them linearly with ``np.interp`` -- what scikit-learn does, without keeping a
scikit-learn object -- so a calibrator restored from JSON predicts bitwise the same.
Non-parametric: it can fix any monotone miscalibration, and needs more data than the
parametric maps not to overfit.
"""

from __future__ import annotations

import numpy as np

from llmcal.calibrators.base import Calibrator


class IsotonicCalibrator(Calibrator):
    """Isotonic regression; learned breakpoints ``x_thresholds_`` and ``y_thresholds_``."""

    name = "isotonic"
    _params = ()
    _state = ("x_thresholds_", "y_thresholds_")
    _array_state = ("x_thresholds_", "y_thresholds_")
    _probability_state = ("y_thresholds_",)  # outputs: probabilities
    min_samples = 3

    def _fit(self, p: np.ndarray, c: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p, c.astype(np.float64))
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _predict(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self.x_thresholds_, self.y_thresholds_)
