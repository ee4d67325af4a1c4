"""The calibration / test split every stage shares: seeded, per task, independent of the pool.

Calibrators are fitted on the calibration part and judged on the test part; the
probe (``probe/protocol.py``) and ``combined`` use the very same split, so every
confidence in results.json is scored on the same held-out items.  Stratifying by task
puts every task in both parts, so a task-mixed run never tests on a task its
calibration never saw.

A task's split depends only on that task's items (in run order), its name and the seed:
each task draws its permutation from its own generator, seeded from ``(seed, CRC-32 of
the task name)``.  So arc_easy's test half is the same items whether it was measured
alone, pooled with three other tasks in a shift matrix, or applied to from another run
(issue #15: one task's test accuracy was 0.533 alone, 0.493 and 0.553 in two pools when
one generator was shared across the tasks in sorted order).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np


def task_generator(task: str, seed: int) -> np.random.Generator:
    """The generator of one task's permutation: seeded from ``(seed, crc32(task name))``, stable
    across processes and Python versions (unlike ``hash()``)."""
    return np.random.default_rng([int(seed), zlib.crc32(str(task).encode("utf-8"))])


def split_indices(tasks: Sequence[str], cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, per-task split of items 0..n-1 into sorted (calibration, test) index arrays.

    ``tasks`` (n,) is each item's task; within a task, its own seeded permutation
    (:func:`task_generator`) puts ``round(n_task * cal_fraction)`` items in the calibration part
    and the rest in the test part.  Which of a task's items go where depends only on that
    task's items in order, its name and ``seed``, never on the other tasks in ``tasks``.
    """
    if not 0.0 < cal_fraction < 1.0:
        raise ValueError(f"cal_fraction must be in (0, 1), got {cal_fraction}")
    tasks_arr = np.asarray(tasks)
    cal, test = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for task in sorted(set(tasks_arr.tolist())):
        idx = np.flatnonzero(tasks_arr == task)
        idx = idx[task_generator(task, seed).permutation(len(idx))]
        n_cal = int(round(len(idx) * cal_fraction))
        cal.append(idx[:n_cal])
        test.append(idx[n_cal:])
    return np.sort(np.concatenate(cal)), np.sort(np.concatenate(test))
