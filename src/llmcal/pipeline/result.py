"""What a run leaves: :class:`RunResult`, returned by :func:`llmcal.run` and :func:`llmcal.load_run`.

A run folder is the result (``results.json``, ``samples.jsonl``, ``calibration.json``,
``report.html``); ``RunResult`` is that folder read back as Python objects, so a notebook
gets the numbers and the fitted calibration without parsing files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcal.core.sample import Sample
from llmcal.records.results import read_results
from llmcal.records.run_dir import RunDir


@dataclass
class RunResult:
    """A finished (calibrated) run folder, read back."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    results: dict[str, Any] = field(repr=False)
    samples: list[Sample] = field(repr=False)
    calibrations: Any = field(repr=False)  # a CalibrationSet: .primary, .by_name

    def __repr__(self) -> str:
        cal = self.calibration
        return (f"RunResult({str(self.path)!r}, {len(self.samples)} samples, accuracy {self.accuracy:.3f}, "
                f"calibration {cal.calibrator if cal is not None else None!r} on {cal.signal if cal is not None else None!r})")

    @property
    def calibration(self):
        """The primary fitted :class:`~llmcal.calibrators.calibration.Calibration` (None when none fitted)."""
        return self.calibrations.primary if self.calibrations is not None else None

    @property
    def report_path(self) -> Path | None:
        p = self.path / "report.html"
        return p if p.exists() else None

    @property
    def accuracy(self) -> float:
        return float(self.results["overall"]["accuracy"])

    def metrics(self, which: str = "primary") -> dict[str, Any]:
        """The test-part metrics of the raw signal (``"raw"``) or of the primary calibrator (default)."""
        primary = self.results.get("primary") or {}
        if which == "raw":
            return self.results["signals_test"][primary.get("signal")]
        name = primary.get("calibrator") if which == "primary" else which
        return self.results["calibrated_test"][name]


def load_run(path: str | Path) -> RunResult:
    """Read a calibrated run folder (``llmcal run`` / :func:`llmcal.run` output) back."""
    from llmcal.calibrators.calibration import CalibrationSet

    run = RunDir(path)
    with run.lock(exclusive=False):  # refused while another process writes the folder
        config = run.config()
        results = read_results(run.results_path)
        cals = CalibrationSet.load(run.calibration_path) if run.calibration_path.exists() else None
        return RunResult(path=run.path, config=config, results=results, samples=run.read_samples(),
                         calibrations=cals)
