"""The task-shift matrix and the learning curve of internal / external / combined confidence.

    llmcal measure --tasks arc_easy --limit 1000 --output_path /tmp/probe_runs/arc_easy   # one run a task
    ...
    python benchmarks/probe_shift.py /tmp/probe_runs/* --out /tmp/probe_shift

Same as ``llmcal probe --shift RUN_DIR...`` (the work is ``llmcal.probe.protocol``):
pools the runs (one model), splits every task into calibration / test halves
(seeded, ``split_indices``), fits on each task's calibration half and on "all
tasks but one", tests on every task's test half, and writes
``probe_shift.json`` and ``probe_shift.md`` (the tables of docs/benchmarks.md).
Then checks the issue's targets on the pairwise shift cells and the
leave-one-task-out cells and prints them; exit status 0 whatever they say
(the numbers are the result).

    python benchmarks/probe_shift.py --shift-score RUN_DIR...

measures the per-answer shift score (``llmcal.probe.shift``, issue #15) instead: for every
task, a scorer fitted on the other tasks' calibration halves must tell that task's test half
(out of pool) from the other tasks' test halves (in pool); prints the AUROC per task and
its mean for each method x position x layer (how the default was chosen), the share of
questions flagged in and out of the pool, and the time per answer of the default scorer
(one answer at a time, as serve calls it), beside ``/proc/loadavg``.

    python benchmarks/probe_shift.py --loto-combined RUN_DIR...
    python benchmarks/probe_shift.py --in-task RUN_DIR...

the other two tables of docs/benchmarks.md, "Under shift: calibrators, combined and the
shift score": ``combined`` fitted on all tasks but one against the best single signal, the
temperature and the constant (the stacker of before issue #15 -- C = 1, no number of options,
stratified folds -- beside today's), and every calibrator fitted in-task on each run alone.
"""

from __future__ import annotations

import sys
from pathlib import Path


def shift_score(run_dirs: list[str]) -> int:
    import json
    import time
    import warnings

    import numpy as np

    from llmcal.probe.features import concat_features, load_run_features
    from llmcal.probe.protocol import split
    from llmcal.probe.shift import ShiftScorer, in_vs_out_auroc
    from llmcal.signals.density import METHODS

    warnings.simplefilter("ignore")
    pool = concat_features([load_run_features(p, compute_fingerprint=False) for p in run_dirs])
    cal, test = split(pool, 0.5, 0)
    tasks = sorted(set(pool.tasks.tolist()))
    print(f"{len(tasks)} tasks, {len(pool)} items; load {open('/proc/loadavg').read().split()[:3]}")
    for method in METHODS:
        for pos in pool.positions:
            for layers in [[x] for x in pool.model.layers] + [sorted(pool.model.layers)]:
                auc, flagged_in, flagged_out = {}, [], []
                for t in tasks:
                    sc = ShiftScorer.fit(pool.subset(cal[pool.tasks[cal] != t]), method=method, position=pos,
                                         layers=layers)
                    inside, outside = pool.subset(test[pool.tasks[test] != t]), pool.subset(test[pool.tasks[test] == t])
                    auc[t] = in_vs_out_auroc(sc, inside, outside)
                    flagged_in.append(sc.summary(inside)["share_unlike"])
                    flagged_out.append(sc.summary(outside)["share_unlike"])
                print(f"{method:12s} {pos:12s} layers {str(layers):9s}: mean AUROC {np.mean(list(auc.values())):.3f} "
                      f"(min {min(auc.values()):.3f}); flagged in pool {np.mean(flagged_in):.1%}, "
                      f"out {np.mean(flagged_out):.1%}; " + json.dumps({k: round(v, 3) for k, v in auc.items()}))
    # the run-level two-sample test (llmcal.probe.shift.DomainShift): the target's unlabeled calibration part
    # against the pool's, judged on both test parts; the null control splits the pool itself in two
    from llmcal.probe.shift import DomainShift

    auc, share = {}, {}
    for t in tasks:
        ci, ti = cal[pool.tasks[cal] != t], cal[pool.tasks[cal] == t]
        cs, ts = test[pool.tasks[test] != t], test[pool.tasks[test] == t]
        d = DomainShift.between(pool, (ci, cs), pool, (ti, ts))
        auc[t], share[t] = d.auroc, d.share_unlike
    print(f"domain classifier (run level, C={DomainShift.__dataclass_fields__['C'].default}): mean AUROC "
          f"{np.mean(list(auc.values())):.3f} (min {min(auc.values()):.3f}); flagged out {np.mean(list(share.values())):.1%}; "
          + json.dumps({k: round(v, 3) for k, v in auc.items()}))
    rng = np.random.default_rng(0)
    half_c, half_t = rng.random(len(cal)) < 0.5, rng.random(len(test)) < 0.5
    d = DomainShift.between(pool, (cal[half_c], test[half_t]), pool, (cal[~half_c], test[~half_t]))
    print(f"domain classifier null control (the pool against itself): AUROC {d.auroc:.3f}, flagged {d.share_unlike:.1%}")
    sc = ShiftScorer.fit(pool.subset(cal))
    rows = pool.hidden[test]
    t0 = time.perf_counter()
    for r in rows:
        sc.in_distribution(r)
    per = (time.perf_counter() - t0) / len(rows)
    print(f"default {sc.method}/{sc.position}/layers {sc.layers}: {1000 * per:.3f} ms per answer "
          f"({len(rows)} answers, one at a time); load {open('/proc/loadavg').read().split()[:3]}")
    return 0


