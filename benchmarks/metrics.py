"""llmcal.metrics against netcal, torchmetrics and scikit-learn: same inputs, same run, timed side by side.

Run it with a Python that has the reference libraries (they are not llmcal dependencies):

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install torch==2.13.0      # first, pinned: the CPU build
    /tmp/bench-venv/bin/pip install netcal torchmetrics scikit-learn numpy
    /tmp/bench-venv/bin/pip install -e . --no-deps
    /tmp/bench-venv/bin/python benchmarks/metrics.py

What it does, on 10 million synthetic predictions (float64 confidence, 0/1 correct):
15-bin ECE, MCE and ACE (equal-mass), Brier, AUROC and reliability-diagram data; then a
1,000-resample bootstrap of 15-bin ECE on 100,000 predictions.  Every timing is the best of
``--repeats`` runs.  For the bootstrap, the reference libraries compute the ECE of the very
same resamples (``llmcal.metrics.bootstrap_resamples``) in a loop, so the replicate values are
compared one for one; by default the loop runs the first ``--ref-resamples`` resamples and
its time is scaled to 1,000 (``--full-bootstrap`` runs all of them).

It prints a table with the ratios, checks that every value agrees (float64 references to
1e-9, torchmetrics' float32 AUROC to 1e-6), and exits 1 if any does not.  With ``--strict`` it
also exits 1 when a speed target is missed (>= 20x netcal and >= 10x torchmetrics on 15-bin
ECE, bootstrap under 2 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LLM-like: mostly high confidence, overconfident (mean confidence ~0.81, accuracy ~0.5)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(2.0, 1.3, n)
    conf = 1.0 / (1.0 + np.exp(-z))
    correct = (rng.random(n) < 1.0 / (1.0 + np.exp(-(z - 2.0) / 1.5))).astype(np.int64)
    return conf, correct


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="predictions for the single-metric timings")
    ap.add_argument("--n-boot", type=int, default=100_000, help="predictions for the bootstrap")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--ref-resamples", type=int, default=100,
                    help="resamples the reference libraries loop over (time scaled to --resamples)")
    ap.add_argument("--full-bootstrap", action="store_true", help="loop the references over all resamples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a speed target is missed")
    args = ap.parse_args(argv)

    import netcal
    import sklearn
    import torch
    import torchmetrics
    from netcal.metrics import ECE, MCE
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from torchmetrics.functional.classification import binary_auroc, binary_calibration_error
    from torchmetrics.functional.classification.calibration_error import _binning_bucketize
    from torchmetrics.functional.regression import mean_squared_error

    import llmcal
    import llmcal.metrics as M

    print(f"python {platform.python_version()}, numpy {np.__version__}, llmcal {llmcal.__version__}, "
          f"netcal {netcal.__version__}, torchmetrics {torchmetrics.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}; "
          f"{os.cpu_count()} CPUs; {platform.processor() or platform.machine()}")
    x, y = make_data(args.n, args.seed)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    print(f"n = {args.n:,}: mean confidence {x.mean():.3f}, accuracy {y.mean():.3f}\n")

    rows: list[tuple] = []  # (task, {lib: (seconds, value)})
    failures: list[str] = []
    rep = args.repeats

    def check(task: str, ours, ref, lib: str, tol: float) -> float:
        diff = float(np.max(np.abs(np.asarray(ours, dtype=float) - np.asarray(ref, dtype=float))))
        if not diff <= tol:
            failures.append(f"{task}: llmcal and {lib} differ by {diff:.3g} (> {tol:g})")
        return diff

    def bench(task: str, ours_fn, refs: dict, tols: dict) -> None:
        t_ours, v_ours = best_of(ours_fn, rep)
        res = {"llmcal": (t_ours, None)}
        for lib, fn in refs.items():
            t, v = best_of(fn, rep)
            if "adapt" in tols:
                ours_v, ref_v = tols["adapt"](v_ours, v, lib)
            else:
                ours_v, ref_v = v_ours, v
            d = check(task, ours_v, ref_v, lib, tols.get(lib, 1e-9))
            res[lib] = (t, d)
        rows.append((task, res))
        print(f"  {task}: done", flush=True)

    print("timing (best of %d):" % rep)
    bench("ECE, 15 bins (l1)",
          lambda: M.ece(x, y, n_bins=15),
          {"netcal": lambda: ECE(bins=15).measure(x, y),
           "torchmetrics": lambda: float(binary_calibration_error(tx, ty, n_bins=15, norm="l1"))}, {})
    bench("MCE, 15 bins (max)",
          lambda: M.ece(x, y, n_bins=15, norm="max"),
          {"netcal": lambda: MCE(bins=15).measure(x, y),
           "torchmetrics": lambda: float(binary_calibration_error(tx, ty, n_bins=15, norm="max"))}, {})
    bench("ACE, 15 equal-mass bins",
          lambda: M.ece(x, y, n_bins=15, strategy="quantile"),
          {"netcal": lambda: ECE(bins=15, equal_intervals=False).measure(x, y)}, {})
    bench("Brier score",
          lambda: M.brier_score(x, y),
          {"torchmetrics": lambda: float(mean_squared_error(tx, ty.to(torch.float64))),
           "scikit-learn": lambda: brier_score_loss(y, x)}, {})
    bench("AUROC",
          lambda: M.auroc(x, y),
          {"torchmetrics": lambda: float(binary_auroc(tx, ty)),
           "scikit-learn": lambda: roc_auc_score(y, x)}, {"torchmetrics": 1e-6})

    def adapt_rel(ours, ref, lib):
        nz = ours.counts > 0
        mine = np.concatenate([ours.accuracy[nz], ours.mean_confidence[nz]])
        if lib == "scikit-learn":
            return mine, np.concatenate([ref[0], ref[1]])
        acc, conf, prop = ref  # torchmetrics: n_bins + 1 slots, the last only for confidence == 1.0
        keep = prop.numpy()[:-1] > 0
        return mine, np.concatenate([acc.numpy()[:-1][keep], conf.numpy()[:-1][keep]])

    bench("reliability data, 15 bins",
          lambda: M.reliability_data(x, y, n_bins=15),
          {"torchmetrics": lambda: _binning_bucketize(tx, ty, torch.linspace(0, 1, 16, dtype=torch.float64)),
           "scikit-learn": lambda: calibration_curve(y, x, n_bins=15)}, {"adapt": adapt_rel})

    # -- bootstrap -----------------------------------------------------------------------
    xb, yb = x[: args.n_boot].copy(), y[: args.n_boot].copy()
    R = args.resamples
    R_ref = R if args.full_bootstrap else min(args.ref_resamples, R)
    print(f"  bootstrap: {R} resamples of ECE on {args.n_boot:,} predictions "
          f"(references loop over {R_ref} and are scaled to {R})", flush=True)
    t_boot, ci = best_of(lambda: M.bootstrap_ci("ece", xb, yb, n_resamples=R, seed=args.seed), rep)
    dist = M.bootstrap_distribution("ece", xb, yb, n_resamples=R, seed=args.seed)

    def ref_loop(fn):
        vals = []
        for idx in M.bootstrap_resamples("ece", xb, yb, R, args.seed):
            for row in idx:
                if len(vals) == R_ref:
                    return np.array(vals)
                vals.append(fn(xb[row], yb[row]))
        return np.array(vals)

    t_nc, v_nc = best_of(lambda: ref_loop(lambda a, b: ECE(bins=15).measure(a, b)), 1)
    t_tm, v_tm = best_of(lambda: ref_loop(lambda a, b: float(binary_calibration_error(
        torch.from_numpy(a), torch.from_numpy(b), n_bins=15))), 1)
    scale = R / R_ref
    d_nc = check("bootstrap ECE replicates", dist[:R_ref], v_nc, "netcal", 1e-9)
    d_tm = check("bootstrap ECE replicates", dist[:R_ref], v_tm, "torchmetrics", 1e-9)
    rows.append((f"bootstrap ECE, {R} x {args.n_boot:,}",
                 {"llmcal": (t_boot, None), "netcal": (t_nc * scale, d_nc), "torchmetrics": (t_tm * scale, d_tm)}))

    # -- table ----------------------------------------------------------------------------
    libs = ["netcal", "torchmetrics", "scikit-learn"]
    head = (f"\n{'task':<34}{'llmcal s':>10}" + "".join(f"{lib + ' s':>17}{'ratio':>8}" for lib in libs)
            + f"{'max |diff|':>12}")
    print(head)
    print("-" * (len(head) - 1))
    for task, res in rows:
        t0 = res["llmcal"][0]
        line = f"{task:<34}{t0:>10.3f}"
        diffs = []
        for lib in libs:
            if lib in res:
                t, d = res[lib]
                line += f"{t:>17.3f}{t / t0:>7.1f}x"
                diffs.append(d)
            else:
                line += f"{'-':>17}{'':>8}"
        line += f"{max(diffs):>12.1e}"
        print(line)
    print(f"\nbootstrap 95% CI of ECE: point {ci[0]:.6f}, [{ci[1]:.6f}, {ci[2]:.6f}]"
          + ("" if R_ref == R else f"; reference times scaled from {R_ref} resamples"))

    ece_row = rows[0][1]
    targets = [
        ("15-bin ECE >= 20x faster than netcal", ece_row["netcal"][0] / ece_row["llmcal"][0] >= 20),
        ("15-bin ECE >= 10x faster than torchmetrics", ece_row["torchmetrics"][0] / ece_row["llmcal"][0] >= 10),
        (f"bootstrap ({R} x {args.n_boot:,}) under 2 s", t_boot < 2.0),
    ]
    print()
    for name, ok in targets:
        print(f"target {'met' if ok else 'MISSED'}: {name}")
    if failures:
        print("\nVALUES DISAGREE:\n  " + "\n  ".join(failures))
        return 1
    print("all values agree")
    if args.strict and not all(ok for _, ok in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
