"""``llmcal monitor DB`` and ``llmcal calibrate --from-feedback DB --run RUN``: the answer log's commands.

    llmcal monitor sqlite:///runs/serve.db --run runs/NAME          # ECE, coverage, drift alarm
    llmcal monitor runs/serve.db --json                             # the same as /v1/monitor
    llmcal calibrate --from-feedback runs/serve.db --run runs/NAME --reload http://127.0.0.1:8000

Both need the ``store`` extra (SQLAlchemy, alembic; ``postgres`` for PostgreSQL).  See docs/serve.md,
"Answer log, feedback and monitoring".  ``monitor`` exits 1 when the drift alarm is raised.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``monitor``, and ``--from-feedback`` to ``calibrate``."""
    p = subparsers.add_parser("monitor", help="calibration of the served answers over their feedback; "
                                              "drift alarm (exit 1)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db", help="the answer log: sqlite:///PATH, a path, or postgresql://USER@HOST:PORT/NAME")
    p.add_argument("--run", default=None, help="the served run folder (its held-out ECE is the drift baseline)")
    p.add_argument("--baseline_ece", "--baseline-ece", type=float, default=None,
                   help="the ECE the calibration was accepted with (default: from --run)")
    p.add_argument("--window", type=float, default=3600.0, help="seconds a time window spans (default 3600)")
    p.add_argument("--since", default=None, help="only answers from this time (ISO 8601, UTC, or unix seconds)")
    p.add_argument("--n_bins", "--n-bins", type=int, default=10, help="reliability bins (default 10)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_monitor)

    cal = subparsers.choices["calibrate"]
    g = cal.add_argument_group("refit on the answer log's feedback (docs/serve.md)")
    g.add_argument("--from_feedback", "--from-feedback", metavar="DB", default=None,
                   help="refit the run's calibration on the labeled answers in this answer log; the held-out "
                        "check must pass; writes a new calibration version (calibrators: platt, isotonic, "
                        "histogram, beta)")
    g.add_argument("--run", dest="feedback_run", default=None, help="with --from-feedback: the run folder")
    g.add_argument("--held_out", "--held-out", type=float, default=0.3,
                   help="with --from-feedback: fraction of labeled answers held out for the check (default 0.3)")
    g.add_argument("--last", type=int, default=None, help="with --from-feedback: only the last N labeled answers")
    g.add_argument("--feedback_since", "--feedback-since", default=None,
                   help="with --from-feedback: only answers from this time (ISO 8601, UTC, or unix seconds)")
    g.add_argument("--reload", default=None, metavar="URL",
                   help="with --from-feedback: POST URL/admin/reload afterwards (a running llmcal serve)")
    g.add_argument("--reload_key_env", "--reload-key-env", default="LLMCAL_API_KEY",
                   help="environment variable with the serve API key for --reload (default LLMCAL_API_KEY)")
    g.add_argument("--dry_run", "--dry-run", action="store_true", help="with --from-feedback: check, write nothing")
    cal.set_defaults(func=cmd_calibrate)


def parse_time(text: str | None, flag: str) -> float | None:
    """``--since``: unix seconds or an ISO 8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{flag} {text!r}: not a time (ISO 8601 like 2026-01-31T12:00, or unix seconds)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def _open_log(db: str):
    from llmcal.records.answer_log import AnswerLog

    return AnswerLog(db)


def cmd_monitor(args: argparse.Namespace) -> int:
    from llmcal.pipeline.monitor import format_summary, monitor_summary

    if args.n_bins < 1:
        raise ValueError(f"--n_bins must be >= 1, got {args.n_bins}")
    with _open_log(args.db) as lg:
        summary = monitor_summary(lg, run_dir=args.run, baseline=args.baseline_ece, window_s=args.window,
                                  n_bins=args.n_bins, since=parse_time(args.since, "--since"))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 1 if summary["drift"]["alarm"] else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate``: ``--from-feedback`` here, everything else as before (``commands.cmd_calibrate``)."""
    if args.from_feedback is None:
        if args.feedback_run is not None:
            raise ValueError("calibrate --run: only with --from-feedback DB (otherwise give the run folder)")
        if args.run_dir is None:
            raise ValueError("calibrate: give the run folder (RUN_DIR), or --from-feedback DB --run RUN")
        from llmcal.cli.commands import cmd_calibrate as calibrate_run_dir

        return calibrate_run_dir(args)
    return cmd_from_feedback(args)


def _split_seed(args: argparse.Namespace) -> int:
    """The calibrate arguments' split seed (``--split_seed``; older parsers called it ``--seed``)."""
    seed = getattr(args, "split_seed", None)
    if seed is None:
        seed = getattr(args, "seed", None)
    return int(seed or 0)


def cmd_from_feedback(args: argparse.Namespace) -> int:
    from llmcal.pipeline.feedback_fit import FEEDBACK_CALIBRATORS, fit_from_feedback, request_reload

    run = args.feedback_run or args.run_dir
    if run is None:
        raise ValueError("calibrate --from-feedback: give the run folder (--run RUN)")
    if args.feedback_run and args.run_dir and args.feedback_run != args.run_dir:
        raise ValueError(f"calibrate --from-feedback: two run folders given ({args.run_dir}, "
                         f"--run {args.feedback_run})")
    names = ([c.strip() for c in args.calibrators.split(",") if c.strip()] if args.calibrators
             else list(FEEDBACK_CALIBRATORS))
    with _open_log(args.from_feedback) as lg:
        fit = fit_from_feedback(lg, run, calibrators=names, held_out=args.held_out, seed=_split_seed(args),
                                n_bins=args.n_bins, last=args.last,
                                since=parse_time(args.feedback_since, "--feedback_since"), write=not args.dry_run)
    verdict = "passed" if fit.passed else "FAILED"
    scores = ", ".join(f"{k} {'not fitted' if v is None else f'{v:.4f}'}" for k, v in fit.cv_brier.items())
    print(f"refit on {fit.n_fit} labeled answers ({fit.signal}): {fit.calibrator} (5-fold Brier: {scores})")
    print(f"held-out check ({fit.n_held_out} answers): ECE {fit.held_out_ece_before:.4f} as served -> "
          f"{fit.held_out_ece_after:.4f} refit: {verdict}")
    if not fit.passed:
        print(f"{run}/calibration.json unchanged (version {fit.previous_version})")
        return 1
    if not fit.written:
        print("dry run: nothing written")
        return 0
    print(f"{run}/calibration.json: version {fit.previous_version} -> {fit.version} "
          f"(the previous one kept in calibration-versions/)")
    if args.reload:
        key = os.environ.get(args.reload_key_env) or None
        answer = request_reload(args.reload, key)
        print(f"reloaded {args.reload}: {json.dumps(answer)}")
    return 0
