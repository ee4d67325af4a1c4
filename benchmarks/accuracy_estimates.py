"""Label-free task-accuracy estimators beside ``atc_prior`` (issue #15): what else was tried, measured.

    python benchmarks/accuracy_estimates.py DIR/{builtin,arc_easy,arc_challenge,sciq,piqa,commonsenseqa,mmlu,truthfulqa_mc1} \
        [--out est.json] [--no_probe]

The adapted ECE of ``--adapt unlabeled`` is the accuracy estimate's error (docs/benchmarks.md, session 10):
fed the true accuracy it is 0.009 on SmolLM2.  This script scores other estimates of that accuracy the
same way; none of them is in the product, because none beats ``atc_prior`` (docs/benchmarks.md, session 12).

Leave one task out over the runs given.  For each target: sources = the other tasks' calibration parts
(labels read), target = its calibration part read without labels; the error is |estimate - accuracy of
the target's test part|; the adapted ECE is platt (option_prob) shifted to the estimate then shrunk 0.25,
on the target's test part -- the product's --adapt unlabeled path with the estimate swapped.

Estimators:
  atc_prior      the product's default (ATC on platt@option_prob_norm, weight 0.5 to the source accuracy)
  thermo_ridge   Thermometer-lite (Shen et al., ICML 2024, at task level): ridge regression across the
                 source tasks from unlabeled task features to task accuracy, alpha by inner LOTO
  thermo_skill   the same, regressing skill above chance (acc - c) / (1 - c) and mapping back
  thermo_1d      acc ~ a + b * mean skill-above-chance of option_prob_norm (ordinary least squares)
  probe_mean     the mean of the hidden-state probe's P(right) on the target ('external')
  combined_mean  the mean of `combined` on the target
  *_prior        the estimate averaged with the source accuracy (weight 0.5, as atc_prior)
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import load, fit_pool
from llmcal.core.split import split_indices
from llmcal.calibrators.calibration import Calibration
from llmcal.calibrators.unlabeled import atc_prior_estimate, apply_logit_shift, logit_shift_for_mean, shrink_toward
from llmcal import metrics as M

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1e6)


def feats(samples):
    """(7,) a task's unlabeled features: mean option_prob, option_prob_norm, chance 1/k, the two skills above
    chance (p - c) / (1 - c), entropy / log k, margin."""
    op = np.array([s.signals["option_prob"] for s in samples])
    opn = np.array([s.signals["option_prob_norm"] for s in samples])
    k = np.array([len(s.option_logprobs) for s in samples], float)
    c = 1.0 / k
    ent = np.array([s.signals["entropy"] for s in samples]) / np.log(k)
    mar = np.array([s.signals["margin"] for s in samples])
    return np.array([op.mean(), opn.mean(), c.mean(), ((opn - c) / (1 - c)).mean(), ((op - c) / (1 - c)).mean(),
                     ent.mean(), mar.mean()])


def ridge_fit_predict(X, y, x, alpha):
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z, z = (X - mu) / sd, (x - mu) / sd
    ym = y.mean()
    w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - ym))
    return float(ym + z @ w)


def thermo(F, A, C, src, tgt, mode):
    """F task features, A task accuracies (cal part), C task chance; fit on src, predict tgt."""
    def target(u):
        return (A[u] - C[u]) / (1 - C[u]) if mode == "skill" else A[u]
    def back(u, v):
        return C[u] + v * (1 - C[u]) if mode == "skill" else v
    best, best_err = None, np.inf
    for a in ALPHAS:  # inner LOTO over the sources alone
        errs = []
        for u in src:
            rest = [v for v in src if v != u]
            p = ridge_fit_predict(np.array([F[v] for v in rest]), np.array([target(v) for v in rest]), F[u], a)
            errs.append(abs(np.clip(back(u, p), 0, 1) - A[u]))
        if np.mean(errs) < best_err:
            best, best_err = a, np.mean(errs)
    p = ridge_fit_predict(np.array([F[v] for v in src]), np.array([target(v) for v in src]), F[tgt], best)
    return float(np.clip(back(tgt, p), 0, 1)), best


def run(paths, probe=True, out=None):
    runs = load(paths)
    splits = {t: split_indices([s.task for s in r["samples"]], 0.5, 0) for t, r in runs.items()}
    tasks = list(runs)
    cal = {t: [runs[t]["samples"][i] for i in splits[t][0]] for t in tasks}
    test = {t: [runs[t]["samples"][i] for i in splits[t][1]] for t in tasks}
    F = {t: feats(cal[t]) for t in tasks}
    A = {t: float(np.mean([s.correct for s in cal[t]])) for t in tasks}
    C = {t: float(F[t][2]) for t in tasks}
    rfs = {}
    if probe:
        from llmcal.probe.features import concat_features, load_run_features
        from llmcal.probe.protocol import ProbeSettings, fit_all
        rfs = {t: load_run_features(runs[t]["path"], compute_fingerprint=False) for t in tasks}
    res = {}
    for t in tasks:
        src = [u for u in tasks if u != t]
        pool = [s for u in src for s in cal[u]]
        y_src = np.array([s.correct for s in pool], float)
        y = np.array([s.correct for s in test[t]], float)
        acc = float(y.mean())
        gauge = Calibration.fit(pool, "option_prob_norm", "platt")
        est = {"atc_prior": atc_prior_estimate(gauge.confidences(pool), y_src, gauge.confidences(cal[t])),
               "source": float(y_src.mean())}
        est["thermo_ridge"], a1 = thermo(F, A, C, src, t, "acc")
        est["thermo_skill"], a2 = thermo(F, A, C, src, t, "skill")
        X1 = np.array([[1.0, F[u][3]] for u in src]); b = np.linalg.lstsq(X1, np.array([A[u] for u in src]), rcond=None)[0]
        est["thermo_1d"] = float(np.clip(b[0] + b[1] * F[t][3], 0, 1))
        if probe:
            pool_rf = concat_features([rfs[u].subset(splits[u][0]) for u in src])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = fit_all(pool_rf, ProbeSettings(seed=0))
                pr = f.artifact.predict(rfs[t].subset(splits[t][0]))
            est["probe_mean"] = float(pr["external"].mean())
            est["combined_mean"] = float(pr["combined"].mean())
        for k in [k for k in est if k not in ("source", "atc_prior")]:
            est[k + "_prior"] = 0.5 * est[k] + 0.5 * est["source"]
        est["true"] = acc
        cals, _ = fit_pool(pool, (("platt", "option_prob", "platt"),))
        pl = cals["platt"]
        cu, ct = pl.confidences(cal[t]), pl.confidences(test[t])
        eces = {}
        for k, e in est.items():
            conf = shrink_toward(apply_logit_shift(ct, logit_shift_for_mean(cu, e)), e, 0.25)
            eces[k] = float(M.ece(conf, y, 15))
        res[t] = {"acc": acc, "est": est, "ece": eces, "alphas": [a1, a2], "const_ece": float(M.ece(np.full(len(y), y_src.mean()), y, 15))}
        print(t, f"acc {acc:.3f}", " ".join(f"{k} {v - acc:+.3f}" for k, v in est.items() if k != "true"), file=sys.stderr, flush=True)
    keys = [k for k in res[tasks[0]]["est"]]
    print("| estimator | mean abs error | max abs error | adapted ECE (platt, shrink 0.25) | cells worse than constant |")
    print("|---|---:|---:|---:|---:|")
    for k in keys:
        errs = [abs(res[t]["est"][k] - res[t]["acc"]) for t in tasks]
        ec = [res[t]["ece"][k] for t in tasks]
        worse = sum(res[t]["ece"][k] >= res[t]["const_ece"] for t in tasks)
        print(f"| {k} | {np.mean(errs):.3f} | {np.max(errs):.3f} | {np.mean(ec):.3f} | {worse} |")
    print("per target (estimate - accuracy):")
    for t in tasks:
        print(t, f"acc {res[t]['acc']:.3f}", " ".join(f"{k} {res[t]['est'][k] - res[t]['acc']:+.3f}" for k in keys if k != "true"))
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="accuracy_estimates", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, one task each, one model (at least 4)")
    p.add_argument("--out", default=None, help="write the per-target estimates and ECEs here (JSON)")
    p.add_argument("--no_probe", action="store_true", help="skip probe_mean / combined_mean (runs without hidden states)")
    args = p.parse_args(argv)
    if len(args.runs) < 4:
        p.error("need at least 4 runs: the inner leave-one-task-out fits on the sources minus one")
    run(args.runs, probe=not args.no_probe, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
