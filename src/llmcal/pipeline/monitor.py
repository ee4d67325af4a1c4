"""``llmcal monitor DB`` and serve's ``/dashboard``: is what serve says about its confidence still true?

Over the answers in the answer log (:mod:`llmcal.records.answer_log`) that got a true/false
label, :func:`monitor_summary` gives, overall, per time window and per calibration version:
ECE, accuracy, mean confidence, the coverage at the threshold (the share of all answers not
abstained) and the accuracy at the threshold (among labeled answers not abstained), and the
reliability data (``metrics.reliability_data``: the diagram).  Its ``drift`` section runs the
CUSUM of :mod:`llmcal.metrics.drift` on the current calibration version's labeled answers (a
new version starts a new watch) against that version's own held-out ECE (the baseline), and
sets the bootstrap interval of the last window's ECE beside it.

The baseline of a version comes from the run folder: ``calibration.json`` when the version is
the current one (a feedback refit stores its held-out ECE in ``fitted_on.held_out_ece``), an
archived ``calibration-versions/<version>.json`` otherwise, and for a calibration made by
``llmcal run`` the test-split ECE of its primary in ``results.json``; ``baseline_ece`` given
by the caller wins over all of these.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from llmcal.calibrators.calibration import VERSION_CHARS, calibration_version  # noqa: F401
from llmcal.metrics.calibration import ece, reliability_data
from llmcal.metrics.drift import DEFAULT_ARL0, DEFAULT_ODDS_RATIO, cusum_calibration, ece_interval_check
from llmcal.records.answer_log import AnswerLog, LabeledAnswer

VERSIONS_DIR = "calibration-versions"


def _primary_held_out_ece(cal: dict[str, Any]) -> float | None:
    primary = (cal.get("calibrations") or {}).get(cal.get("primary") or "") or {}
    value = (primary.get("fitted_on") or {}).get("held_out_ece")
    return float(value) if isinstance(value, (int, float)) else None


def baseline_ece(run_dir: str | Path | None, version: str | None) -> float | None:
    """The held-out ECE the calibration ``version`` of ``run_dir`` was accepted with (None: unknown)."""
    if run_dir is None:
        return None
    run = Path(run_dir)
    current = run / "calibration.json"
    candidates = [current] + ([run / VERSIONS_DIR / f"{version}.json"] if version else [])
    for path in candidates:
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if version is not None and path == current and calibration_version(raw) != version:
            continue
        try:
            cal = json.loads(raw)
        except ValueError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        held_out = _primary_held_out_ece(cal) if isinstance(cal, dict) else None
        if held_out is not None:
            return held_out
        results = run / "results.json"  # the calibration llmcal run made: its test-split ECE
        if results.is_file():
            res = json.loads(results.read_text(encoding="utf-8"))
            primary = cal.get("primary") if isinstance(cal, dict) else None
            value = ((res.get("calibrated_test") or {}).get(primary) or {}).get("ece")
            if isinstance(value, (int, float)):
                return float(value)
        return None
    return None


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _block(labeled: Sequence[LabeledAnswer], answered: Sequence[dict[str, Any]], n_bins: int) -> dict[str, Any]:
    """The numbers of one group of answers (all answers for coverage, the labeled ones for the rest)."""
    n_answers = len(answered)
    out: dict[str, Any] = {
        "answers": n_answers, "labeled": len(labeled),
        "coverage": (sum(not a["abstained"] for a in answered) / n_answers) if n_answers else None,
        "ece": None, "accuracy": None, "mean_confidence": None, "accuracy_at_threshold": None,
        "answered_labeled": 0, "reliability": None,
    }
    if not labeled:
        return out
    x = np.array([a.confidence for a in labeled])  # (n,)
    c = np.array([a.correct for a in labeled], dtype=bool)  # (n,)
    kept = np.array([not a.abstained for a in labeled])  # (n,) answered at the threshold
    out.update(ece=ece(x, c, n_bins=n_bins), accuracy=float(c.mean()), mean_confidence=float(x.mean()),
               answered_labeled=int(kept.sum()),
               accuracy_at_threshold=float(c[kept].mean()) if kept.any() else None,
               reliability=reliability_data(x, c, n_bins=n_bins).to_dict())
    return out


def _groups(items: Iterable[Any], key) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def monitor_summary(answer_log: AnswerLog, run_dir: str | Path | None = None, baseline: float | None = None,
                    window_s: float = 3600.0, n_bins: int = 10, odds_ratio: float = DEFAULT_ODDS_RATIO,
                    arl0: float = DEFAULT_ARL0, since: float | None = None, last_n: int = 200,
                    bootstrap: int = 500) -> dict[str, Any]:
    """The monitor's numbers (see the module docstring) as a JSON-ready dict."""
    if not window_s > 0:
        raise ValueError(f"--window must be a number of seconds > 0, got {window_s}")
    answered = answer_log.answered(since=since)
    labeled = answer_log.labeled(since=since)
    out: dict[str, Any] = {"db": answer_log.shown_url, "run": str(run_dir) if run_dir else None,
                           "n_bins": n_bins, "overall": _block(labeled, answered, n_bins)}
    windows = []
    by_window = _groups(labeled, lambda a: int(a.created // window_s))
    for w, group in sorted(_groups(answered, lambda a: int(a["created"] // window_s)).items()):
        block = _block(by_window.get(w, []), group, n_bins)
        windows.append({"start": _iso(w * window_s), "end": _iso((w + 1) * window_s), **block})
    out["per_window"] = windows
    versions = []
    by_version = _groups(labeled, lambda a: a.calibration_version)
    answered_by_version = _groups(answered, lambda a: a["calibration_version"])
    first_seen = {v: min(a["created"] for a in g) for v, g in answered_by_version.items()}
    for v in sorted(answered_by_version, key=lambda v: first_seen[v]):
        base = baseline if baseline is not None else baseline_ece(run_dir, v)
        versions.append({"version": v, "first_seen": _iso(first_seen[v]), "baseline_ece": base,
                         **_block(by_version.get(v, []), answered_by_version[v], n_bins)})
    out["per_version"] = versions
    current = versions[-1]["version"] if versions else None
    out["drift"] = drift_section(by_version.get(current, []), current,
                                 baseline if baseline is not None else baseline_ece(run_dir, current),
                                 odds_ratio, arl0, n_bins, last_n, bootstrap, answer_log.shown_url, run_dir)
    return out


def drift_section(labeled: Sequence[LabeledAnswer], version: str | None, base: float | None, odds_ratio: float,
                  arl0: float, n_bins: int, last_n: int, bootstrap: int, db: str,
                  run_dir: str | Path | None) -> dict[str, Any]:
    """The alarm for the current calibration version (see the module docstring)."""
    out: dict[str, Any] = {"version": version, "labeled": len(labeled), "baseline_ece": base,
                           "baseline_known": base is not None, "alarm": False, "message": None,
                           "cusum": None, "last_window": None}
    if not labeled:
        out["message"] = "no labeled answers for the current calibration yet"
        return out
    b = 0.0 if base is None else float(base)
    x = np.array([a.confidence for a in labeled])
    c = np.array([a.correct for a in labeled], dtype=bool)
    cus = cusum_calibration(x, c, baseline_ece=b, odds_ratio=odds_ratio, arl0=arl0)
    out["cusum"] = cus.to_dict()
    if bootstrap > 0 and x.size >= 2:
        out["last_window"] = {"n": int(min(last_n, x.size)),
                              **ece_interval_check(x[-last_n:], c[-last_n:], b, n_bins=n_bins,
                                                   n_resamples=bootstrap)}
    if cus.alarm:
        out["alarm"] = True
        run = f" --run {run_dir}" if run_dir else " --run RUN"
        out["message"] = (f"calibration drift: {cus.direction} after {cus.alarm_at} labeled answers of calibration "
                          f"{version} (risk-adjusted CUSUM past h = {cus.h:.2f} for error odds x"
                          f"{odds_ratio:g}, tolerating the held-out ECE {b:.3f}); refit with: "
                          f"llmcal calibrate --from-feedback {db}{run}")
    else:
        out["message"] = (f"no drift in {len(labeled)} labeled answers of calibration {version}"
                          + ("" if base is not None else " (held-out ECE unknown: baseline 0)"))
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The monitor summary as text for the terminal."""
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"answer log {summary['db']}" + (f"   run {summary['run']}" if summary.get("run") else "")]
    head = f"{'':22} {'answers':>8} {'labeled':>8} {'ECE':>6} {'acc':>6} {'conf':>6} {'cover':>6} {'acc@thr':>7}"
    lines.append(head)

    def row(name: str, b: dict[str, Any]) -> str:
        return (f"{name:22} {b['answers']:>8} {b['labeled']:>8} {num(b['ece']):>6} {num(b['accuracy']):>6} "
                f"{num(b['mean_confidence']):>6} {num(b['coverage']):>6} {num(b['accuracy_at_threshold']):>7}")

    lines.append(row("all", summary["overall"]))
    for v in summary["per_version"]:
        lines.append(row(f"version {v['version']}", v))
    for w in summary["per_window"]:
        lines.append(row(w["start"][:16].replace("T", " "), w))
    d = summary["drift"]
    lines.append(("ALARM: " if d["alarm"] else "ok: ") + (d["message"] or ""))
    return "\n".join(lines)
