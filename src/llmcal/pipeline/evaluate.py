"""Step 2 of a run, for both kinds: split, fit the calibration on the calibration part, measure the test part.

The split is the seeded per-task one of :func:`llmcal.core.split.split_indices`.  One
signal is calibrated (``signal``; multiple choice: ``option_prob``, free form: the
cost-free token signal that ranks best on the calibration part, see below); every
calibrator asked for is fitted on it as a
:class:`~llmcal.calibrators.calibration.Calibration` -- temperature scaling (Guo et al.
2017) on ``option_prob`` acts on the option log-likelihoods as multi-class logits, so it
only sharpens or flattens the option distribution and never changes the answer; the
other pairings fit the calibrator on the signal's values against correctness.  The first
calibrator listed that fits is the *primary*, the confidence users are shown.

Every metric is computed on the test part before and after, with bootstrap intervals,
together with the brief's confidence filter (answer only at calibrated confidence >=
0.75) and the threshold that guarantees a target error rate among answered questions
(:mod:`llmcal.policy.risk`), chosen on the calibration part and checked on the test part.

Both kinds give one results layout (``split``, ``overall``, ``per_task``, ``signals_test``,
``calibrated_test``, ``calibrator_errors``, ``primary``, ``filter``, ``risk_control``,
``reliability``, ``risk_coverage``, ``overconfident_wrong``, ``baseline``, ``metric_specs``, ``kind``;
``signal_choice`` with ``--signal auto``).
A free-form run adds ``signals``: each signal raw and recalibrated by the first
calibrator (default Platt 1999) with its missing count -- an item whose signal is missing
(an unreadable verbalized reply) is left out *of that signal's* metrics and counted, never
filled in -- ``cost`` (mean seconds / forward passes / tokens per item of each signal
family) and ``serving`` (the calibrated signal and its calibration-part AUROC).

Defaults per kind (:data:`DEFAULT_CALIBRATORS`, :data:`DEFAULT_SIGNAL`): multiple choice
``temperature`` on ``option_prob``; free form ``platt`` on ``"auto"``, the token-probability
signal (no extra model call, so a served answer's confidence adds no latency) with the best
calibration-part AUROC.  Temperature asked for on a free-form run is its binary form,
``sigmoid(logit(p) / T)``.  ``--signal auto`` on a multiple-choice run chooses by
cross-validated ECE and AUROC of the calibrated signal inside the calibration part
(:func:`choose_signal_cv`); ``signal_choice`` records the choice, the rule and each candidate.

``baseline`` holds the constant-confidence baseline (every test answer gets the calibration
part's accuracy) and, per calibrator, whether it beats it on ECE and whether the ECE interval
spans it (too few test items to tell); the checklist reads both.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from llmcal import metrics as M
from llmcal.calibrators.calibration import Calibration
from llmcal.core.sample import Sample
from llmcal.core.split import split_indices
from llmcal.records.results import clean
from llmcal.signals.generation import TOKEN_SIGNALS

__all__ = ["evaluate", "signal_names", "signals_table", "DEFAULT_CALIBRATORS",
           "DEFAULT_SIGNAL", "CI_METRICS"]

#: The calibrators fitted when none are named, per kind of run.
DEFAULT_CALIBRATORS = {"mc": ("temperature",), "open": ("platt",)}
#: The calibrated signal when none is named, per kind; ``"auto"``: best calibration-part AUROC.
DEFAULT_SIGNAL = {"mc": "option_prob", "open": "auto"}
#: The signals ``"auto"`` chooses among, per kind (None: every recorded signal).
AUTO_CANDIDATES: dict[str, tuple[str, ...] | None] = {"mc": None, "open": TOKEN_SIGNALS}
FALLBACK_SIGNAL = {"mc": "option_prob", "open": "mean_token_prob"}
CI_METRICS = ("accuracy", "ece", "brier", "auroc", "nll")


def signal_names(samples: Sequence[Sample]) -> list[str]:
    """Every signal any sample has or records missing, in first-seen order."""
    names: list[str] = []
    for s in samples:
        for k in list(s.signals) + list(s.missing):
            if k not in names:
                names.append(k)
    return names


def metrics_with_ci(conf: np.ndarray, correct: np.ndarray, n_bins: int, n_boot: int, seed: int) -> dict:
    """One confidence on the test part in results.json's format: ``summarize`` + bootstrap ``ci95``."""
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


@contextmanager
def _warnings_off(on: bool) -> Iterator[None]:
    with warnings.catch_warnings():
        if on:
            warnings.simplefilter("ignore")
        yield


