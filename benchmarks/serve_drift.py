"""A simulated drift, end to end: serve one task, switch the questions to one the calibration never saw,
watch the monitor flag it, refit from feedback under load with a hot reload, check the ECE after.

    python benchmarks/serve_drift.py [--calibrated_on /tmp/shift_runs/builtin]
                                     [--drift_to /tmp/shift_runs/arc_challenge]
                                     [--refit_last 200] [--load_clients 4] [--json out.json]

Real labels: both tasks are runs the embedded model (SmolLM2-135M-Instruct) measured
(``llmcal measure``), replayed by :class:`llmcal.serve.replay.ReplayAnswerer` behind the real
``create_app`` with the answer log on (SQLite), so every confidence is the served
calibration's and every label is whether the model was right.  The steps:

1. the calibration: temperature scaling fitted on ``--calibrated_on``'s calibration split
   (its test-split ECE is the monitor's baseline);
2. phase 1: the test-split questions of that task, each answered and labeled (``POST /v1/feedback``);
3. phase 2: ``--phase2`` questions of ``--drift_to`` (seeded order), labeled; ``GET /v1/monitor``
   after each; reported: after how many labeled answers of the new task the alarm came;
4. the refit under load: ``--load_clients`` clients keep asking (``--load_seconds`` before, all
   through and ``--load_seconds`` after) while ``llmcal calibrate --from-feedback DB --run RUN
   --last N --reload URL`` runs (a subprocess); reported: the load's requests and failures, and
   how many were answered by each version (both, when the reload happened under load);
5. phase 3: the rest of ``--drift_to``'s questions (never used in the refit), labeled; reported:
   their ECE under the new version, and the old version's ECE on phase 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import free_port, load, make_serve_run, start_server, stop_server  # noqa: E402


def ask_and_label(client, replay, questions: list[str]) -> list[str]:
    ids = []
    for q in questions:
        r = client.post("/v1/ask", json={"question": q, "choices": replay.options(q)})
        r.raise_for_status()
        aid = r.json()["id"]
        f = client.post("/v1/feedback", json={"id": aid, "correct": replay.label(q)})
        f.raise_for_status()
        ids.append(aid)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibrated_on", default="/tmp/shift_runs/builtin")
    ap.add_argument("--drift_to", default="/tmp/shift_runs/arc_challenge")
    ap.add_argument("--phase2", type=int, default=200, help="labeled questions of the new task before the refit")
    ap.add_argument("--refit_last", type=int, default=200, help="the refit uses the last N labeled answers")
    ap.add_argument("--load_clients", type=int, default=4)
    ap.add_argument("--load_seconds", type=float, default=10.0, help="load before the refit starts and after it ends")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import httpx

    from llmcal.records.answer_log import AnswerLog
    from llmcal.serve.replay import ReplayAnswerer

    tmp = Path(tempfile.mkdtemp(prefix="llmcal-serve-drift-"))
    run = make_serve_run(args.calibrated_on, tmp / "run")
    samples = f"{args.calibrated_on},{args.drift_to}"
    replay = ReplayAnswerer(run, samples.split(","))
    first_task = json.loads((run / "test_questions.json").read_text())
    new_task = sorted({replay.samples[q].task for q in replay.questions()} -
                      {replay.samples[first_task[0]].task})[0]
    new_qs = replay.questions(new_task)
    np.random.default_rng(args.seed).shuffle(new_qs)
    phase2, phase3 = new_qs[:args.phase2], new_qs[args.phase2:]
    db = f"sqlite:///{tmp / 'serve.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(run, samples, db, port, delay=0.005)
    out: dict = {"new_task": new_task, "calibrated_on": args.calibrated_on, "drift_to": args.drift_to, "tmp": str(tmp),
                 "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            ask_and_label(c, replay, first_task)
            m = c.get("/v1/monitor").json()
            out["phase1"] = {"labeled": m["overall"]["labeled"], "ece": m["overall"]["ece"],
                             "baseline_ece": m["drift"]["baseline_ece"], "alarm": m["drift"]["alarm"]}
            flagged_after = None
            phase2_ids: set[str] = set()
            for k, q in enumerate(phase2, 1):
                phase2_ids.update(ask_and_label(c, replay, [q]))
                if flagged_after is None:
                    d = c.get("/v1/monitor").json()["drift"]
                    if d["alarm"]:
                        flagged_after = k
                        out["alarm"] = {"labeled_new_task_answers": k, "cusum_alarm_at_overall": d["cusum"]["alarm_at"],
                                        "message": d["message"]}
            out["phase2"] = {"questions": len(phase2), "flagged_after": flagged_after}
            before = c.get("/v1/monitor").json()
            old_version = before["per_version"][-1]["version"]

        # ---------------- the refit and the hot reload, under load
        load_qs = [(q, replay.options(q)) for q in first_task]
        cmd = [sys.executable, "-m", "llmcal", "calibrate", "--from-feedback", db, "--run", str(run),
               "--last", str(args.refit_last), "--n_bins", "10", "--reload", url]

        async def under_load():
            done = asyncio.Event()
            task = asyncio.create_task(load(url, load_qs, args.load_clients, 0, done=done))
            await asyncio.sleep(args.load_seconds)  # the load before the refit
            t0 = time.perf_counter()
            refit = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=300)
            took = time.perf_counter() - t0
            await asyncio.sleep(args.load_seconds)  # and after the reload
            done.set()
            return await task, refit, took

        loaded, refit, refit_s = asyncio.run(under_load())
        out["refit"] = {"returncode": refit.returncode, "stdout": refit.stdout.strip().splitlines(),
                        "stderr": refit.stderr.strip()[-500:], "seconds": round(refit_s, 2)}
        load_ids = set(loaded["ids"])
        with AnswerLog(db) as lg:
            versions = {}
            for a in lg.answered():
                if a["id"] in load_ids:
                    versions[a["calibration_version"]] = versions.get(a["calibration_version"], 0) + 1
        out["load_during_refit"] = {"requests": len(loaded["ids"]) + len(loaded["failures"]),
                                    "failed": len(loaded["failures"]), "failures": loaded["failures"][:5],
                                    "answered_by_version": versions}
        with httpx.Client(base_url=url, timeout=60) as c:
            ask_and_label(c, replay, phase3)
            after = c.get("/v1/monitor").json()
        per = {v["version"]: v for v in after["per_version"]}
        new_version = after["per_version"][-1]["version"]
        from llmcal.metrics.calibration import ece

        with AnswerLog(db) as lg:
            p2 = [a for a in lg.labeled(version=old_version) if a.id in phase2_ids]
        out["before_refit"] = {"version": old_version,
                               "ece_on_new_task": ece([a.confidence for a in p2], [a.correct for a in p2], n_bins=10)}
        out["after_refit"] = {"version": new_version, "labeled": per[new_version]["labeled"],
                              "ece_on_new_task": per[new_version]["ece"], "accuracy": per[new_version]["accuracy"],
                              "mean_confidence": per[new_version]["mean_confidence"],
                              "baseline_ece": per[new_version]["baseline_ece"], "alarm": after["drift"]["alarm"],
                              "message": after["drift"]["message"]}
    finally:
        stop_server(proc)
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    ok = (out["phase2"]["flagged_after"] is not None and out["refit"]["returncode"] == 0
          and out["load_during_refit"]["failed"] == 0 and len(out["load_during_refit"]["answered_by_version"]) == 2
          and out["after_refit"]["ece_on_new_task"] < 0.08)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
