"""Files written so that a kill at any moment leaves the old or the new one, never half.

Every stage that persists something (the run folder, a calibration file) writes through
:func:`atomic_write_bytes`: a temporary file beside the target, fsynced, renamed over it,
and the folder fsynced.  :func:`fault` is the test hook of the fault-injection suite: with
``LLMCAL_FAULT=<point>[:<n>]`` the process ends (like ``kill -9``) the n-th time it reaches
that named write point.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FAULT_EXIT = 137  # what a kill -9 looks like to a shell
_fault_hits: dict[str, int] = {}


def fault(point: str) -> None:
    """Stop the process here (``os._exit``) when ``LLMCAL_FAULT`` names ``point`` (tests only)."""
    spec = os.environ.get("LLMCAL_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    if _fault_hits[point] >= int(nth or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(FAULT_EXIT)


def atomic_write_bytes(path: Path, data: bytes, point: str = "in_json_write") -> None:
    """Write ``path`` atomically: a temporary file beside it, fsynced, renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fault(point)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
