"""Calibration that travels (issue #15): the leave-one-task-out transfer matrix.

    llmcal measure --tasks arc_easy --limit 400 --output_path /tmp/shift_runs/arc_easy    # one run a task
    ...
    python benchmarks/transfer.py /tmp/shift_runs/{builtin,arc_easy,...} --out /tmp/transfer_bench

For every run (one task each, one model) as the *target*, every calibration is fitted on the
*pool* of the other runs' calibration parts (each run's own seeded per-task split,
``core/split.split_indices``) and applied unchanged to the target's test part -- exactly what
``llmcal calibrate TARGET --from POOL_RUN`` does (the work is :func:`llmcal.pipeline.transfer.evaluate_transfer`).
Compared, on ECE (15 bins) and AUROC:

* raw ``option_prob``, raw ``option_prob_norm``;
* ``temperature`` (on the option log-likelihoods), ``temperature_norm`` (temperature on
  ``option_prob_norm``), ``platt`` (on ``option_prob``), ``platt_chance`` (Platt floored at chance,
  1/k of each answer's options, on ``option_prob_norm``; :mod:`llmcal.calibrators.chance_platt`);
* ``combined``: the probe and stacker of :mod:`llmcal.probe` fitted on the pool (needs hidden states);
* ``constant``: the pool's accuracy given to every answer;
* ``<calibration>+atc`` / ``+doc`` / ``+atc_prior``: the calibration rescaled to the target's accuracy
  estimated from its unlabeled calibration part (``--adapt unlabeled``); ``...~0.25``: the same, each
  confidence then pulled toward the estimate by ``unlabeled.shrink_toward`` (factor ``CONFIDENCE_SHRINK``);
* ``oracle:temperature`` / ``oracle:temperature~0.25``: temperature rescaled to the target's *true* test
  accuracy (a bound no label-free method reaches, not a method; left out of the targets).

Prints the matrix, the means, the cells worse than the constant, and the issue's targets; writes
``transfer.json`` and ``transfer.md`` under ``--out``.  Exit status 0 whatever they say.

``--nested``: the honest number for the two defaults of ``--adapt unlabeled`` (ATC's weight in
``atc_prior`` and the shrink factor), which the matrix above reports at values chosen on these very
targets.  For each target, every (weight, shrink) of a small grid is scored by an *inner*
leave-one-task-out over the other tasks alone (each inner target in turn, fitted on the remaining
ones); the pair with the lowest inner mean ECE is then applied to the outer target.  Printed per
calibration (``temperature``, ``platt``), with the pair each target chose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATIONS = (("temperature", "option_prob", "temperature"),
                ("temperature_norm", "option_prob_norm", "temperature"),
                ("platt", "option_prob", "platt"),
                ("platt_chance", "option_prob_norm", "platt_chance"))
RAW = ("option_prob", "option_prob_norm")
SINGLE = ("option_prob", "option_prob_norm", "margin", "entropy")
#: The label-free accuracy estimators compared (``--estimator``); the product's default is the one with the
#: lowest mean ECE over the leave-one-task-out cells.
ADAPT_ESTIMATORS = ("atc", "doc", "atc@option_prob_norm", "doc@option_prob_norm", "atc_prior@option_prob_norm")


def load(paths: list[str]):
    from llmcal.records.run_dir import RunDir

    runs = {}
    for p in paths:
        samples = RunDir(p).read_samples()
        task = samples[0].task
        runs[task] = {"path": p, "samples": samples}
    return runs


def fit_pool(pool: list, calibrations=CALIBRATIONS) -> tuple[dict[str, Any], dict[str, str]]:
    from llmcal.calibrators.calibration import Calibration

    cals, errors = {}, {}
    for name, signal, calibrator in calibrations:
        try:
            cals[name] = Calibration.fit(pool, signal, calibrator, seed=0)
        except ValueError as err:
            errors[name] = str(err)
    for sig in RAW:
        cals[f"raw {sig}"] = Calibration.none(sig)
    return cals, errors


def combined_on(pool_rf, target_rf, seed: int, info: dict | None = None) -> np.ndarray:
    """``combined`` fitted on ``pool_rf``, on ``target_rf``; ``info`` (if given) gets the stacker's choice
    (the anchor signal and the penalty on the other inputs, see :mod:`llmcal.probe.combine`)."""
    from llmcal.probe.protocol import ProbeSettings, fit_all

    f = fit_all(pool_rf, ProbeSettings(seed=seed))
    if info is not None:
        cv = f.artifact.combiner.cv_
        info.update({k: cv.get(k) for k in ("param", "anchor", "chosen")})
    return f.artifact.predict(target_rf)["combined"]


def ece_floor(conf: np.ndarray, n_bins: int = 15, draws: int = 200, seed: int = 0) -> float:
    """The ECE a *perfectly calibrated* confidence would still show on this many answers: the mean 15-bin
    ECE when each answer's correctness is drawn from its own confidence (y ~ Bernoulli(p)).

    Binned ECE is biased upward on a finite sample (each bin's accuracy is a binomial estimate), more so
    the more bins a confidence spreads over; a constant sits in one bin and pays least.  Reading a
    method's ECE beside its floor says how much of it is miscalibration and how much is sampling noise.
    """
    from llmcal import metrics as M

    conf = np.clip(np.asarray(conf, dtype=float), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    return float(np.mean([M.ece(conf, (rng.random(len(conf)) < conf).astype(float), n_bins) for _ in range(draws)]))


def _scored(conf: np.ndarray, y: np.ndarray, const: dict, seed: int) -> dict[str, Any]:
    """One method's row: ECE, AUROC, Brier (no bootstrap), whether it beats the constant, its ECE floor."""
    from llmcal.pipeline.evaluate import metrics_with_ci

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = metrics_with_ci(conf, y, 15, 0, seed)
    return {"ece": m["ece"], "auroc": m["auroc"], "brier": m["brier"],
            "beats_constant_ece": m["ece"] < const["ece"], "beats_constant_brier": m["brier"] < const["brier"],
            "ece_floor": ece_floor(conf, seed=seed)}


def cell(runs: dict, target: str, cal_fraction: float, seed: int, probe: bool) -> dict[str, Any]:
    from llmcal.core.split import split_indices
    from llmcal.calibrators.unlabeled import CONFIDENCE_SHRINK, shrink_toward
    from llmcal.pipeline.transfer import adapt_calibration, evaluate_transfer, parse_estimator

    splits = {t: split_indices([s.task for s in r["samples"]], cal_fraction, seed) for t, r in runs.items()}
    pool = [r["samples"][i] for t, r in runs.items() if t != target for i in splits[t][0]]
    tgt = runs[target]["samples"]
    cal_idx, test_idx = splits[target]
    cals, errors = fit_pool(pool)
    extra, stacker = {}, {}
    if probe:
        from llmcal.probe.features import concat_features, load_run_features

        rfs = {t: r.setdefault("rf", load_run_features(r["path"], compute_fingerprint=False)) for t, r in runs.items()}
        pool_rf = concat_features([rfs[t].subset(splits[t][0]) for t in runs if t != target])
        extra["combined"] = combined_on(pool_rf, rfs[target].subset(test_idx), seed, stacker)
    res = evaluate_transfer(cals, pool, tgt, cal_idx, test_idx, adapt=None, extra=extra, in_task=False,
                            n_bootstrap=0, seed=seed)
    const = res["constant"]
    test = [tgt[i] for i in test_idx]
    rows = {"constant": {"ece": const["ece"], "auroc": const["auroc"], "brier": const["brier"],
                         "ece_floor": ece_floor(np.full(len(test), float(const["confidence"])), seed=seed)}}
    for name, r in res["transferred"].items():
        rows[name] = {k: r[k] for k in ("ece", "auroc", "brier", "beats_constant_ece", "beats_constant_brier")}
        conf = extra[name] if name in extra else cals[name].confidences(test) if name in cals else None
        if conf is not None:
            rows[name]["ece_floor"] = ece_floor(conf, seed=seed)
    y = np.array([s.correct for s in test], dtype=float)
    unlabeled = [tgt[i] for i in cal_idx]
    for est in ADAPT_ESTIMATORS:
        try:
            est_name, gauge = parse_estimator(est, pool)
        except ValueError as err:
            errors[est] = str(err)
            continue
        for name in ("temperature", "temperature_norm", "platt"):
            if name not in cals:
                continue
            a = adapt_calibration(cals[name], pool, unlabeled, est_name, reference=gauge)
            conf = a.confidences(test)
            est_acc = float(a.info["estimated_accuracy"])
            for suffix, c in (("", conf), (f"~{CONFIDENCE_SHRINK:g}", shrink_toward(conf, est_acc))):
                rows[f"{name}+{est}{suffix}"] = {**_scored(c, y, const, seed), "estimated_accuracy": est_acc}
    if "temperature" in cals:  # the bound: temperature rescaled to the true test accuracy (reads labels)
        from llmcal.calibrators.unlabeled import T_BOUNDS, solve_monotone
        from llmcal.pipeline.transfer import _with_temperature

        lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
        lt = solve_monotone(lambda l: float(_with_temperature(cals["temperature"], np.exp(l)).confidences(test).mean()),
                            lo, hi, float(y.mean()), increasing=False, steps=50)
        oc = _with_temperature(cals["temperature"], float(np.exp(lt))).confidences(test)
        for suffix, c in (("", oc), (f"~{CONFIDENCE_SHRINK:g}", shrink_toward(oc, float(y.mean())))):
            rows[f"oracle:temperature{suffix}"] = _scored(c, y, const, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from llmcal import metrics as M

        single = {s: float(M.auroc(np.array([t.signals[s] for t in test]), y)) for s in SINGLE}
    return {"rows": rows, "errors": errors, "single_auroc": single, "accuracy": float(y.mean()), "stacker": stacker,
            "pool_accuracy": const["confidence"], "n_test": len(test_idx), "n_pool": len(pool)}


NESTED_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
NESTED_SHRINKS = (0.25, 0.5, 0.75, 1.0)


def adapted_grid(runs: dict, splits: dict, sources: list[str], target: str,
                 names=("temperature", "platt")) -> dict[tuple, float]:
    """ECE on ``target``'s test part of each (calibration, ATC weight, shrink), fitted on ``sources``' calibration
    parts, the target's calibration part read without labels; plus ("constant",) for the pool's accuracy."""
    from llmcal import metrics as M
    from llmcal.calibrators.calibration import Calibration
    from llmcal.calibrators.unlabeled import (T_BOUNDS, apply_logit_shift, atc_estimate, logit_shift_for_mean,
                                              shrink_toward, solve_monotone)
    from llmcal.pipeline.transfer import _with_temperature

    pool = [runs[t]["samples"][i] for t in sources for i in splits[t][0]]
    unl = [runs[target]["samples"][i] for i in splits[target][0]]
    test = [runs[target]["samples"][i] for i in splits[target][1]]
    y_src = np.array([s.correct for s in pool], dtype=float)
    y = np.array([s.correct for s in test], dtype=float)
    cals, _ = fit_pool(pool, tuple(c for c in CALIBRATIONS if c[0] in names))
    gauge = Calibration.fit(pool, "option_prob_norm", "platt")
    atc = atc_estimate(gauge.confidences(pool), y_src, gauge.confidences(unl))
    out = {("constant",): float(M.ece(np.full(len(y), y_src.mean()), y, 15))}
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    for w in NESTED_WEIGHTS:
        est = float(w * atc + (1 - w) * y_src.mean())
        for name in names:
            if name not in cals:
                continue
            cal = cals[name]
            if name == "temperature":
                lt = solve_monotone(lambda l: float(_with_temperature(cal, np.exp(l)).confidences(unl).mean()),
                                    lo, hi, est, increasing=False, steps=50)
                conf = _with_temperature(cal, float(np.exp(lt))).confidences(test)
            else:
                conf = apply_logit_shift(cal.confidences(test), logit_shift_for_mean(cal.confidences(unl), est))
            for a in NESTED_SHRINKS:
                out[(name, w, a)] = float(M.ece(shrink_toward(conf, est, a), y, 15))
    return out


def nested(runs: dict, cal_fraction: float, seed: int) -> dict[str, Any]:
    """Nested leave-one-task-out for (ATC weight, shrink) per calibration; see the module docstring."""
    from llmcal.core.split import split_indices

    splits = {t: split_indices([s.task for s in r["samples"]], cal_fraction, seed) for t, r in runs.items()}
    tasks = list(runs)
    res: dict[str, Any] = {}
    for t in tasks:
        srcs = [u for u in tasks if u != t]
        inner = {u: adapted_grid(runs, splits, [v for v in srcs if v != u], u) for u in srcs}
        outer = adapted_grid(runs, splits, srcs, t)
        for name in ("temperature", "platt"):
            keys = [k for k in outer if k[0] == name]
            if not keys:
                continue
            mean_inner = {k: float(np.mean([inner[u][k] for u in srcs if k in inner[u]])) for k in keys}
            pick = min(keys, key=lambda k: mean_inner[k])
            res.setdefault(name, {})[t] = {"weight": pick[1], "shrink": pick[2], "inner_mean_ece": mean_inner[pick],
                                           "ece": outer[pick], "constant_ece": outer[("constant",)],
                                           "beats_constant_ece": outer[pick] < outer[("constant",)]}
        print(f"nested: {t} done", file=sys.stderr, flush=True)
    return res


def summarize(cells: dict[str, dict]) -> dict[str, Any]:
    methods = list(next(iter(cells.values()))["rows"])
    for c in cells.values():
        methods += [m for m in c["rows"] if m not in methods]
    out: dict[str, Any] = {"mean_ece": {}, "mean_auroc": {}, "worse_than_constant_ece": {}, "n_cells": {},
                           "mean_ece_floor": {}}
    for m in methods:
        vals = [c["rows"][m] for c in cells.values() if m in c["rows"]]
        out["n_cells"][m] = len(vals)
        out["mean_ece"][m] = float(np.mean([v["ece"] for v in vals]))
        floors = [v["ece_floor"] for v in vals if v.get("ece_floor") is not None]
        out["mean_ece_floor"][m] = float(np.mean(floors)) if len(floors) == len(vals) else None
        out["mean_auroc"][m] = float(np.nanmean([np.nan if v["auroc"] is None else v["auroc"] for v in vals]))
        if m != "constant":
            out["worse_than_constant_ece"][m] = sorted(t for t, c in cells.items()
                                                       if m in c["rows"] and not c["rows"][m]["beats_constant_ece"])
    single = {s: float(np.mean([c["single_auroc"][s] for c in cells.values()])) for s in SINGLE}
    out["mean_single_auroc"] = single
    transferred = [m for m in methods if m not in ("constant",) and "+" not in m and not m.startswith("oracle:")]
    best = min(transferred, key=lambda m: out["mean_ece"][m])
    adapted = [m for m in methods if "+" in m]
    best_adapted = min(adapted, key=lambda m: out["mean_ece"][m]) if adapted else None
    out["targets"] = {
        "best_transferred": best, "best_transferred_mean_ece": out["mean_ece"][best],
        "best_transferred_mean_ece_le_0.08": out["mean_ece"][best] <= 0.08,
        "best_transferred_cells_worse_than_constant": len(out["worse_than_constant_ece"][best]),
        "best_single_signal": max(single, key=single.get), "best_single_mean_auroc": max(single.values()),
        "combined_mean_auroc": out["mean_auroc"].get("combined"),
        "combined_auroc_ge_best_single": (out["mean_auroc"].get("combined") or 0) >= max(single.values()),
        "best_adapted": best_adapted,
        "best_adapted_mean_ece": out["mean_ece"].get(best_adapted) if best_adapted else None,
        "best_adapted_mean_ece_le_0.06": (out["mean_ece"][best_adapted] <= 0.06) if best_adapted else None,
    }
    return out


def compact_methods(summary: dict[str, Any], n_adapted: int = 2) -> list[str]:
    """The matrix's columns: every unadapted method, then the ``n_adapted`` adapted ones with the lowest mean ECE."""
    plain = [m for m in summary["mean_ece"] if "+" not in m and not m.startswith("oracle:")]
    adapted = sorted((m for m in summary["mean_ece"] if "+" in m), key=lambda m: summary["mean_ece"][m])
    return plain + adapted[:n_adapted]


def means_table(summary: dict[str, Any]) -> str:
    """Every method's mean ECE and AUROC over the targets, and its cells worse than the constant (ECE)."""
    rows = ["| method | mean ECE | its floor if calibrated | mean AUROC | cells worse than constant (ECE) |",
            "|---|---:|---:|---:|---|"]
    for m in sorted(summary["mean_ece"], key=lambda m: summary["mean_ece"][m]):
        worse = summary["worse_than_constant_ece"].get(m)
        floor = summary.get("mean_ece_floor", {}).get(m)
        rows.append(f"| {m} | {summary['mean_ece'][m]:.3f} | {'n/a' if floor is None else f'{floor:.3f}'} | "
                    f"{summary['mean_auroc'][m]:.3f} | "
                    + ("" if worse is None else f"{len(worse)}" + (f" ({', '.join(worse)})" if worse else "")) + " |")
    return "\n".join(rows)


def table(cells: dict[str, dict], summary: dict[str, Any], metric: str) -> str:
    methods = compact_methods(summary)
    head = "| target | acc | " + " | ".join(methods) + " |"
    rows = [head, "|---|---:|" + "---:|" * len(methods)]
    for t, c in cells.items():
        vals = []
        for m in methods:
            r = c["rows"].get(m)
            if r is None or r.get(metric) is None:
                vals.append("n/a")
                continue
            txt = f"{r[metric]:.3f}"
            if metric == "ece" and m != "constant" and not r["beats_constant_ece"]:
                txt += "*"
            vals.append(txt)
        rows.append(f"| {t} | {c['accuracy']:.2f} | " + " | ".join(vals) + " |")
    key = "mean_ece" if metric == "ece" else "mean_auroc"
    rows.append("| **mean** | | " + " | ".join(f"**{summary[key][m]:.3f}**" for m in methods) + " |")
    if metric == "ece":
        rows.append("| cells worse than constant | | " + " | ".join(
            "" if m == "constant" else str(len(summary["worse_than_constant_ece"][m])) for m in methods) + " |")
    return "\n".join(rows)


def stacker_line(cells: dict[str, dict]) -> str:
    """Per target, the anchor of ``combined``'s stacker and the penalty chosen on its other inputs ("inf":
    the anchor and the chance logit alone), or "" when no cell fitted an anchored stacker."""
    parts = [f"{t} ({c['stacker']['anchor']}, {c['stacker']['chosen']})" for t, c in cells.items()
             if (c.get("stacker") or {}).get("param") == "anchor_penalty"]
    return ("\n\n`combined`'s stacker, anchor and penalty chosen on the other tasks: " + ", ".join(parts)) if parts else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, one task each, one model")
    p.add_argument("--out", default="runs/transfer_bench")
    p.add_argument("--cal_fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_probe", action="store_true", help="skip `combined` (runs without hidden states)")
    p.add_argument("--nested", action="store_true", help="also the nested leave-one-task-out of --adapt unlabeled's "
                   "two defaults (ATC weight, shrink)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    runs = load(args.runs)
    cells = {}
    for target in runs:
        t1 = time.perf_counter()
        cells[target] = cell(runs, target, args.cal_fraction, args.seed, not args.no_probe)
        print(f"{target}: done in {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)
    summary = summarize(cells)
    try:
        load_avg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load_avg = None
    md = ("### ECE on each target's test part (fitted on the other tasks' calibration parts; * = worse than "
          "the constant)\n\n" + table(cells, summary, "ece") + "\n\n### AUROC\n\n" + table(cells, summary, "auroc")
          + "\n\nMean AUROC of the single raw signals: "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary["mean_single_auroc"].items())
          + (f" (combined {summary['mean_auroc']['combined']:.4f} against the best single "
             f"{max(summary['mean_single_auroc'].values()):.4f})" if "combined" in summary["mean_auroc"] else "")
          + stacker_line(cells)
          + "\n\n### Every method, by mean ECE\n\n" + means_table(summary) + "\n")
    nest = nested(runs, args.cal_fraction, args.seed) if args.nested else None
    if nest:
        md += ("\n### Nested leave-one-task-out: (ATC weight, shrink) chosen on the other tasks alone\n\n"
               "| calibration | mean ECE | cells worse than constant | (weight, shrink) chosen per target |\n"
               "|---|---:|---:|---|\n")
        for name, per in nest.items():
            md += (f"| {name}+atc_prior@option_prob_norm (nested) | {np.mean([v['ece'] for v in per.values()]):.3f} | "
                   f"{sum(not v['beats_constant_ece'] for v in per.values())} | "
                   + ", ".join(f"{t} ({v['weight']:g}, {v['shrink']:g})" for t, v in per.items()) + " |\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from llmcal.records.results import clean

    payload = {"runs": args.runs, "cells": cells, "summary": summary, "seconds": time.perf_counter() - t0,
               "loadavg": load_avg, "nested": nest}
    (out / "transfer.json").write_text(json.dumps(clean(payload), indent=2))
    (out / "transfer.md").write_text(md)
    print(md)
    print("Targets (issue #15):")
    for k, v in summary["targets"].items():
        print(f"  {k}: {v}")
    print(f"{time.perf_counter() - t0:.0f} s; load average {' '.join(load_avg or [])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