def _as_samples(samples: Sequence[Sample | Mapping[str, Any]]) -> list[Sample]:
    """Samples as given; plain ``samples.jsonl`` dicts (a notebook's) are validated into Samples."""
    return [s if isinstance(s, Sample) else Sample.from_dict(s, where=f"samples[{i}]")
            for i, s in enumerate(samples)]


def _kind_of(samples: Sequence[Sample]) -> str:
    kinds = sorted({s.kind for s in samples})
    if len(kinds) != 1:
        raise ValueError(f"evaluate: samples of both kinds {kinds}; a run holds one kind")
    return kinds[0]


def _choose_signal(conf: dict[str, np.ndarray], correct: np.ndarray, cal: np.ndarray, names: Sequence[str],
                   kind: str) -> str:
    """``"auto"``: the candidate signal with the best AUROC on the calibration part (first on ties)."""
    allowed = AUTO_CANDIDATES[kind]
    best: tuple[float, str] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class AUROC: nan, not a candidate
        for name in names:
            if allowed is not None and name not in allowed:
                continue
            c_idx = cal[~np.isnan(conf[name][cal])]
            if len(c_idx) < 2:
                continue
            a = float(M.auroc(conf[name][c_idx], correct[c_idx]))
            if not np.isnan(a) and (best is None or a > best[0]):
                best = (a, name)
    if best is not None:
        return best[1]
    return FALLBACK_SIGNAL[kind] if FALLBACK_SIGNAL[kind] in conf else names[0]


#: ``--signal auto`` on a multiple-choice run: folds of the calibration part, and how far under the
#: best cross-validated AUROC a signal may rank and still be chosen for a lower cross-validated ECE.
AUTO_FOLDS = 5
AUTO_AUROC_TOLERANCE = 0.02


def choose_signal_cv(cal_samples: Sequence[Sample], names: Sequence[str], calibrator: str, seed: int,
                     n_bins: int = 15) -> dict[str, Any]:
    """``--signal auto`` for multiple choice: each signal calibrated by ``calibrator`` in
    ``AUTO_FOLDS``-fold cross-validation *inside the calibration part* (the test part is never read);
    among the signals whose out-of-fold AUROC is within ``AUTO_AUROC_TOLERANCE`` of the best, the one
    with the lowest out-of-fold ECE.  Returns the choice, the rule and every candidate's numbers."""
    n = len(cal_samples)
    y = np.array([s.correct for s in cal_samples], dtype=float)
    folds = np.random.default_rng(seed).permutation(n) % AUTO_FOLDS  # (n,) fold of each item
    cands: dict[str, dict[str, Any]] = {}
    for name in names:
        oof = np.full(n, np.nan)
        try:
            for k in range(AUTO_FOLDS):
                tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
                if not len(te):
                    continue
                cobj = Calibration.fit([cal_samples[i] for i in tr], name, calibrator, seed=seed)
                oof[te] = cobj.confidences([cal_samples[i] for i in te])
        except ValueError as err:
            cands[name] = {"error": str(err)}
            continue
        with _warnings_off(True):
            cands[name] = {"cv_ece": float(M.ece(oof, y, n_bins=n_bins)), "cv_auroc": float(M.auroc(oof, y))}
    ok = {k: v for k, v in cands.items() if "cv_ece" in v and not math.isnan(v["cv_auroc"])}
    if not ok:
        chosen = FALLBACK_SIGNAL["mc"] if FALLBACK_SIGNAL["mc"] in names else names[0]
        why = "no signal could be calibrated in every fold; the default"
    else:
        best_auc = max(v["cv_auroc"] for v in ok.values())
        near = {k: v for k, v in ok.items() if v["cv_auroc"] >= best_auc - AUTO_AUROC_TOLERANCE}
        chosen = min(near, key=lambda k: (near[k]["cv_ece"], -near[k]["cv_auroc"]))
        why = (f"lowest {AUTO_FOLDS}-fold cross-validated ECE ({near[chosen]['cv_ece']:.3f}, {calibrator}) among "
               f"the signals within {AUTO_AUROC_TOLERANCE} of the best cross-validated AUROC ({best_auc:.3f}), "
               "on the calibration part only")
    return {"chosen": chosen, "rule": why, "calibrator": calibrator, "folds": AUTO_FOLDS, "candidates": cands}


