"""The results layout of a run folder: ``results.json`` (versioned) and its provenance.

records/ owns the run folder, so it owns what ``results.json`` looks like on disk; what
goes into its metric sections is computed by ``pipeline/evaluate``.  Every results file
carries the schema version, when and by what it was made (library versions, git hash),
the run's config and the calibration settings, then the metric sections.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmcal._version import __version__

SCHEMA_VERSION = 1


def clean(obj: Any) -> Any:
    """NaN/inf -> None and numpy -> Python, so results.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def git_hash() -> str | None:
    """The llmcal checkout's commit, where llmcal runs from one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, Any]:
    """The versions that decide the numbers: llmcal, Python, numpy, scipy, scikit-learn, torch, transformers."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"llmcal": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def results_payload(config: dict[str, Any], sections: dict[str, Any],
                    calibration_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results.json``: provenance first, then the metric sections of ``pipeline/evaluate``."""
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
    }
    if calibration_config is not None:
        payload["calibration_config"] = calibration_config
    payload["versions"] = versions()
    payload["git_hash"] = git_hash()
    payload.update(sections)
    return payload


#: The sections every results.json holds, and their JSON types (what the report and load_run read).
REQUIRED_SECTIONS: dict[str, type] = {"overall": dict, "split": dict, "signals_test": dict,
                                      "calibrated_test": dict, "primary": dict}


def read_results(path: Path) -> dict[str, Any]:
    """A results.json, checked, or a clear error naming it (and the field) instead of a KeyError later."""
    from llmcal.records.run_dir import read_json_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run `llmcal calibrate {path.parent}` first")
    d = read_json_file(path, "results file")
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    version = d.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise ValueError(f"{path}: field 'schema_version': {version!r}; this llmcal reads up to {SCHEMA_VERSION}")
    for key, kind in REQUIRED_SECTIONS.items():
        if key not in d:
            raise ValueError(f"{path}: field {key!r}: missing (a results.json from another llmcal version, or "
                             f"edited by hand?); rerun `llmcal calibrate {path.parent}`")
        if not isinstance(d[key], kind):
            raise ValueError(f"{path}: field {key!r}: expected a JSON {kind.__name__.replace('dict', 'object')}, "
                             f"got {type(d[key]).__name__}")
    acc = d["overall"].get("accuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)):
        raise ValueError(f"{path}: field 'overall.accuracy': expected a number, got {acc!r}")
    return d
