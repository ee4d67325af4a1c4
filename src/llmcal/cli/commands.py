"""The subcommands behind ``llmcal``: each parses its arguments into the library's shapes and calls it.

No orchestration lives here: ``run``, ``measure``, ``calibrate`` and ``report`` are the
stages of :mod:`llmcal.pipeline.run`, ``sweep`` is :mod:`llmcal.pipeline.sweep`,
``import-lmeval`` is :mod:`llmcal.pipeline.lmeval_import`, ``ask`` is
:mod:`llmcal.pipeline.ask`.  Every check happens in those calls, before any expensive work.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmcal.pipeline.config import RunConfig


def _names(spec: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (spec or "").split(",") if t.strip())


def run_config(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` that a subcommand's arguments ask for (absent arguments keep the defaults)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    fields: dict[str, Any] = {}
    for name in ("model", "model_args", "data_dir", "limit", "style", "dtype", "max_tokens", "k_samples",
                 "sample_temperature", "max_new_tokens", "signal", "cal_fraction", "seed", "threshold",
                 "target_error", "risk_delta", "n_bins", "bootstrap", "output_path"):
        if get(name) is not None:
            fields[name] = get(name)
    for name in ("chat", "overwrite"):
        fields[name] = bool(get(name, False))
    for name, field in (("tasks", "tasks"), ("calibrators", "calibrators"), ("signals", "open_signals"),
                        ("hidden_layers", "hidden_layers")):
        if get(name) is not None:
            fields[field] = _names(get(name))
    fields["open_chat"] = not get("no_chat", False)
    fields["report"] = not get("no_report", False)
    fields["quiet"] = bool(get("quiet", False))
    if get("probe", False):
        from llmcal.cli.probe_commands import probe_config

        fields["probe"] = probe_config(args, prefix="probe_")
    return RunConfig(**fields)


def cmd_run(args: argparse.Namespace) -> int:
    from llmcal.pipeline.run import run

    run(run_config(args))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from llmcal.pipeline.run import measure_run

    measure_run(run_config(args))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from llmcal.pipeline.run import calibrate_run
    from llmcal.records.run_dir import RunDir

    calibrate_run(RunDir(args.run_dir), run_config(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from llmcal.pipeline.run import report_run
    from llmcal.records.run_dir import RunDir

    print(report_run(RunDir(args.run_dir)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``llmcal sweep``: the temperature sweep over open-ended tasks (``pipeline/sweep``)."""
    from llmcal.pipeline.sweep import parse_temperatures, run_sweep

    temps = parse_temperatures(args.temperatures)
    sweep, paths = run_sweep(run_config(args), temps)
    if not args.quiet:
        print(paths["table"].read_text().rstrip())
        print(f"plot: {paths['plot']}")
    return 0


def cmd_import_lmeval(args: argparse.Namespace) -> int:
    """``llmcal import-lmeval``: a run folder from lm-eval's logged samples, then calibrate and report."""
    from llmcal.pipeline.lmeval_import import import_lmeval

    path = import_lmeval(args.samples, run_config(args))
    if path is not None and not args.quiet:
        print(f"report: {path}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from llmcal.tasks.registry import describe_tasks

    for t in describe_tasks():
        print(f"{t['name']:<18} {t['kind']:<5} {t.get('description', '')}".rstrip())
    return 0


def cmd_signals(args: argparse.Namespace) -> int:
    from llmcal.signals.registry import describe_signals

    rows = describe_signals(args.kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<20} {r['kind']:<5} {r['family'] or '(always)':<19} {r['cost']:<22} {r['citation']}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from llmcal.pipeline.ask import ask_mc, latest_run

    if not args.choices:
        raise ValueError("--choices is required for now (free-form answers need the generation "
                         "signals): e.g. --choices 'Paris;Lyon;Marseille'")
    choices = tuple(c.strip() for c in args.choices.split(";") if c.strip())
    if len(choices) < 2:
        raise ValueError(f"--choices: need at least 2 choices separated by ';', got {args.choices!r}")
    run = Path(args.run) if args.run else latest_run()
    out = ask_mc(args.question, choices, run, threshold=args.threshold, high=args.high)
    d = out["decision"]
    if args.json:
        print(json.dumps({**d.to_dict(), "calibrator": out["calibrator"], "signal": out["signal"],
                          "raw_confidence": out["raw_confidence"], "run": str(run)}, indent=2))
        return 0
    from rich.console import Console

    console = Console()
    conf, width = out["confidence"], 30
    filled = int(round(conf * width))
    console.print(f"[bold]{args.question}[/bold]")
    if d.answer is not None:
        console.print(f"Answer: [bold]{d.answer}[/bold]")
    console.print(f"[{d.colour}]{'█' * filled}[/{d.colour}]{'░' * (width - filled)} "
                  f"[{d.colour}]{100 * conf:.0f}% ({d.level})[/{d.colour}]")
    console.print(f"[{d.colour}]{d.sentence}[/{d.colour}]")
    if d.abstained:
        alts = sorted(zip(choices, out["probs"].tolist()), key=lambda c: -c[1])[:3]
        console.print("[dim]Most likely, for reference: " + ", ".join(f"{t} ({100 * p:.0f}%)" for t, p in alts) + "[/dim]")
    console.print(f"[dim]calibrated by {out['calibrator'] or 'none'} from {run}[/dim]")
    return 0

