"""The evaluation protocol: in-task, across tasks (the shift matrix), and the learning curve.

* **In-task**: fit on the calibration part of a run folder (the seeded per-task
  split of ``core/split.split_indices``, the same one ``llmcal
  calibrate`` uses), report on its test part.
* **Across tasks** (the brief's "overfitting calibration" pitfall): the runs
  are pooled and split per task; for every (source, target) pair a pipeline
  fitted on the source's calibration part is scored on the target's test part
  (diagonal = in-task), and a leave-one-task-out row fits on every other
  task's calibration part.  Each cell has AUROC, ECE, Brier, overconfidence
  (mean confidence minus accuracy) with bootstrap intervals, and the relative
  reductions of ECE and of |overconfidence| against the raw internal
  ``option_prob``, with paired bootstrap intervals (the same resamples for
  both confidences).
* **Learning curve**: the metrics at 50, 100, 250, 500 and 1,000 calibration
  items (subsampled, repeated with different seeds), in-task on the pooled
  tasks and leave-one-task-out.

Confidences compared (the names used in every table):

=========================  ===========================================================
``internal``               raw ``option_prob`` (the internal signal, uncalibrated)
``option_prob_norm`` ...   the other raw internal signals
``internal+temperature``   temperature scaling of the option log-likelihoods (Guo et al. 2017)
``internal+<cal>``         the combiner's calibrator on ``option_prob`` alone (a
                           :class:`~llmcal.calibrators.calibration.Calibration`, like the
                           temperature baseline, so both are computed as evaluate computes them)
``external``               the probe's P(right) (hidden states + cheap features)
``combined``               stacker over the internal signals and the probe, then the calibrator
=========================  ===========================================================
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from llmcal import metrics as M
from llmcal.calibrators.calibration import LOGIT_SIGNAL, Calibration
from llmcal.core.split import split_indices
from llmcal.probe.artifact import ProbeArtifact
from llmcal.probe.combine import fit_probe_and_combiner
from llmcal.probe.features import SIGNALS, RunFeatures, concat_features, design_matrix
from llmcal.probe.models import DEFAULT_COMPONENTS, make_probe
from llmcal.probe.shift import ShiftScorer

REFERENCE = "internal"
RAW_SIGNALS = {"internal": "option_prob", **{s: s for s in SIGNALS if s != "option_prob"}}
CI_METRICS = ("auroc", "ece", "brier")
KEEP_METRICS = ("n", "accuracy", "mean_confidence", "overconfidence", "ece", "brier", "nll", "auroc")
LEARNING_SIZES = (50, 100, 250, 500, 1000)


@dataclass
class ProbeSettings:
    """How a probe and its combination are fitted."""

    probe: str = "logistic"                  # logistic | mlp
    layers: list[int] | None = None          # non-negative hidden-state indices; None = all kept
    use_cheap: bool = True                   # cheap input/output features beside the hidden block
    positions: list[str] | None = None       # token positions read at each layer; None = default_positions
    n_components: int | None = DEFAULT_COMPONENTS
    calibrator: str = "platt"                # after the stacker (llmcal.calibrators name)
    stack_signals: list[str] = field(default_factory=lambda: list(SIGNALS))  # internal signals the stacker reads
    n_folds: int = 5
    seed: int = 0
    # issue #15: the source tasks of a pooled calibration part are the CV folds of the probe and the
    # stacker (leave-one-task-out), and the stacker reads the number of options
    group_by_task: bool = True
    chance_feature: bool = True
    shift_method: str | None = "mahalanobis"  # the per-answer shift score fitted beside the probe (None: none)
    extra_probes: list[str] = field(default_factory=list)  # also report external_<kind>/combined_<kind>

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ fit / predict
@dataclass
class Fitted:
    artifact: ProbeArtifact
    extras: dict[str, ProbeArtifact]
    baselines: dict[str, Calibration]  # name -> fitted calibration of option_prob
    errors: dict[str, str]
    seconds: float
    n_cal: int


def default_positions(kept: list[str]) -> list[str]:
    """The answer-mean state when the run kept it, else the last prompt token.

    Measured on the embedded model (docs/benchmarks.md, "Answer-token states"): the
    answer mean alone gives the best `combined` AUROC in-task and under shift, the last
    prompt token adds nothing on top of it (and both together spread the PCA budget).
    """
    return ["answer_mean"] if "answer_mean" in kept else ["last_prompt"]


def _fit_artifact(rf: RunFeatures, s: ProbeSettings, kind: str) -> ProbeArtifact:
    layers = list(rf.model.layers) if s.layers is None else [int(x) for x in s.layers]
    positions = default_positions(rf.positions) if s.positions is None else list(s.positions)
    X = design_matrix(rf, layers, s.use_cheap, positions)  # (n, P * L * hidden + n_cheap)
    probe = make_probe(kind, n_hidden=len(positions) * len(layers) * rf.model.hidden_size,
                       n_components=s.n_components,
                       n_folds=s.n_folds, seed=s.seed)
    groups = rf.tasks if s.group_by_task and len(set(rf.tasks.tolist())) >= 2 else None
    probe, comb, oof = fit_probe_and_combiner(probe, X, rf.signals, rf.correct, s.calibrator, s.n_folds, s.seed,
                                              stack=s.stack_signals,
                                              n_options=rf.n_options if s.chance_feature else None, groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # AUROC of each single signal on the calibration part (the probe's: out of fold), to pick
        # "the best single signal" without looking at the test part
        cal_auroc = {name: float(M.auroc(rf.signals[sig], rf.correct)) for name, sig in RAW_SIGNALS.items()}
        cal_auroc["external"] = float(M.auroc(1.0 / (1.0 + np.exp(-oof)), rf.correct))
    shift, shift_error = None, None
    if rf.hidden is not None and s.shift_method:
        try:
            shift = ShiftScorer.fit(rf, method=s.shift_method, seed=s.seed)
        except ValueError as err:  # too few items of a task, no usable hidden block: said, not hidden
            shift_error = str(err)
    return ProbeArtifact(model=rf.model, layers=layers, use_cheap=s.use_cheap, probe=probe, combiner=comb,
                         positions=positions, shift=shift,
                         info={"n_cal": len(rf), "tasks": sorted(set(rf.tasks.tolist())),
                               "accuracy_cal": float(rf.correct.mean()), "settings": s.to_dict(),
                               "cal_auroc": cal_auroc, **({"shift_error": shift_error} if shift_error else {})})


def fit_all(rf_cal: RunFeatures, s: ProbeSettings) -> Fitted:
    """Fit the probe + combination and the internal baselines on ``rf_cal`` (the calibration part).

    The baselines are temperature scaling and the combiner's calibrator, each on ``option_prob``
    (one entry when they are the same calibrator).
    """
    t0 = time.perf_counter()
    art = _fit_artifact(rf_cal, s, s.probe)
    extras = {k: _fit_artifact(rf_cal, s, k) for k in s.extra_probes if k != s.probe}
    baselines: dict[str, Calibration] = {}
    errors: dict[str, str] = {}
    logits = rf_cal.option_logit_matrix()  # (n, k_max), -inf padded
    for cname in dict.fromkeys(("temperature", s.calibrator)):
        try:
            baselines[f"internal+{cname}"] = Calibration.fit_arrays(
                LOGIT_SIGNAL, cname, rf_cal.correct, values=rf_cal.signals[LOGIT_SIGNAL], logits=logits,
                labels=rf_cal.references, n=len(rf_cal), tasks=sorted(set(rf_cal.tasks.tolist())))
        except ValueError as err:
            errors[f"internal+{cname}"] = str(err)
    return Fitted(art, extras, baselines, errors, time.perf_counter() - t0, len(rf_cal))


def predict_all(f: Fitted, rf: RunFeatures) -> dict[str, np.ndarray]:
    """Every compared confidence on ``rf``'s items, name -> (n,)."""
    out: dict[str, np.ndarray] = {name: rf.signals[sig] for name, sig in RAW_SIGNALS.items()}
    logits = rf.option_logit_matrix() if f.baselines else None  # (n, k_max): any number of options
    for name, cal in f.baselines.items():
        out[name] = cal.predict(values=rf.signals[cal.signal], logits=logits)
    out.update(f.artifact.predict(rf))
    for kind, art in f.extras.items():
        for k, v in art.predict(rf).items():
            out[f"{k}_{kind}"] = v
    return out