def loto_combined(run_dirs: list[str]) -> int:
    import warnings

    import numpy as np

    import llmcal.probe.combine as CB
    from llmcal import metrics as M
    from llmcal.probe.features import concat_features, load_run_features
    from llmcal.probe.protocol import RAW_SIGNALS, ProbeSettings, fit_all, predict_all, split

    warnings.simplefilter("ignore")
    pool = concat_features([load_run_features(p, compute_fingerprint=False) for p in run_dirs])
    cal, test = split(pool, 0.5, 0)
    tasks = sorted(set(pool.tasks.tolist()))
    default_min = CB.MIN_OOF_GROUPS
    for name, s, min_groups in (("before", ProbeSettings(group_by_task=False, chance_feature=False), 10 ** 6),
                                ("now", ProbeSettings(), default_min)):
        CB.MIN_OOF_GROUPS = min_groups
        auc, ece, best, const, worse = [], [], [], [], 0
        for t in tasks:
            src, tgt = pool.subset(cal[pool.tasks[cal] != t]), pool.subset(test[pool.tasks[test] == t])
            confs = predict_all(fit_all(src, s), tgt)
            y = tgt.correct
            single = max((n for n in confs if n in RAW_SIGNALS or n == "external"), key=lambda n: M.auroc(confs[n], y))
            c_ece = float(M.ece(np.full(len(y), src.correct.mean()), y))
            auc.append(M.auroc(confs["combined"], y))
            ece.append(M.ece(confs["combined"], y))
            best.append(M.auroc(confs[single], y))
            const.append(c_ece)
            worse += ece[-1] > c_ece
            print(f"{name:6s} {t:16s} combined AUROC {auc[-1]:.3f} ECE {ece[-1]:.3f}; best single {single} "
                  f"{best[-1]:.3f}; temperature ECE {M.ece(confs['internal+temperature'], y):.3f}; constant {c_ece:.3f}")
        print(f"{name:6s} mean: combined AUROC {np.mean(auc):.3f} vs best single {np.mean(best):.3f}; ECE "
              f"{np.mean(ece):.3f} vs constant {np.mean(const):.3f}; worse than the constant in {worse}/{len(tasks)}; "
              f"load {open('/proc/loadavg').read().split()[:3]}")
    CB.MIN_OOF_GROUPS = default_min
    return 0


def in_task(run_dirs: list[str]) -> int:
    import json
    import warnings

    from llmcal.pipeline.evaluate import evaluate
    from llmcal.probe.features import load_run_features
    from llmcal.probe.protocol import ProbeSettings
    from llmcal.probe.protocol import in_task as probe_in_task
    from llmcal.records.run_dir import RunDir

    warnings.simplefilter("ignore")
    names = ["temperature", "temperature_norm", "platt", "isotonic", "histogram", "beta"]
    for path in run_dirs:
        res, _ = evaluate(RunDir(path).read_samples(), calibrators=names, n_bootstrap=0)
        row = {"accuracy": round(res["signals_test"]["option_prob"]["accuracy"], 3),
               "raw_ece": round(res["signals_test"]["option_prob"]["ece"], 3)}
        for c in names:
            got = res["calibrated_test"].get(c)
            row[c] = ({"ece": round(got["ece"], 3), "auroc": round(got["auroc"], 3),
                       **{k: got["params"][k] for k in ("temperature_", "a_", "at_bound_") if k in got["params"]}}
                      if got else "refused: " + res["calibrator_errors"][c])
        probe, fitted = probe_in_task(load_run_features(path, compute_fingerprint=False), ProbeSettings(), n_boot=0)
        row["combined"] = {"ece": round(probe["methods"]["combined"]["ece"], 3),
                           "auroc": round(probe["methods"]["combined"]["auroc"], 3), "C": fitted.artifact.combiner.C}
        print(path, json.dumps(row))
    return 0


def main(argv: list[str] | None = None) -> int:
    import json

    from llmcal.cli.probe_commands import add_parsers, cmd_probe

    import argparse

    parser = argparse.ArgumentParser(prog="probe_shift")
    add_parsers(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    modes = {"--shift-score": shift_score, "--loto-combined": loto_combined, "--in-task": in_task}
    if argv[:1] and argv[0] in modes:
        return modes[argv[0]](argv[1:])
    if "--out" not in argv:
        argv += ["--out", "runs/probe_shift"]
    args = parser.parse_args(["probe", "--shift", *argv])
    cmd_probe(args)
    out = json.loads((Path(args.out) / "probe_shift.json").read_text())
    print("\nTargets (issue): combined AUROC above the best single signal; ECE at least 40% below raw option_prob")
    for group in ("pairwise_shift", "leave_one_task_out", "in_task"):
        g = out["shift"]["summary"].get(group)
        if not g:
            continue
        comb = g["mean"]["combined"]
        red = g["mean_reduction_vs_internal"]["combined"]["ece_reduction"]
        print(f"  {group:20s} cells {g['n_cells']:3d}: combined AUROC {comb['auroc']:.3f} vs mean best single "
              f"{g['mean_best_single_auroc']:.3f} (above in {g['combined_beats_best_single_auroc']} cells); "
              f"mean ECE reduction vs internal {100 * red:.0f}%")
    print(f"  total {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
