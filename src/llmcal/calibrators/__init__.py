"""Post-hoc calibrators, scikit-learn style: ``fit(x, correct) -> self``, ``predict(x)``, and the
one fitted-calibration object every stage presents confidence with.

=================  =========================  ==================================================
name               class                      reference
=================  =========================  ==================================================
``temperature``    :class:`TemperatureScaling` Guo et al. 2017 (multi-class logits or binary)
``temperature_norm`` :class:`PerTokenTemperatureScaling` the same on per-token option log-likelihoods
``platt``          :class:`PlattScaling`      Platt 1999
``platt_chance``   :class:`ChancePlatt`       Platt floored at chance 1/k (Birnbaum's 3PL, guessing known)
``isotonic``       :class:`IsotonicCalibrator` Zadrozny & Elkan 2002 (scikit-learn's PAV)
``histogram``      :class:`HistogramBinning`  Zadrozny & Elkan 2001
``beta``           :class:`BetaCalibration`   Kull, Silva Filho & Flach 2017
=================  =========================  ==================================================

``get_calibrator(name, **params)`` builds one by name; ``from_dict(d)`` restores a fitted one
from its ``to_dict()`` (dispatching on ``d["name"]``).

:class:`Calibration` (``calibration.py``) wraps a fitted calibrator with what it was fitted
on -- the signal, the kind of run, the model fingerprint, the data -- and turns a
:class:`~llmcal.core.sample.Sample` into the confidence a user sees; a run folder's
``calibration.json`` is a :class:`CalibrationSet` of them.
"""

from __future__ import annotations

from llmcal.calibrators.base import Calibrator
from llmcal.calibrators.beta import BetaCalibration
from llmcal.calibrators.chance_platt import ChancePlatt
from llmcal.calibrators.calibration import (
    Calibration,
    CalibrationSet,
    MissingSignalError,
    model_fingerprint,
    option_logit_matrix,
)
from llmcal.calibrators.histogram import HistogramBinning
from llmcal.calibrators.isotonic import IsotonicCalibrator
from llmcal.calibrators.platt import PlattScaling
from llmcal.calibrators.registry import CALIBRATORS, from_dict, get_calibrator
from llmcal.calibrators.temperature import PerTokenTemperatureScaling, TemperatureScaling

__all__ = [
    "CALIBRATORS",
    "BetaCalibration",
    "ChancePlatt",
    "Calibration",
    "CalibrationSet",
    "Calibrator",
    "HistogramBinning",
    "IsotonicCalibrator",
    "MissingSignalError",
    "PerTokenTemperatureScaling",
    "PlattScaling",
    "TemperatureScaling",
    "from_dict",
    "get_calibrator",
    "model_fingerprint",
    "option_logit_matrix",
]
