"""The calibrators by name: build a new one, or restore a fitted one from its ``to_dict()``."""

from __future__ import annotations

from typing import Any

from llmcal.calibrators.base import Calibrator
from llmcal.calibrators.beta import BetaCalibration
from llmcal.calibrators.chance_platt import ChancePlatt
from llmcal.calibrators.histogram import HistogramBinning
from llmcal.calibrators.isotonic import IsotonicCalibrator
from llmcal.calibrators.platt import PlattScaling
from llmcal.calibrators.temperature import PerTokenTemperatureScaling, TemperatureScaling

CALIBRATORS: dict[str, type[Calibrator]] = {
    "temperature": TemperatureScaling,
    "temperature_norm": PerTokenTemperatureScaling,
    "platt": PlattScaling,
    "platt_chance": ChancePlatt,
    "isotonic": IsotonicCalibrator,
    "histogram": HistogramBinning,
    "beta": BetaCalibration,
}


def get_calibrator(name: str, **params: Any) -> Calibrator:
    """A new, unfitted calibrator by registry name, e.g. ``get_calibrator("histogram", n_bins=15)``."""
    try:
        cls = CALIBRATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown calibrator {name!r}; known: {', '.join(sorted(CALIBRATORS))}") from None
    return cls(**params)


def from_dict(d: dict[str, Any]) -> Calibrator:
    """Restore a calibrator from its ``to_dict()`` output."""
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError("from_dict: expected a dict with a 'name' key")
    name = d["name"]
    if name not in CALIBRATORS:
        raise ValueError(f"from_dict: unknown calibrator {name!r}; known: {', '.join(sorted(CALIBRATORS))}")
    return CALIBRATORS[name].from_dict(d)
