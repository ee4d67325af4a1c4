"""Two breakdowns of a calibrated run that results.json and the report show beside the totals.

* ``levels``: the test part cut at the confidence levels a user is shown
  (:mod:`llmcal.policy.levels`: "very sure" >= 0.90, "unsure" >= the abstain
  threshold, "can't answer safely" below it), before and after calibration: the
  share of answers at each level and the accuracy there.  A calibrated model's
  "very sure" answers are right at least 90% of the time; this table says whether
  they are, in the words the user reads (the brief's "speedometer with labels").
* ``per_subtask``: a task's items grouped by what their loader recorded as the
  sub-task (MMLU's ``subject``, TruthfulQA's ``category``, or an explicit
  ``subtask``), so one merged "mmlu" row does not hide a subject on which the model
  is at chance.  Only tasks with at least two sub-tasks get a breakdown.

Both are pure functions of the samples, the split and the confidences, called once
from :func:`llmcal.pipeline.evaluate.evaluate`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from llmcal import metrics as M
from llmcal.core.sample import Sample
from llmcal.policy.levels import LEVELS, Thresholds

#: the meta keys a loader uses to name an item's sub-task, in the order they are looked up
SUBTASK_KEYS = ("subtask", "subject", "category")
#: the words the report uses for each level (the serve page's sentences, shortened)
LEVEL_WORDS = {"high": "very sure", "medium": "unsure", "low": "can't answer safely"}


def level_table(confidence: np.ndarray, correct: np.ndarray, thresholds: Thresholds) -> dict[str, Any]:
    """Share of answers and accuracy at each level; ``confidence``, ``correct``: (n,), no NaN."""
    n = len(confidence)
    high = confidence >= thresholds.high
    medium = (confidence >= thresholds.abstain) & ~high
    out: dict[str, Any] = {}
    for level, mask in zip(LEVELS, (high, medium, ~(high | medium)), strict=True):
        k = int(mask.sum())
        out[level] = {"label": LEVEL_WORDS[level], "n": k, "share": k / n if n else None,
                      "accuracy": float(correct[mask].mean()) if k else None,
                      "mean_confidence": float(confidence[mask].mean()) if k else None}
    return out


def levels(raw: np.ndarray, calibrated: np.ndarray | None, correct: np.ndarray, threshold: float,
           confidence_name: str | None) -> dict[str, Any]:
    """results.json's ``levels``: the level table of the raw and (when fitted) the calibrated confidence."""
    thresholds = Thresholds(high=max(Thresholds.high, threshold), abstain=threshold)
    out: dict[str, Any] = {"thresholds": {"high": thresholds.high, "abstain": thresholds.abstain},
                           "confidence": confidence_name, "raw": level_table(raw, correct, thresholds)}
    if calibrated is not None:
        out["calibrated"] = level_table(calibrated, correct, thresholds)
    return out


def subtask_of(sample: Sample) -> str | None:
    for key in SUBTASK_KEYS:
        value = sample.meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def per_subtask(samples: Sequence[Sample], raw: np.ndarray, correct: np.ndarray,
                n_bins: int) -> dict[str, dict[str, Any]]:
    """``{task: {subtask: {n, accuracy, mean_confidence, ece}}}`` over all items, raw confidence.

    Items with no recorded sub-task, and tasks with fewer than two sub-tasks, are left out.
    NaN confidences (a free-form signal that could not be read) are left out of the
    confidence columns only.
    """
    groups: dict[str, dict[str, list[int]]] = {}
    for i, s in enumerate(samples):
        sub = subtask_of(s)
        if sub is not None:
            groups.setdefault(s.task, {}).setdefault(sub, []).append(i)
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(groups):
        subs = groups[task]
        if len(subs) < 2:
            continue
        rows = {}
        for sub in sorted(subs):
            idx = np.asarray(subs[sub])
            have = idx[~np.isnan(raw[idx])]
            row: dict[str, Any] = {"n": int(len(idx)), "accuracy": float(correct[idx].mean())}
            if len(have):
                row["mean_confidence"] = float(raw[have].mean())
                row["ece"] = float(M.ece(raw[have], correct[have], n_bins=n_bins))
            rows[sub] = row
        out[task] = rows
    return out


def breakdown(samples: Sequence[Sample], test: np.ndarray, raw: np.ndarray, calibrated: np.ndarray | None,
              correct: np.ndarray, threshold: float, n_bins: int,
              confidence_name: str | None = None) -> Mapping[str, Any]:
    """The keys evaluate adds to results: ``levels`` (test part) and, when any task has sub-tasks, ``per_subtask``.

    ``test``: indices of the test items that have the calibrated signal; ``raw``,
    ``calibrated``, ``correct``: (n,) over all samples.
    """
    test = np.asarray(test, dtype=int)
    out: dict[str, Any] = {"levels": levels(raw[test], None if calibrated is None else calibrated[test],
                                            correct[test], threshold, confidence_name)}
    subtasks = per_subtask(samples, raw, correct, n_bins)
    if subtasks:
        out["per_subtask"] = subtasks
    return out