# ------------------------------------------------------------------ metrics
def _rel_reduction(ref: np.ndarray, new: np.ndarray) -> np.ndarray:
    """1 - new / ref, elementwise, nan where ref is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ref > 0, 1.0 - new / ref, np.nan)


def _interval(dist: np.ndarray, alpha: float = 0.05) -> list[float | None]:
    d = dist[np.isfinite(dist)]
    if not d.size:
        return [None, None]
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def compare(confs: dict[str, np.ndarray], correct: np.ndarray, n_boot: int = 1000, seed: int = 0,
            n_bins: int = 15, reference: str = REFERENCE) -> dict[str, Any]:
    """Metrics of every confidence on one sample, with bootstrap intervals and reductions vs ``reference``.

    ``confs``: name -> (n,) in [0, 1]; ``correct`` (n,) 0/1.  Returns ``{"methods": {name: {metric: value,
    "ci95": {metric: [lo, hi]}, "vs_internal": {...}}}, "best_single": ..., ...}``.
    """
    y = np.asarray(correct, dtype=np.float64)
    two_classes = 0 < y.sum() < len(y)
    out: dict[str, Any] = {}
    ref_ece = ref_oc = None
    if reference in confs and n_boot > 0:
        ref_ece = M.bootstrap_distribution("ece", confs[reference], y, n_boot, seed, n_bins)
        ref_oc = np.abs(M.bootstrap_distribution("overconfidence", confs[reference], y, n_boot, seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class AUROC: nan, reported as such
        ref_sum = M.summarize(confs[reference], y, n_bins) if reference in confs else None
        for name, c in confs.items():
            c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
            s = M.summarize(c, y, n_bins)
            row: dict[str, Any] = {k: s[k] for k in KEEP_METRICS}
            ci: dict[str, Any] = {}
            if n_boot > 0:
                for m in CI_METRICS:
                    if m == "auroc" and not two_classes:
                        continue
                    _, lo, hi = M.bootstrap_ci(m, c, y, n_resamples=n_boot, seed=seed, n_bins=n_bins)
                    ci[m] = [lo, hi]
            row["ci95"] = ci
            if ref_sum is not None and name != reference:
                vs: dict[str, Any] = {
                    "ece_reduction": float(_rel_reduction(np.array(ref_sum["ece"]), np.array(s["ece"]))),
                    "overconfidence_reduction": float(_rel_reduction(np.array(abs(ref_sum["overconfidence"])),
                                                                     np.array(abs(s["overconfidence"])))),
                }
                if ref_ece is not None:
                    e = M.bootstrap_distribution("ece", c, y, n_boot, seed, n_bins)
                    o = np.abs(M.bootstrap_distribution("overconfidence", c, y, n_boot, seed))
                    vs["ece_reduction_ci95"] = _interval(_rel_reduction(ref_ece, e))
                    vs["overconfidence_reduction_ci95"] = _interval(_rel_reduction(ref_oc, o))
                row["vs_internal"] = vs
            out[name] = row
    singles = [n for n in out if n in RAW_SIGNALS or n == "external" or n.startswith("external_")]
    aurocs = {n: out[n]["auroc"] for n in singles if out[n]["auroc"] == out[n]["auroc"]}
    best = max(aurocs, key=aurocs.get) if aurocs else None
    res: dict[str, Any] = {"methods": out, "best_single": best,
                           "best_single_auroc": aurocs.get(best) if best else None}
    if "combined" in out and best:
        res["combined_beats_best_single_auroc"] = bool(out["combined"]["auroc"] > aurocs[best])
    return res


# ------------------------------------------------------------------ protocols
def split(rf: RunFeatures, cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return split_indices(list(rf.tasks), cal_fraction, seed)


def in_task(rf: RunFeatures, s: ProbeSettings, cal_fraction: float = 0.5, split_seed: int = 0,
            n_boot: int = 1000) -> tuple[dict[str, Any], Fitted]:
    """Fit on the calibration part, report on the test part.  Returns (results, fitted)."""
    cal, test = split(rf, cal_fraction, split_seed)
    f = fit_all(rf.subset(cal), s)
    t = rf.subset(test)
    res = compare(predict_all(f, t), t.correct, n_boot, split_seed)
    res.update({
        "split": {"cal_fraction": cal_fraction, "seed": split_seed, "n_cal": int(len(cal)), "n_test": int(len(test))},
        "fit_seconds": f.seconds,
        "baseline_errors": f.errors,
        "probe_cv": f.artifact.probe.cv_,
        "combined_weights": f.artifact.combiner.weights() if f.artifact.combiner else None,
        "per_task": {},
    })
    if f.artifact.shift is not None:  # the share of the test questions unlike the calibration part
        res["shift"] = f.artifact.shift.summary(t)
    for task in sorted(set(t.tasks.tolist())):
        idx = np.flatnonzero(t.tasks == task)
        sub = t.subset(idx)
        res["per_task"][task] = compare(predict_all(f, sub), sub.correct, 0, split_seed)["methods"]
    return res, f


def _cell_summary(res: dict[str, Any], f: Fitted) -> dict[str, Any]:
    m = res["methods"]
    cal_auroc = f.artifact.info.get("cal_auroc") or {}
    chosen = max(cal_auroc, key=cal_auroc.get) if cal_auroc else None
    cell = {
        "source_accuracy": f.artifact.info.get("accuracy_cal"),
        "target_accuracy": m[REFERENCE]["accuracy"],
        # the best single signal on the test part itself (an oracle choice: the strict bar) ...
        "best_single": res["best_single"],
        "best_single_auroc": res["best_single_auroc"],
        "combined_beats_best_single_auroc": res.get("combined_beats_best_single_auroc"),
        # ... and the one a user would pick: best on the source's calibration part
        "source_best_single": chosen,
        "source_best_single_auroc": m[chosen]["auroc"] if chosen in m else None,
        "combined_beats_source_best_single_auroc": (bool(m["combined"]["auroc"] > m[chosen]["auroc"])
                                                    if chosen in m and "combined" in m else None),
        "methods": m,
    }
    return cell


def shift_matrix(runs: Sequence[RunFeatures], s: ProbeSettings, cal_fraction: float = 0.5, split_seed: int = 0,
                 n_boot: int = 1000, loto: bool = True, progress=None) -> dict[str, Any]:
    """The task-shift matrix over pooled runs of one model (see the module docstring)."""
    pool = concat_features(list(runs))
    cal, test = split(pool, cal_fraction, split_seed)
    tasks = sorted(set(pool.tasks.tolist()))
    if len(tasks) < 2:
        raise ValueError(f"the shift matrix needs at least two tasks, got {tasks}")
    cal_t = {t: cal[pool.tasks[cal] == t] for t in tasks}
    test_t = {t: test[pool.tasks[test] == t] for t in tasks}
    targets = {t: pool.subset(test_t[t]) for t in tasks}
    say = progress or (lambda msg: None)
    cells: dict[str, dict[str, Any]] = {}
    fit_seconds = []
    sources: list[tuple[str, np.ndarray]] = [(t, cal_t[t]) for t in tasks]
    if loto:
        sources += [(f"all but {t}", np.sort(np.concatenate([cal_t[u] for u in tasks if u != t]))) for t in tasks]
    for src, idx in sources:
        say(f"fitting on {src} ({len(idx)} items)")
        rf_src = pool.subset(idx)
        f = fit_all(rf_src, s)
        fit_seconds.append(f.seconds)
        row = {}
        for tgt in tasks:
            if src.startswith("all but ") and src != f"all but {tgt}":
                continue
            res = compare(predict_all(f, targets[tgt]), targets[tgt].correct, n_boot, split_seed)
            row[tgt] = _cell_summary(res, f)
            if f.errors:
                row[tgt]["baseline_errors"] = f.errors
        cells[src] = row
    return {
        "tasks": tasks,
        "settings": s.to_dict(),
        "split": {"cal_fraction": cal_fraction, "seed": split_seed,
                  "n_cal": {t: int(len(cal_t[t])) for t in tasks}, "n_test": {t: int(len(test_t[t])) for t in tasks}},
        "cells": cells,
        "summary": summarize_matrix(cells, tasks),
        "mean_fit_seconds": float(np.mean(fit_seconds)),
    }


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return float(np.mean(xs)) if xs else None


def summarize_matrix(cells: dict[str, dict[str, Any]], tasks: Sequence[str],
                     target_ece: float = 0.40) -> dict[str, Any]:
    """Averages over the off-diagonal (shift) cells, the leave-one-out cells and the diagonal."""
    groups: dict[str, list[dict[str, Any]]] = {"pairwise_shift": [], "leave_one_task_out": [], "in_task": []}
    labels: dict[str, list[str]] = {k: [] for k in groups}
    for src, row in cells.items():
        for tgt, cell in row.items():
            g = "leave_one_task_out" if src.startswith("all but ") else "in_task" if src == tgt else "pairwise_shift"
            groups[g].append(cell)
            labels[g].append(f"{src} -> {tgt}")
    out: dict[str, Any] = {}
    for g, cs in groups.items():
        if not cs:
            continue
        methods = list(dict.fromkeys(m for c in cs for m in c["methods"]))  # a baseline may fail in some cells
        mean = {m: {k: _mean([c["methods"][m][k] for c in cs if m in c["methods"]])
                    for k in ("auroc", "ece", "brier", "overconfidence")}
                for m in methods}
        for m in methods:
            mean[m]["n_cells"] = sum(m in c["methods"] for c in cs)
        red = {m: {k: _mean([c["methods"][m].get("vs_internal", {}).get(k) for c in cs if m in c["methods"]])
                   for k in ("ece_reduction", "overconfidence_reduction")}
               for m in methods if m != REFERENCE}
        beats = [bool(c.get("combined_beats_best_single_auroc")) for c in cs]
        beats_src = [bool(c.get("combined_beats_source_best_single_auroc")) for c in cs]
        fails = []
        for lab, c in zip(labels[g], cs):
            comb = c["methods"].get("combined")
            if comb is None:
                continue
            r = comb["vs_internal"]["ece_reduction"]
            why = []
            if not c.get("combined_beats_best_single_auroc"):
                why.append(f"AUROC {comb['auroc']:.3f} <= best single ({c['best_single']}) "
                           f"{c['best_single_auroc']:.3f}")
            if r is None or r < target_ece:
                why.append(f"ECE reduction {r:.0%}" if r is not None else "ECE reduction undefined")
            if why:
                fails.append({"cell": lab, "why": "; ".join(why), "source_accuracy": c["source_accuracy"],
                              "target_accuracy": c["target_accuracy"],
                              "combined_mean_confidence": comb["mean_confidence"],
                              "internal_ece": c["methods"][REFERENCE]["ece"], "combined_ece": comb["ece"]})
        out[g] = {
            "n_cells": len(cs),
            "mean": mean,
            "mean_reduction_vs_internal": red,
            "combined_beats_best_single_auroc": f"{sum(beats)}/{len(beats)}",
            "mean_best_single_auroc": _mean([c["best_single_auroc"] for c in cs]),
            "combined_beats_source_best_single_auroc": f"{sum(beats_src)}/{len(beats_src)}",
            "mean_source_best_single_auroc": _mean([c.get("source_best_single_auroc") for c in cs]),
            "cells_failing": fails,
        }
    return out


def learning_curve(runs: Sequence[RunFeatures], s: ProbeSettings, sizes: Sequence[int] = LEARNING_SIZES,
                   repeats: int = 3, cal_fraction: float = 0.5, split_seed: int = 0, loto: bool = True,
                   methods: Sequence[str] | None = None, progress=None) -> dict[str, Any]:
    """Metrics against the number of calibration items (mean and s.d. over ``repeats`` subsamples).

    ``in_task``: subsamples of the pooled calibration part, scored on the pooled test part.
    ``leave_one_task_out``: for each task, subsamples of the other tasks' calibration parts,
    scored on that task's test part; the curve is the mean over tasks.
    """
    if methods is None:
        methods = ("internal", "internal+temperature", f"internal+{s.calibrator}", "external", "combined")
    pool = concat_features(list(runs))
    cal, test = split(pool, cal_fraction, split_seed)
    tasks = sorted(set(pool.tasks.tolist()))
    say = progress or (lambda msg: None)
    settings: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = [("in_task", cal, {"pooled": test})]
    if loto and len(tasks) > 1:
        for t in tasks:
            settings.append((f"loto:{t}", cal[pool.tasks[cal] != t], {t: test[pool.tasks[test] == t]}))
    raw: dict[str, dict[int, list[dict[str, dict[str, float]]]]] = {}
    for name, cal_idx, targets in settings:
        say(f"learning curve {name}")
        for n in sizes:
            if n > len(cal_idx):
                continue
            for r in range(repeats):
                rng = np.random.default_rng(1000 * r + n)
                sub = np.sort(rng.choice(cal_idx, size=n, replace=False))
                rf_sub = pool.subset(sub)
                if not 2 <= rf_sub.correct.sum() <= n - 2:
                    continue
                try:
                    f = fit_all(rf_sub, s)
                except ValueError as err:
                    warnings.warn(f"learning curve {name} n={n} repeat {r}: {err}", stacklevel=2)
                    continue
                for tname, tidx in targets.items():
                    t = pool.subset(tidx)
                    res = compare(predict_all(f, t), t.correct, 0)["methods"]
                    raw.setdefault(name, {}).setdefault(n, []).append(
                        {m: {k: res[m][k] for k in ("auroc", "ece", "brier", "overconfidence")}
                         for m in methods if m in res})
    curves: dict[str, Any] = {}
    for name, by_n in raw.items():
        curves[name] = {str(n): _agg(rows) for n, rows in by_n.items()}
    out: dict[str, Any] = {"sizes": list(sizes), "repeats": repeats, "in_task": curves.get("in_task", {})}
    loto_names = [k for k in curves if k.startswith("loto:")]
    if loto_names:
        mean_curve: dict[str, Any] = {}
        for n in sizes:
            rows = [curves[k][str(n)] for k in loto_names if str(n) in curves[k]]
            if not rows:
                continue
            mean_curve[str(n)] = {m: {k: _mean([r[m][k]["mean"] for r in rows if m in r])
                                      for k in ("auroc", "ece", "brier", "overconfidence")}
                                  for m in dict.fromkeys(m for r in rows for m in r)}
        out["leave_one_task_out"] = mean_curve
        out["leave_one_task_out_per_task"] = {k[5:]: curves[k] for k in loto_names}
    return out


def _agg(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, Any] = {}
    for m in dict.fromkeys(m for r in rows for m in r):
        out[m] = {}
        for k in ("auroc", "ece", "brier", "overconfidence"):
            v = np.array([r[m][k] for r in rows if m in r], dtype=np.float64)
            v = v[np.isfinite(v)]
            out[m][k] = {"mean": float(v.mean()) if v.size else None, "sd": float(v.std()) if v.size else None}
    return out
