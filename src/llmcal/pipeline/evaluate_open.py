"""Step 2 of an open-ended run: every signal's AUROC / ECE / Brier, raw and recalibrated.

Each signal is judged on the test part of the same seeded per-task split as
multiple choice (``split_indices``); a recalibrated version (Platt scaling by
default, fitted on the calibration part, Platt 1999) shows what it is worth
once its scale is fixed.  Items where a signal is missing (an unreadable
verbalized reply) are left out *of that signal's* metrics and counted, never
filled in.  The calibration saved for serving (``calibration.json`` ->
``generation``) is the recalibrated signal with the best calibration-part
AUROC among those that cost no extra model call (the token-probability
family), so a served answer's confidence adds no latency.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from llmcal import metrics as M
from llmcal.calibrators import get_calibrator
from llmcal.pipeline.evaluate import _metrics_with_ci, clean, split_indices
from llmcal.signals.generation import TOKEN_SIGNALS


def signal_names(samples: Sequence[dict]) -> list[str]:
    names: list[str] = []
    for s in samples:
        for k in list(s["signals"]) + list(s.get("missing", [])):
            if k not in names:
                names.append(k)
    return names


def evaluate_open(
    samples: list[dict],
    calibrator: str = "platt",
    cal_fraction: float = 0.5,
    seed: int = 0,
    n_bins: int = 15,
    n_bootstrap: int = 1000,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (results, the serving calibration: signal + fitted calibrator)."""
    if len(samples) < 4:
        raise ValueError(f"need at least 4 answered items to split and calibrate, got {len(samples)}")
    tasks = [s["task"] for s in samples]
    correct = np.array([s["correct"] for s in samples], dtype=float)
    cal, test = split_indices(tasks, cal_fraction, seed)
    results: dict[str, Any] = {
        "kind": "open",
        "split": {"seed": seed, "cal_fraction": cal_fraction, "n_cal": int(len(cal)), "n_test": int(len(test))},
        "overall": {"n": len(samples), "accuracy": float(correct.mean())},
        "per_task": {},
        "signals": {},
        "cost": _cost(samples),
    }
    for task in sorted(set(tasks)):
        idx = np.array([i for i, t in enumerate(tasks) if t == task])
        results["per_task"][task] = {"n": int(len(idx)), "accuracy": float(correct[idx].mean()),
                                     "grader": samples[idx[0]].get("grader")}
    best: tuple[float, str, Any] | None = None
    for name in signal_names(samples):
        conf = np.array([s["signals"].get(name, np.nan) for s in samples], dtype=float)
        have = ~np.isnan(conf)
        c_idx, t_idx = cal[have[cal]], test[have[test]]
        entry: dict[str, Any] = {"n_missing": int((~have).sum()), "missing_rate": float((~have).mean()),
                                 "n_test": int(len(t_idx))}
        if len(t_idx) < 2:
            entry["error"] = "too few test items with this signal"
            results["signals"][name] = entry
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry["raw"] = _metrics_with_ci(conf[t_idx], correct[t_idx], n_bins, n_bootstrap, seed)
            try:
                cobj = get_calibrator(calibrator).fit(conf[c_idx], correct[c_idx])
                entry["calibrated"] = _metrics_with_ci(np.asarray(cobj.predict(conf[t_idx])), correct[t_idx],
                                                       n_bins, n_bootstrap, seed)
                entry["calibrator"] = cobj.to_dict()
                cal_auroc = float(M.auroc(conf[c_idx], correct[c_idx]))
                if name in TOKEN_SIGNALS and not np.isnan(cal_auroc) and (best is None or cal_auroc > best[0]):
                    best = (cal_auroc, name, cobj)
            except ValueError as err:  # one class, too few items
                entry["calibrator_error"] = str(err)
        results["signals"][name] = entry
    serving: dict[str, Any] = {}
    if best is not None:
        serving = {"signal": best[1], "calibrator": best[2].to_dict(), "cal_auroc": best[0]}
        results["serving"] = {"signal": best[1], "calibrator": calibrator, "cal_auroc": best[0]}
    return clean(results), serving


def _cost(samples: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean cost per item of each signal family (seconds, forward passes, generated tokens)."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        for fam, c in (s.get("cost") or {}).items():
            acc = out.setdefault(fam, {"n": 0})
            acc["n"] += 1
            for k, v in c.items():
                acc[k] = acc.get(k, 0.0) + float(v)
    for acc in out.values():
        n = acc.pop("n")
        for k in list(acc):
            acc[k] = acc[k] / max(n, 1)
    return out


def signals_table(results: dict[str, Any]) -> str:
    """A markdown table: each signal's AUROC and ECE, raw and recalibrated, and its missing count."""
    rows = ["| signal | AUROC | ECE raw | ECE recalibrated | Brier recalibrated | missing |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, e in results["signals"].items():
        if "raw" not in e:
            rows.append(f"| {name} | n/a | n/a | n/a | n/a | {e['n_missing']} |")
            continue
        cal = e.get("calibrated", {})
        rows.append(f"| {name} | {e['raw']['auroc']:.3f} | {e['raw']['ece']:.3f} | "
                    f"{cal.get('ece', float('nan')):.3f} | {cal.get('brier', float('nan')):.3f} | {e['n_missing']} |")
    return "\n".join(rows)
