"""A model-free answerer: multiple-choice questions answered from a measured run's recorded scores.

:class:`ReplayAnswerer` looks a question up among the samples of one or more run folders
(``samples.jsonl``: the option log-likelihoods the model gave when the run was measured) and
answers it exactly as :class:`~llmcal.serve.answerer.Answerer` would have (``mc_reply``: the
served run's calibration, the policy, the thresholds), optionally after ``delay_s`` seconds of
pretend model time.  Its ``reload()`` re-reads the served run's ``calibration.json`` like the
real one.  What it is for: load tests whose cost is the server's own (not the model's), and
drift drills on real labels (``label(question)``: whether the model's answer was right), as in
benchmarks/serve_load.py and benchmarks/serve_drift.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from llmcal.records.run_dir import RunDir
from llmcal.serve.answerer import Query, Reply, mc_reply
from llmcal.serve.saved import SavedCalibration


class ReplayAnswerer:
    """Answers the questions of ``sample_runs`` with the calibration of ``run_dir`` (see the module docstring)."""

    model_name = "replay"

    def __init__(self, run_dir: str | Path, sample_runs: Iterable[str | Path], delay_s: float = 0.0) -> None:
        self.saved = SavedCalibration.from_run(run_dir, use_probe=False)
        self.thresholds = self.saved.thresholds()
        self.delay_s = float(delay_s)
        self._lock = threading.Lock()
        self.samples: dict[str, Any] = {}
        for run in sample_runs:
            for s in RunDir(run).read_samples():
                if s.is_mc and s.option_logprobs:
                    self.samples.setdefault(s.question, s)
        if not self.samples:
            raise ValueError(f"no multiple-choice samples in {', '.join(map(str, sample_runs))}")

    def questions(self, task: str | None = None) -> list[str]:
        return [q for q, s in self.samples.items() if task is None or s.task == task]

    def options(self, question: str) -> list[str]:
        return list(self.samples[question].choices)

    def label(self, question: str) -> bool:
        """Whether the model's answer to ``question`` was right (the feedback a user would give)."""
        s = self.samples[question]
        return int(np.argmax(s.option_logprobs)) == s.reference

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "calibration_version": self.saved.version, **self.saved.describe()}

    def answer(self, q: Query) -> Reply:
        s = self.samples.get(q.question)
        if s is None:
            raise ValueError(f"replay: no recorded answer for {q.question[:60]!r}")
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        saved = self.saved  # one read: a reload between here and the reply cannot mix two calibrations
        return mc_reply(q, list(s.choices), np.asarray(s.option_logprobs, dtype=np.float64),
                        np.asarray(s.option_ntokens, dtype=np.int64), saved, self.thresholds,
                        {"model": round(1000 * (time.perf_counter() - t0), 3)}, len(s.question) // 4)

    def reload(self) -> str:
        with self._lock:
            new = SavedCalibration.from_run(self.saved.path, use_probe=False)
            self.saved = new
            return new.version
