"""The calibration / test split every stage shares: seeded, per task.

Calibrators are fitted on the calibration part and judged on the test part; the
probe (``probe/protocol.py``) and ``combined`` use the very same split, so every
confidence in results.json is scored on the same held-out items.  Stratifying by task
puts every task in both parts, so a task-mixed run never tests on a task its
calibration never saw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def split_indices(tasks: Sequence[str], cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, per-task split of items 0..n-1 into sorted (calibration, test) index arrays.

    ``tasks`` (n,) is each item's task; within a task a seeded permutation puts
    ``round(n_task * cal_fraction)`` items in the calibration part and the rest in the test part.
    """
    if not 0.0 < cal_fraction < 1.0:
        raise ValueError(f"cal_fraction must be in (0, 1), got {cal_fraction}")
    rng = np.random.default_rng(seed)
    tasks_arr = np.asarray(tasks)
    cal, test = [], []
    for task in sorted(set(tasks)):
        idx = np.flatnonzero(tasks_arr == task)
        idx = idx[rng.permutation(len(idx))]
        n_cal = int(round(len(idx) * cal_fraction))
        cal.append(idx[:n_cal])
        test.append(idx[n_cal:])
    return np.sort(np.concatenate(cal)), np.sort(np.concatenate(test))
