"""What the external probe and `combined` add at inference, per answer.

    python benchmarks/probe.py RUN_DIR [--repeats 2000] [--json out.json]

Fits the logistic and the MLP probe (and the stacked combination) on the run's
calibration part, then times, on the test part:

* **one answer at a time**, as a serving loop would see it: the sample record and
  its hidden row in, ``external`` and ``combined`` confidence out
  (``ProbeArtifact.predict_one``: cheap features, the probe's matrix-vector
  product, the stacker, the calibrator);
* **a batch**: every test item at once (``ProbeArtifact.predict``), per answer.

The model's own forward pass is not included: the probe reuses its hidden
states, no extra call.  For scale, the embedded model scores an item in about
60-90 ms on two CPU cores (``llmcal measure``: ~1,000 items a minute or so).

Without RUN_DIR a synthetic run folder (600 items, 2 layers x 576, the embedded
model's geometry) is generated in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _synthetic(path: Path, n: int = 600) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_probe import make_run  # the tests' generator: planted hidden-state signal

    make_run(path, n=n, hidden_size=576, layers=(-1, 15), n_layers=30)
    return path


def _time_one(art, samples, hidden, kept, repeats: int) -> dict[str, float]:
    times = np.empty(repeats)
    m = len(samples)
    for r in range(repeats):
        i = r % m
        t0 = time.perf_counter()
        art.predict_one(samples[i], hidden[i], kept)
        times[r] = time.perf_counter() - t0
    return {"median_us": float(np.median(times) * 1e6), "p99_us": float(np.quantile(times, 0.99) * 1e6),
            "mean_us": float(times.mean() * 1e6)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", default=None)
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from llmcal.probe.features import load_run_features
    from llmcal.probe.protocol import ProbeSettings, fit_all, split
    from llmcal.records.run_dir import RunDir

    tmp = None
    run_dir = args.run_dir
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory()
        run_dir = str(_synthetic(Path(tmp.name) / "synthetic"))
    rf = load_run_features(run_dir, compute_fingerprint=False)
    samples = RunDir(run_dir).read_samples()
    hidden_all = RunDir(run_dir).load_hidden()
    cal, test = split(rf, 0.5, 0)
    test_samples = [samples[i] for i in test]
    test_hidden = np.asarray(hidden_all[[s["hidden_row"] for s in test_samples]])  # (n_test, n_kept, hidden)
    out: dict = {"run": run_dir, "n_test": int(len(test)), "model": rf.model.to_dict(), "probes": {}}
    print(f"run {run_dir}: {len(rf)} items, hidden {tuple(rf.hidden.shape[1:])}, test part {len(test)}")
    print(f"{'probe':10} {'features':>8} {'fit s':>6} {'one answer: median':>19} {'p99':>9} {'batch, per answer':>18}")
    for kind in ("logistic", "mlp"):
        t0 = time.perf_counter()
        f = fit_all(rf.subset(cal), ProbeSettings(probe=kind))
        fit_s = time.perf_counter() - t0
        art = f.artifact
        t_test = rf.subset(test)
        with threadpool_limits(1):  # one core, as a serving worker
            for i in range(50):  # warm-up
                art.predict_one(test_samples[i % len(test)], test_hidden[i % len(test)], rf.model.layers)
            one = _time_one(art, test_samples, test_hidden, rf.model.layers, args.repeats)
            t0 = time.perf_counter()
            reps = 20
            for _ in range(reps):
                art.predict(t_test)
            batch_us = (time.perf_counter() - t0) / reps / len(test) * 1e6
        # the single-answer path agrees with the batch path
        b = art.predict(t_test)
        for j in (0, len(test) // 2, len(test) - 1):
            o = art.predict_one(test_samples[j], test_hidden[j], rf.model.layers)
            assert abs(o["combined"] - b["combined"][j]) < 1e-9, (o, b["combined"][j])
        out["probes"][kind] = {"fit_seconds": fit_s, "one_answer": one, "batch_per_answer_us": batch_us,
                               "n_features": int(art.probe.n_features)}
        print(f"{kind:10} {art.probe.n_features:8d} {fit_s:6.1f} {one['median_us']:16.1f} us "
              f"{one['p99_us']:6.1f} us {batch_us:15.2f} us")
    worst = max(p["one_answer"]["p99_us"] for p in out["probes"].values())
    verdict = "under" if worst < 1000 else "OVER"
    print(f"\nworst p99 per answer: {worst:.1f} us, {verdict} the 1 ms budget")
    out["worst_p99_us"] = worst
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if tmp:
        tmp.cleanup()
    return 0 if worst < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
