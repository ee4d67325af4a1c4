"""The answer log under load: does logging every answer cost the clients anything, and is each logged once?

    python benchmarks/serve_load.py [--samples /tmp/shift_runs/builtin] [--clients 8] [--seconds 20]
                                    [--rounds 2] [--delay 0.005] [--db sqlite|postgresql://...] [--json out.json]

The server is ``create_app`` around :class:`llmcal.serve.replay.ReplayAnswerer` (a subprocess, on
a free 127.0.0.1 port): it answers the measured run's multiple-choice questions from their
recorded option log-likelihoods after ``--delay`` seconds of pretend model time, through a
temperature calibration fitted on the run's calibration split, i.e. a *fast fake upstream*, so
that what is measured is the proxy's own cost (the embedded model's ~100 ms a question would
hide it).  ``--clients`` concurrent clients send ``POST /v1/ask`` for ``--seconds`` a mode, in
two modes alternating ``--rounds`` times (ABAB, so drifting machine load falls on both):

* ``off``: ``--db off``, no answer log;
* ``on``: every answer goes to the answer log (``--db``, default a fresh SQLite file a round).

Reported: requests, failures (anything but HTTP 200), p50/p99 latency per mode, the server
process's CPU milliseconds a request (from /proc: what logging costs, less exposed to the other
jobs on a shared machine than the latencies), the overheads (p50 on / p50 off - 1, p99, CPU), and
for every ``on`` round the count check: the rows in the
log equal the successful requests, each id once.  The numbers need `cat /proc/loadavg` beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
MAX_CLIENTS = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_serve_run(samples_run: str | Path, out: Path, calibrator: str = "temperature", seed: int = 0) -> Path:
    """A run folder whose calibration is ``calibrator`` fitted on the calibration split of ``samples_run``;
    its held-out ECE (on the test split) is stored as the monitor's baseline."""
    from llmcal.calibrators.calibration import Calibration, CalibrationSet
    from llmcal.core.split import split_indices
    from llmcal.metrics.calibration import ece
    from llmcal.records.run_dir import RunDir

    samples = RunDir(samples_run).read_samples()
    cal_idx, test_idx = split_indices([s.task for s in samples], 0.5, seed)
    cal_s, test_s = [samples[i] for i in cal_idx], [samples[i] for i in test_idx]
    draft = Calibration.fit(cal_s, "option_prob", calibrator)
    held = ece(draft.confidences(test_s), np.array([s.correct for s in test_s]), n_bins=10)
    config = json.loads((Path(samples_run) / "config.json").read_text())
    cal = Calibration.fit(cal_s, "option_prob", calibrator, threshold=0.5, held_out_ece=float(held),
                          run=str(samples_run), context={"style": config.get("style", "cloze"),
                                                         "chat": bool(config.get("chat", False)),
                                                         "model_args": config.get("model_args") or {}})
    out.mkdir(parents=True, exist_ok=True)
    CalibrationSet({calibrator: cal}, calibrator).save(out / "calibration.json")
    (out / "test_questions.json").write_text(json.dumps([s.question for s in test_s]))
    return out


# ------------------------------------------------------------------ the server (a subprocess)
def serve_main(args: argparse.Namespace) -> int:
    import uvicorn

    from llmcal.serve.app import create_app
    from llmcal.serve.feedback_api import answer_log_wiring
    from llmcal.serve.replay import ReplayAnswerer

    answerer = ReplayAnswerer(args.serve, args.samples.split(","), delay_s=args.delay)
    kw, close = answer_log_wiring(args.db, True, None, args.serve)
    app = create_app(answerer, max_queue=MAX_CLIENTS * 2, request_timeout=60.0, reload_on_sighup=True,
                     allowed_hosts=["127.0.0.1"], **kw)
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1)
    finally:
        close()
    return 0


def start_server(run: Path, samples: str, db: str, port: int, delay: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE), "--serve", str(run), "--samples", samples, "--db", db,
                             "--port", str(port), "--delay", str(delay)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server ended: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop; then the answer log is flushed and closed
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ the clients
async def load(url: str, questions: list[tuple[str, list[str]]], clients: int, seconds: float,
               on_reply=None, done=None) -> dict:
    """``clients`` loops of ``POST /v1/ask`` for ``seconds`` (or, with ``done``, an ``asyncio.Event``,
    until it is set); latencies (s), failures, the ids answered."""
    import httpx

    lat: list[float] = []
    ids: list[str] = []
    failures: list[str] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            i = k
            while (time.perf_counter() < stop) if done is None else not done.is_set():
                q, choices = questions[i % len(questions)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/ask", json={"question": q, "choices": choices})
                except httpx.HTTPError as err:
                    failures.append(type(err).__name__)
                    continue
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")
                    continue
                lat.append(dt)
                body = r.json()
                ids.append(body["id"])
                if on_reply is not None:
                    await on_reply(c, q, body)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"latencies": lat, "ids": ids, "failures": failures}


