"""A bounded load test of ``llmcal serve`` on loopback.

    python benchmarks/serve.py [--run RUN_DIR] [--clients 4] [--seconds 20] [--kinds mc,free]
                               [--max_tokens 16] [--rounds 2] [--json out.json]

Starts ``llmcal serve`` (a subprocess, so the clients do not share its interpreter) on a
free 127.0.0.1 port, or uses ``--url`` (loopback only).  For each kind of question --
``mc`` (the built-in task's questions with their options) and ``free`` (the same questions,
no options: greedy generation) -- ``--clients`` concurrent clients send
``POST /v1/chat/completions`` for ``--seconds`` seconds in each mode:

* ``calibrated``: the full response, with the ``confidence`` object;
* ``plain``: ``"confidence": false``, the same model call without the confidence.

The two modes alternate ``--rounds`` times (ABAB...) so drifting machine load falls on both,
and every client asks the same questions in the same order in both.  Reported per kind and
mode: requests, failures (anything but HTTP 200, including 503s), throughput, p50/p99/mean
latency, and the server's own split from the ``Server-Timing`` header (model call vs
confidence).  The overhead of the calibrated confidence is given two ways: end to end
(p50 calibrated / p50 plain - 1; noisy on a shared machine) and on the server
(confidence ms / model ms of the calibrated requests).

With ``--abandon N``, N more clients run alongside that never wait for their answers: each
sends a long request (free form, ``--abandon_tokens`` tokens) on a raw loopback socket and
closes the connection after a random 0..``--abandon_after`` s, then comes back after
0..``--abandon_pause`` s, again and again -- the users who close the tab.  The server drops such a request from its queue without running
the model (``request.is_disconnected()``); the clients that stay must see 0 failures, and
their p50/p99 are reported with the server's own counts (``/health``: abandoned, timed out).

Both the number of clients (<= 64) and the time (<= 600 s in all) are bounded.
Without --run a calibration with temperature 1.5 is written to a temporary run folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

MAX_CLIENTS = 64
MAX_TOTAL_SECONDS = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _synthetic_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    (run / "calibration.json").write_text(json.dumps({
        "schema_version": 1, "signal": "option_prob", "primary": "temperature", "threshold": 0.75,
        "style": "cloze", "chat": False, "model_args": {"dtype": "float32"},
        "calibrators": {"temperature": {"name": "temperature", "version": 1, "bounds": [0.01, 100.0],
                                        "temperature_": 1.5, "mode_": "multiclass", "n_classes_": 4}}}))
    return run


def _start_server(run: Path, port: int, max_queue: int, request_timeout: float = 60.0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LLMCAL_BENCH_NO_KEY"}
    return subprocess.Popen(
        [sys.executable, "-m", "llmcal.cli.serve_commands", "--run", str(run), "--port", str(port),
         "--max_queue", str(max_queue), "--log_level", "warning", "--api_key_env", "LLMCAL_BENCH_NO_KEY",
         "--request_timeout", str(request_timeout)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 300.0) -> dict:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url} did not become healthy in {timeout:.0f} s")


def _server_timing(header: str | None) -> dict[str, float]:
    out = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


async def _client(http, url: str, bodies: list[dict], start: int, stop_at: float, out: list) -> None:
    i = start
    while time.perf_counter() < stop_at:
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await http.post(url + "/v1/chat/completions", json=body)
            ok = r.status_code == 200
            timing = _server_timing(r.headers.get("server-timing")) if ok else {}
            status = r.status_code
        except Exception as err:  # noqa: BLE001 - a failed request is a result, not a crash
            ok, timing, status = False, {}, type(err).__name__
        out.append((time.perf_counter() - t0, ok, status, timing))


async def _abandoner(url: str, body: dict, after: float, seed: int, stop_at: float, sent: list,
                     pause: float = 0.0) -> None:
    """Send ``body`` on a raw socket and hang up after a random 0..``after`` s, then wait 0..``pause`` s,
    until ``stop_at``."""
    parsed = urlparse(url)
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    rng = random.Random(seed)
    while time.perf_counter() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(head + data)
            await writer.drain()
            await asyncio.sleep(rng.uniform(0.0, after))
        finally:
            writer.close()  # the user closed the tab: the answer, if any, is never read
            try:
                await writer.wait_closed()
            except OSError:
                pass
        sent.append(1)
        if pause:
            await asyncio.sleep(rng.uniform(0.0, pause))


async def _phase(url: str, bodies: list[dict], clients: int, seconds: float, abandon: int = 0,
                 abandon_body: dict | None = None, abandon_after: float = 0.2,
                 abandon_pause: float = 0.0) -> tuple[list, float, int]:
    import httpx

    out: list = []
    sent: list = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*[_client(http, url, bodies, k * 7, stop_at, out) for k in range(clients)],
                             *[_abandoner(url, abandon_body or bodies[0], abandon_after, k, stop_at, sent,
                                          abandon_pause) for k in range(abandon)])
        return out, time.perf_counter() - t0, len(sent)


def _bodies(kind: str, n: int, max_tokens: int, calibrated: bool) -> list[dict]:
    from llmcal.tasks.registry import load_task

    out = []
    for it in load_task("builtin", limit=n):
        body = {"model": "llmcal", "messages": [{"role": "user", "content": it.question}],
                "max_tokens": max_tokens, "confidence": calibrated}
        if kind == "mc":
            body["options"] = list(it.choices)
        out.append(body)
    return out


def _summary(results: list, wall: float) -> dict:
    lat = np.array([r[0] for r in results if r[1]]) * 1000.0
    failed = [r[2] for r in results if not r[1]]
    model = [r[3].get("model") for r in results if r[1] and "model" in r[3]]
    conf = [r[3].get("confidence") for r in results if r[1] and "confidence" in r[3]]
    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
    return {
        "requests": len(results), "failed": len(failed), "failures": sorted({str(f) for f in failed}),
        "rps": len(lat) / wall if wall else float("nan"),
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "mean_ms": float(lat.mean()) if len(lat) else float("nan"),
        "server_model_ms_p50": pct(np.array(model), 50), "server_model_ms_mean": float(np.mean(model)) if model else None,
        "server_confidence_ms_p50": pct(np.array(conf), 50) if conf else None,
        "server_confidence_ms_mean": float(np.mean(conf)) if conf else None,
    }


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="run folder to serve (default: a synthetic temperature calibration)")
    ap.add_argument("--url", default=None, help="use this running server (127.0.0.1 only) instead of starting one")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0, help="per kind and mode, split over the rounds")
    ap.add_argument("--rounds", type=int, default=2, help="calibrated/plain alternations (default 2)")
    ap.add_argument("--kinds", default="mc,free", help="mc, free or both (default mc,free)")
    ap.add_argument("--max_tokens", type=int, default=16, help="free form: tokens generated at most (default 16)")
    ap.add_argument("--questions", type=int, default=64, help="distinct questions cycled through (default 64)")
    ap.add_argument("--abandon", type=int, default=0,
                    help="clients that send long requests and hang up before the answer (default 0)")
    ap.add_argument("--abandon_after", type=float, default=0.2, help="they hang up after 0..this many s")
    ap.add_argument("--abandon_tokens", type=int, default=128, help="their free-form requests' max_tokens")
    ap.add_argument("--abandon_pause", type=float, default=0.5,
                    help="and come back after 0..this many s (default 0.5; 0 = at once)")
    ap.add_argument("--request_timeout", type=float, default=60.0, help="the server's --request_timeout")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not 0 <= args.abandon <= MAX_CLIENTS or not 0 < args.abandon_after <= 10:
        ap.error(f"--abandon must be in 0..{MAX_CLIENTS} and --abandon_after in (0, 10] s")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not 1 <= args.clients <= MAX_CLIENTS:
        ap.error(f"--clients must be in 1..{MAX_CLIENTS}")
    if set(kinds) - {"mc", "free"} or not kinds:
        ap.error("--kinds: mc and/or free")
    total = args.seconds * 2 * len(kinds)
    if not 0 < total <= MAX_TOTAL_SECONDS or args.rounds < 1:
        ap.error(f"--seconds x 2 modes x kinds must be in (0, {MAX_TOTAL_SECONDS}] s; --rounds >= 1")
    proc, tmp = None, None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            ap.error("--url: loopback servers only (127.0.0.1)")
        url = args.url.rstrip("/")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="llmcal-bench-serve-")
        run = Path(args.run) if args.run else _synthetic_run(Path(tmp.name))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        # room for every client, the abandoning ones too: a failure must mean a wedged server, not a small queue
        proc = _start_server(run, port, max_queue=args.clients + args.abandon + 4,
                             request_timeout=args.request_timeout)
    try:
        health = _wait_healthy(url, proc)
        print(f"server: {health['model']} at {url}; calibration: {json.dumps(health.get('calibration'))}")
        print(f"{args.clients} clients (+{args.abandon} abandoning), {args.seconds:g} s per kind and mode in "
              f"{args.rounds} rounds; load average before: {_load()}", flush=True)
        abandon_body = {"model": "llmcal", "max_tokens": args.abandon_tokens,
                        "messages": [{"role": "user", "content": "Tell me a long story about calibration."}]}
        queue_before = health.get("queue", {})
        report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                        "cpus": os.cpu_count(), "load_before": _load(), "args": vars(args), "results": {}}
        for kind in kinds:
            res: dict[str, list] = {"calibrated": [], "plain": []}
            walls = {"calibrated": 0.0, "plain": 0.0}
            hung_up = {"calibrated": 0, "plain": 0}
            bodies = {m: _bodies(kind, args.questions, args.max_tokens, m == "calibrated") for m in res}
            asyncio.run(_phase(url, bodies["plain"], args.clients, min(3.0, args.seconds / 4)))  # warm-up
            for _ in range(args.rounds):
                for mode in ("calibrated", "plain"):
                    out, wall, n_hung = asyncio.run(_phase(url, bodies[mode], args.clients,
                                                           args.seconds / args.rounds, args.abandon,
                                                           abandon_body, args.abandon_after,
                                                           args.abandon_pause))
                    res[mode] += out
                    walls[mode] += wall
                    hung_up[mode] += n_hung
            report["results"][kind] = {m: {**_summary(res[m], walls[m]), "abandoned_sent": hung_up[m]}
                                       for m in res}
        report["load_after"] = _load()
        queue_after = _wait_healthy(url, None).get("queue", {})
        report["server_queue"] = {k: queue_after.get(k, 0) - queue_before.get(k, 0)
                                  for k in ("served", "rejected", "timed_out", "abandoned")}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if tmp is not None:
            tmp.cleanup()
    report["overhead"] = {kind: _overhead(modes) for kind, modes in report["results"].items()}
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    failed = sum(m["failed"] for k in report["results"].values() for m in k.values())
    return 1 if failed else 0


def _print(report: dict) -> None:
    print(f"\nload average before {report['load_before']}, after {report['load_after']} ({report['cpus']} CPUs)")
    if report.get("server_queue"):
        q = report["server_queue"]
        print(f"server queue during the test: served {q['served']}, rejected {q['rejected']}, timed out "
              f"{q['timed_out']}, abandoned (client left; dropped or answer discarded) {q['abandoned']}")
    head = ("kind", "mode", "requests", "failed", "req/s", "p50 ms", "p99 ms", "mean ms", "server model ms",
            "server confidence ms", "hung up")
    rows = []
    for kind, modes in report["results"].items():
        for mode, s in modes.items():
            rows.append((kind, mode, str(s["requests"]), str(s["failed"]), f"{s['rps']:.2f}", f"{s['p50_ms']:.1f}",
                         f"{s['p99_ms']:.1f}", f"{s['mean_ms']:.1f}", f"{s['server_model_ms_mean']:.1f}",
                         "-" if s["server_confidence_ms_mean"] is None else f"{s['server_confidence_ms_mean']:.3f}",
                         str(s.get("abandoned_sent", 0))))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print()
    for kind, o in report["overhead"].items():
        cal = report["results"][kind]["calibrated"]
        print(f"{kind}: calibrated confidence overhead: end to end {100 * o['end_to_end_p50']:+.1f}% (p50), "
              f"{100 * o['end_to_end_mean']:+.1f}% (mean); on the server "
              f"{100 * o['server_confidence_over_model']:.3f}% of the model call "
              f"({cal['server_confidence_ms_mean']:.3f} ms vs {cal['server_model_ms_mean']:.1f} ms)")


def _overhead(modes: dict) -> dict:
    cal, plain = modes["calibrated"], modes["plain"]
    return {"end_to_end_p50": cal["p50_ms"] / plain["p50_ms"] - 1.0,
            "end_to_end_mean": cal["mean_ms"] / plain["mean_ms"] - 1.0,
            "server_confidence_over_model": (cal["server_confidence_ms_mean"] or 0.0) / cal["server_model_ms_mean"]}

if __name__ == "__main__":
    sys.exit(main())
