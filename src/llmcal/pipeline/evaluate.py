"""Step 2 of a run: split, fit calibrators on the calibration part, measure the test part.

The split is a seeded permutation, stratified by task so every task is in
both parts.  Temperature scaling (Guo et al. 2017) is fitted on the option
log-likelihoods as multi-class logits (so it can only sharpen or flatten the
option distribution, never change the answer); the binary calibrators are
fitted on the raw ``option_prob`` signal.  Every metric is computed on the
test part before and after, with bootstrap intervals, together with the
brief's confidence filter (answer only at calibrated confidence >= 0.75) and
the threshold that guarantees a target error rate among answered questions
(:mod:`llmcal.policy.risk`), chosen on the calibration part and checked on the
test part.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from llmcal import metrics as M
from llmcal.calibrators import get_calibrator

PRIMARY_SIGNAL = "option_prob"
CI_METRICS = ("accuracy", "ece", "brier", "auroc", "nll")


def split_indices(tasks: Sequence[str], cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, per-task split into (calibration, test) index arrays."""
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


def option_logit_matrix(samples: list[dict]) -> np.ndarray:
    """(n, k_max) option log-likelihoods, padded with -inf for missing options."""
    k = max(len(s["option_logprobs"]) for s in samples)
    out = np.full((len(samples), k), -np.inf)
    for i, s in enumerate(samples):
        out[i, : len(s["option_logprobs"])] = s["option_logprobs"]
    return out


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


def _metrics_with_ci(conf: np.ndarray, correct: np.ndarray, n_bins: int, n_boot: int, seed: int) -> dict:
    out: dict[str, Any] = dict(M.summarize(conf, correct, n_bins=n_bins))
    ci: dict[str, Any] = {}
    if n_boot > 0 and len(conf) > 1:
        for name in CI_METRICS:
            if name not in M.METRIC_SPECS:
                continue
            if name == "auroc" and len(np.unique(correct)) < 2:
                continue
            _, lo, hi = M.bootstrap_ci(name, conf, correct, n_resamples=n_boot, seed=seed, n_bins=n_bins)
            ci[name] = [lo, hi]
    out["ci95"] = ci
    return out


def _filter(conf: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, Any]:
    answered = conf >= threshold
    n = len(conf)
    k = int(answered.sum())
    return {
        "threshold": threshold,
        "coverage": k / n if n else float("nan"),
        "answered": k,
        "abstained": n - k,
        "accuracy_answered": float(correct[answered].mean()) if k else float("nan"),
        "accuracy_all": float(correct.mean()) if n else float("nan"),
    }


def evaluate(
    samples: list[dict],
    calibrators: Sequence[str] = ("temperature",),
    cal_fraction: float = 0.5,
    seed: int = 0,
    n_bins: int = 15,
    threshold: float = 0.75,
    n_bootstrap: int = 1000,
    top_overconfident: int = 10,
    target_error: float = 0.10,
    risk_delta: float = 0.05,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (results, fitted calibrators as dicts)."""
    if len(samples) < 4:
        raise ValueError(f"need at least 4 answered items to split and calibrate, got {len(samples)}")
    tasks = [s["task"] for s in samples]
    correct = np.array([s["correct"] for s in samples], dtype=float)
    signals = sorted(samples[0]["signals"])
    conf = {name: np.array([s["signals"][name] for s in samples], dtype=float) for name in signals}
    logits = option_logit_matrix(samples)
    labels = np.array([s["reference"] for s in samples])
    cal, test = split_indices(tasks, cal_fraction, seed)

    results: dict[str, Any] = {
        "split": {"seed": seed, "cal_fraction": cal_fraction, "n_cal": int(len(cal)), "n_test": int(len(test))},
        "overall": {
            "n": len(samples),
            "accuracy": float(correct.mean()),
            "accuracy_norm": float(np.mean([s["correct_norm"] for s in samples])),
        },
        "per_task": {},
        "signals_test": {},
        "calibrated_test": {},
        "calibrator_errors": {},
        "reliability": {},
        "risk_coverage": {},
    }
    for task in sorted(set(tasks)):
        idx = np.array([i for i, t in enumerate(tasks) if t == task])
        results["per_task"][task] = {
            "n": int(len(idx)),
            "accuracy": float(correct[idx].mean()),
            "accuracy_norm": float(np.mean([samples[i]["correct_norm"] for i in idx])),
            "mean_confidence": float(conf[PRIMARY_SIGNAL][idx].mean()),
            "ece": float(M.ece(conf[PRIMARY_SIGNAL][idx], correct[idx], n_bins=n_bins)),
        }

    for name in signals:
        results["signals_test"][name] = _metrics_with_ci(conf[name][test], correct[test], n_bins, n_bootstrap, seed)

    fitted: dict[str, Any] = {}
    calibrated: dict[str, np.ndarray] = {}
    for cname in calibrators:
        try:
            cal_obj = get_calibrator(cname)
            if cname == "temperature":
                cal_obj.fit(logits[cal], labels[cal])
                calibrated[cname] = np.asarray(cal_obj.predict(logits))
            else:
                cal_obj.fit(conf[PRIMARY_SIGNAL][cal], correct[cal])
                calibrated[cname] = np.asarray(cal_obj.predict(conf[PRIMARY_SIGNAL]))
        except ValueError as err:  # one class only, too few items: say so in the report
            results["calibrator_errors"][cname] = str(err)
            continue
        fitted[cname] = cal_obj.to_dict()
        results["calibrated_test"][cname] = _metrics_with_ci(
            calibrated[cname][test], correct[test], n_bins, n_bootstrap, seed
        )
        results["calibrated_test"][cname]["params"] = fitted[cname]

    primary = "temperature" if "temperature" in calibrated else next(iter(calibrated), None)
    raw_test = conf[PRIMARY_SIGNAL][test]
    results["primary"] = {"signal": PRIMARY_SIGNAL, "calibrator": primary}
    results["filter"] = {"raw": _filter(raw_test, correct[test], threshold)}
    if primary:
        results["filter"]["calibrated"] = _filter(calibrated[primary][test], correct[test], threshold)

    from llmcal.policy.risk import risk_controlled_threshold

    final_all = calibrated[primary] if primary else conf[PRIMARY_SIGNAL]
    rc = risk_controlled_threshold(final_all[cal], correct[cal], target_error, risk_delta)
    results["risk_control"] = {**rc.to_dict(), "test": rc.evaluate(final_all[test], correct[test]),
                               "confidence": primary or PRIMARY_SIGNAL}

    curves = {"raw": raw_test}
    if primary:
        curves[primary] = calibrated[primary][test]
    for label, c in curves.items():
        results["reliability"][label] = M.reliability_data(c, correct[test], n_bins=n_bins).to_dict()
        cov, risk = M.risk_coverage_curve(c, correct[test])
        step = max(1, len(cov) // 200)  # keep the stored curve small
        results["risk_coverage"][label] = {"coverage": cov[::step], "risk": risk[::step]}

    wrong_test = [int(i) for i in test if not correct[i]]
    wrong_test.sort(key=lambda i: -final_all[i])
    results["overconfident_wrong"] = [
        {
            "id": samples[i]["id"],
            "task": samples[i]["task"],
            "question": samples[i]["question"],
            "prediction": samples[i]["prediction_text"],
            "reference": samples[i]["reference_text"],
            "raw_confidence": float(conf[PRIMARY_SIGNAL][i]),
            "calibrated_confidence": float(final_all[i]),
        }
        for i in wrong_test[:top_overconfident]
    ]
    results["metric_specs"] = M.METRIC_SPECS
    return clean(results), fitted