def pct(lat: list[float], q: float) -> float:
    return float(np.percentile(np.array(lat) * 1000, q)) if lat else float("nan")


def count_check(db: str, ids: list[str]) -> dict:
    from llmcal.records.answer_log import AnswerLog

    with AnswerLog(db) as lg:
        logged = lg.ids()
    return {"requests_ok": len(ids), "logged": len(logged), "distinct_logged": len(set(logged)),
            "exactly_once": sorted(logged) == sorted(ids) and len(set(ids)) == len(ids)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="/tmp/shift_runs/builtin", help="measured run(s) to replay, comma-separated")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="per mode, split over the rounds")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--delay", type=float, default=0.005, help="pretend model seconds a request (default 0.005)")
    ap.add_argument("--db", default="sqlite", help="'sqlite' (a fresh file a round) or a postgresql:// URL")
    ap.add_argument("--json", default=None)
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve_main(args)
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= 600:
        raise SystemExit(f"--clients must be 1..{MAX_CLIENTS} and --seconds 0..600")
    tmp = Path(tempfile.mkdtemp(prefix="llmcal-serve-load-"))
    run = make_serve_run(args.samples.split(",")[0], tmp / "run")
    from llmcal.serve.replay import ReplayAnswerer

    replay = ReplayAnswerer(run, args.samples.split(","))
    questions = [(q, replay.options(q)) for q in replay.questions()]
    per = args.seconds / args.rounds
    results: dict[str, dict] = {"off": {"latencies": [], "failures": [], "requests": 0},
                                "on": {"latencies": [], "failures": [], "requests": 0}}
    checks = []
    for rnd in range(args.rounds):
        for mode in ("off", "on"):
            if mode == "off":
                db = "off"
            elif args.db == "sqlite":
                db = f"sqlite:///{tmp / f'serve-{rnd}.db'}"
            else:
                db = args.db
            port = free_port()
            proc = start_server(run, args.samples, db, port, args.delay)
            try:
                cpu0 = cpu_seconds(proc.pid)
                out = asyncio.run(load(f"http://127.0.0.1:{port}", questions, args.clients, per))
                cpu = cpu_seconds(proc.pid) - cpu0  # the server's own CPU for this load (start-up excluded)
            finally:
                stop_server(proc)
            r = results[mode]
            r["cpu_s"] = r.get("cpu_s", 0.0) + cpu
            r["latencies"] += out["latencies"]
            r["failures"] += out["failures"]
            r["requests"] += len(out["latencies"]) + len(out["failures"])
            if mode == "on":
                checks.append(count_check(db, out["ids"]))
                if args.db != "sqlite":  # a shared PostgreSQL: the next round starts from an empty log
                    from llmcal.records.answer_log import AnswerLog

                    with AnswerLog(db) as lg, lg.engine.begin() as conn:
                        conn.execute(lg.feedback_table.delete())
                        conn.execute(lg.answers.delete())
    summary = {"clients": args.clients, "seconds_per_mode": args.seconds, "rounds": args.rounds,
               "delay_s": args.delay, "db": args.db, "loadavg": open("/proc/loadavg").read().split()[:3],
               "count_checks": checks}
    for mode, r in results.items():
        summary[mode] = {"requests": r["requests"], "failed": len(r["failures"]),
                         "failures": sorted(set(r["failures"]))[:5], "rps": len(r["latencies"]) / args.seconds,
                         "p50_ms": pct(r["latencies"], 50), "p99_ms": pct(r["latencies"], 99),
                         "server_cpu_ms_per_request": 1000 * r.get("cpu_s", 0.0) / max(1, len(r["latencies"]))}
    summary["overhead_p50"] = summary["on"]["p50_ms"] / summary["off"]["p50_ms"] - 1
    summary["overhead_p99"] = summary["on"]["p99_ms"] / summary["off"]["p99_ms"] - 1
    summary["overhead_server_cpu"] = (summary["on"]["server_cpu_ms_per_request"]
                                      / summary["off"]["server_cpu_ms_per_request"] - 1)
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    ok = all(c["exactly_once"] for c in checks) and not results["on"]["failures"] and not results["off"]["failures"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("LLMCAL_THREADS", "1")
    sys.exit(main())