def evaluate(
    samples: Sequence[Sample],
    calibrators: Sequence[str] | None = None,
    cal_fraction: float = 0.5,
    seed: int = 0,
    n_bins: int = 15,
    threshold: float = 0.75,
    n_bootstrap: int = 1000,
    top_overconfident: int = 10,
    target_error: float = 0.10,
    risk_delta: float = 0.05,
    signal: str | None = None,
    *,
    run_config: Mapping[str, Any] | None = None,
    run_path: str | None = None,
) -> tuple[dict[str, Any], dict[str, Calibration]]:
    """Return (results, the fitted calibrations by calibrator name).

    ``calibrators`` None or empty: :data:`DEFAULT_CALIBRATORS` for the run's kind.
    ``signal`` None: :data:`DEFAULT_SIGNAL` for the kind; ``"auto"`` chooses on the
    calibration part.  ``run_config`` (the run's ``config.json``) and ``run_path`` bind the
    calibrations to the run (model fingerprint, style, chat, model_args; see
    :meth:`Calibration.for_run`).
    """
    samples = _as_samples(samples)
    if len(samples) < 4:
        raise ValueError(f"need at least 4 answered items to split and calibrate, got {len(samples)}")
    kind = _kind_of(samples)
    calibrators = tuple(calibrators) if calibrators else DEFAULT_CALIBRATORS[kind]
    tasks = [s.task for s in samples]
    correct = np.array([s.correct for s in samples], dtype=float)
    # multiple choice: every sample has every signal; free form: a signal may be missing (NaN here)
    names = sorted(samples[0].signals) if kind == "mc" else signal_names(samples)
    conf = {name: np.array([s.signals.get(name, np.nan) for s in samples], dtype=float) for name in names}
    cal, test = split_indices(tasks, cal_fraction, seed)

    chosen = signal or DEFAULT_SIGNAL[kind]
    signal_choice: dict[str, Any] | None = None
    if chosen == "auto" and kind == "mc":
        signal_choice = choose_signal_cv([samples[i] for i in cal], names, calibrators[0], seed)
        chosen = signal_choice["chosen"]
    elif chosen == "auto":
        chosen = _choose_signal(conf, correct, cal, names, kind)
        signal_choice = {"chosen": chosen, "rule": "the token signal with the best AUROC on the calibration part"}
    if chosen not in conf:
        raise ValueError(f"signal {chosen!r}: not recorded in these samples; recorded: {', '.join(names)}")
    have = ~np.isnan(conf[chosen])  # (n,) items with the calibrated signal
    if kind == "mc" and not have.all():
        first = samples[int(np.flatnonzero(~have)[0])]
        raise ValueError(f"sample {first.id!r} has no {chosen!r} signal; multiple-choice samples carry every signal")
    cal_s, test_s = cal[have[cal]], test[have[test]]
    raw = conf[chosen]

    results: dict[str, Any] = {
        "kind": kind,
        "split": {"seed": seed, "cal_fraction": cal_fraction, "n_cal": int(len(cal)), "n_test": int(len(test))},
        "overall": {"n": len(samples), "accuracy": float(correct.mean())},
        "per_task": {},
        "signals_test": {},
        "calibrated_test": {},
        "calibrator_errors": {},
        "reliability": {},
        "risk_coverage": {},
    }
    if kind == "mc":
        results["overall"]["accuracy_norm"] = float(np.mean([s.correct_norm for s in samples]))
    for task in sorted(set(tasks)):
        idx = np.array([i for i, t in enumerate(tasks) if t == task])
        row: dict[str, Any] = {"n": int(len(idx)), "accuracy": float(correct[idx].mean())}
        if kind == "mc":
            row["accuracy_norm"] = float(np.mean([samples[i].correct_norm for i in idx]))
        else:
            row["grader"] = samples[idx[0]].grader
        h = idx[have[idx]]
        if len(h):
            row["mean_confidence"] = float(raw[h].mean())
            row["ece"] = float(M.ece(raw[h], correct[h], n_bins=n_bins))
        results["per_task"][task] = row

    quiet = kind == "open"  # free-form signals are often one-class on a task: no warning per metric
    for name in sorted(names):
        t_idx = test[~np.isnan(conf[name][test])]
        if kind == "open" and len(t_idx) < 2:
            continue
        with _warnings_off(quiet):
            results["signals_test"][name] = metrics_with_ci(conf[name][t_idx], correct[t_idx], n_bins,
                                                             n_bootstrap, seed)

    fit_kw = dict(threshold=threshold, seed=seed, cal_fraction=cal_fraction)
    cal_samples = [samples[i] for i in cal_s]
    have_samples = [samples[i] for i in np.flatnonzero(have)]
    calibrations: dict[str, Calibration] = {}
    calibrated: dict[str, np.ndarray] = {}  # name -> (n,) calibrated confidence, NaN where the signal is missing
    for cname in calibrators:
        try:
            cobj = Calibration.fit(cal_samples, chosen, cname, **fit_kw)
            full = np.full(len(samples), np.nan)
            full[have] = cobj.confidences(have_samples)
        except ValueError as err:  # one class only, too few items: say so in the report
            results["calibrator_errors"][cname] = str(err)
            continue
        if run_config is not None or run_path is not None:
            cobj = cobj.for_run(run_config, run_path)
        calibrations[cname] = cobj
        calibrated[cname] = full
        with _warnings_off(quiet):
            results["calibrated_test"][cname] = metrics_with_ci(full[test_s], correct[test_s], n_bins,
                                                                 n_bootstrap, seed)
        results["calibrated_test"][cname]["params"] = cobj.state.to_dict()

    primary = next(iter(calibrated), None)  # the first calibrator listed that fitted
    results["primary"] = {"signal": chosen, "calibrator": primary}
    if signal_choice is not None:
        results["signal_choice"] = signal_choice
    results["baseline"] = _constant_baseline(correct, cal_s, test_s, results["calibrated_test"], n_bins,
                                             n_bootstrap, seed)
    results["filter"] = {"raw": _filter(raw[test_s], correct[test_s], threshold)}
    if primary:
        results["filter"]["calibrated"] = _filter(calibrated[primary][test_s], correct[test_s], threshold)

    from llmcal.policy.risk import risk_controlled_threshold

    final_all = calibrated[primary] if primary else raw
    rc = risk_controlled_threshold(final_all[cal_s], correct[cal_s], target_error, risk_delta)
    results["risk_control"] = {**rc.to_dict(), "test": rc.evaluate(final_all[test_s], correct[test_s]),
                               "confidence": primary or chosen}

    curves = {"raw": raw[test_s]}
    if primary:
        curves[primary] = calibrated[primary][test_s]
    with _warnings_off(quiet):
        for label, c in curves.items():
            results["reliability"][label] = M.reliability_data(c, correct[test_s], n_bins=n_bins).to_dict()
            cov, risk = M.risk_coverage_curve(c, correct[test_s])
            step = max(1, len(cov) // 200)  # keep the stored curve small
            results["risk_coverage"][label] = {"coverage": cov[::step], "risk": risk[::step]}

    wrong_test = [int(i) for i in test_s if not correct[i]]
    wrong_test.sort(key=lambda i: -final_all[i])
    results["overconfident_wrong"] = [
        {
            "id": samples[i].id,
            "task": samples[i].task,
            "question": samples[i].question,
            "prediction": samples[i].prediction_text,
            "reference": (samples[i].reference_text if samples[i].reference_text is not None
                          else " | ".join(samples[i].answers)),
            "raw_confidence": float(raw[i]),
            "calibrated_confidence": float(final_all[i]),
        }
        for i in wrong_test[:top_overconfident]
    ]
    from llmcal.pipeline.breakdown import breakdown  # levels (test part) and per_subtask (MMLU subjects)

    results.update(breakdown(samples, test_s, raw, calibrated.get(primary) if primary else None, correct,
                             threshold, n_bins, primary or chosen))
    results["metric_specs"] = M.METRIC_SPECS

    if kind == "open":
        recal = calibrators[0]  # each signal recalibrated by the first calibrator asked for
        results["signals"] = _signal_table(samples, conf, correct, cal, test, names, recal, n_bins,
                                           n_bootstrap, seed, fit_kw)
        results["missing"] = {name: int(np.isnan(conf[name]).sum()) for name in names}
        results["cost"] = _cost(samples)
        if len(names) >= 2:  # UQLM's tuned ensemble over every recorded signal, beside `combined`
            _tuned_ensemble(results, conf, correct, cal, test, names, n_bins, n_bootstrap, seed)
        if primary:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal_auroc = float(M.auroc(raw[cal_s], correct[cal_s]))
            results["serving"] = {"signal": chosen, "calibrator": primary, "cal_auroc": cal_auroc}
            calibrations[primary].fitted_on["cal_auroc"] = cal_auroc
    return clean(results), calibrations


def _tuned_ensemble(results: dict[str, Any], conf: dict[str, np.ndarray], correct: np.ndarray, cal: np.ndarray,
                    test: np.ndarray, names: Sequence[str], n_bins: int, n_bootstrap: int, seed: int) -> None:
    """``calibrated_test["tuned_ensemble"]``: :class:`llmcal.probe.ensemble.TunedEnsemble` over ``names``,
    fitted on the calibration part, scored on the test items it covers (its weights in ``params``);
    why it could not be fitted in ``calibrator_errors`` otherwise."""
    from llmcal.probe.ensemble import TunedEnsemble

    x = np.stack([conf[n] for n in names], axis=1)  # (n, m), NaN = missing
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ens = TunedEnsemble(names).fit(x[cal], correct[cal])
            pred = ens.confidence(x[test])
    except ValueError as err:
        results["calibrator_errors"]["tuned_ensemble"] = str(err)
        return
    ok = ~np.isnan(pred)
    if ok.sum() < 2:
        results["calibrator_errors"]["tuned_ensemble"] = "too few test items with any of the ensemble's signals"
        return
    with _warnings_off(True):
        block = metrics_with_ci(pred[ok], correct[test][ok], n_bins, n_bootstrap, seed)
    block["params"] = {"ensemble": ens.to_dict(), "weights": ens.weights(), "n_test": int(ok.sum())}
    results["calibrated_test"]["tuned_ensemble"] = block


def _constant_baseline(correct: np.ndarray, cal_s: np.ndarray, test_s: np.ndarray, calibrated: Mapping[str, Any],
                       n_bins: int, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """The constant-confidence baseline: every test answer gets the calibration part's accuracy.

    It is the calibration that transfers best when nothing is known of an answer, so each calibrator
    is compared with it on the test part, on ECE and on the Brier score (``calibrators[name]``:
    ``beats_constant_ece``, ``beats_constant_brier``, ``beats_constant`` = both, and whether the
    95% intervals hold the constant's values: too few test items to tell; see
    :func:`llmcal.pipeline.transfer.judge`).
    """
    from llmcal.pipeline.transfer import constant_row, judge

    acc = float(correct[cal_s].mean()) if len(cal_s) else 0.5
    with _warnings_off(True):
        row = constant_row(acc, correct[test_s], n_bins, n_bootstrap, seed)
    flags = {}
    for name, block in calibrated.items():
        j = judge({"ece": block.get("ece"), "brier": block.get("brier"), "ci95": block.get("ci95")}, row)
        flags[name] = {k: v for k, v in j.items() if k not in ("ece", "brier", "ci95")}
    return {"constant": row, "confidence": acc, "what": "the calibration part's accuracy, given to every answer",
            "calibrators": flags}


def _signal_table(samples: Sequence[Sample], conf: dict[str, np.ndarray], correct: np.ndarray, cal: np.ndarray,
                  test: np.ndarray, names: Sequence[str], recal: str, n_bins: int, n_bootstrap: int, seed: int,
                  fit_kw: dict[str, Any]) -> dict[str, Any]:
    """Each signal of a free-form run on the test part: raw, recalibrated by ``recal``, and its missing count."""
    table: dict[str, Any] = {}
    for name in names:
        have = ~np.isnan(conf[name])
        c_idx, t_idx = cal[have[cal]], test[have[test]]
        entry: dict[str, Any] = {"n_missing": int((~have).sum()), "missing_rate": float((~have).mean()),
                                 "n_test": int(len(t_idx))}
        if len(t_idx) < 2:
            entry["error"] = "too few test items with this signal"
            table[name] = entry
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry["raw"] = metrics_with_ci(conf[name][t_idx], correct[t_idx], n_bins, n_bootstrap, seed)
            try:
                cobj = Calibration.fit([samples[i] for i in c_idx], name, recal, **fit_kw)
                entry["calibrated"] = metrics_with_ci(cobj.confidences([samples[i] for i in t_idx]),
                                                       correct[t_idx], n_bins, n_bootstrap, seed)
                entry["calibrator"] = cobj.state.to_dict()
            except ValueError as err:  # one class, too few items
                entry["calibrator_error"] = str(err)
        table[name] = entry
    return table


def _cost(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Mean cost per item of each signal family (seconds, forward passes, generated tokens)."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        for fam, c in (s.cost or {}).items():
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
    """A markdown table of a free-form run: each signal's AUROC and ECE, raw and recalibrated, and its missing count."""
    rows = ["| signal | AUROC | ECE raw | ECE recalibrated | Brier recalibrated | missing |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, e in (results.get("signals") or {}).items():
        if "raw" not in e:
            rows.append(f"| {name} | n/a | n/a | n/a | n/a | {e['n_missing']} |")
            continue
        cal = e.get("calibrated", {})
        rows.append(f"| {name} | {_num(e['raw']['auroc'])} | {_num(e['raw']['ece'])} | "
                    f"{_num(cal.get('ece'))} | {_num(cal.get('brier'))} | {e['n_missing']} |")
    return "\n".join(rows)


def _num(x: Any) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
