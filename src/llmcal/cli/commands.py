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
                 "sample_temperature", "max_new_tokens", "nli_model", "signal", "cal_fraction", "threshold",
                 "target_error", "risk_delta", "n_bins", "bootstrap", "output_path",
                 "num_fewshot", "system_instruction", "gen_kwargs", "device", "batch_size"):
        if get(name) is not None:
            fields[name] = get(name)
    # lm-eval's --seed seeds random/numpy/torch; the split's seed is --split_seed (RunConfig.seed)
    if get("split_seed") is not None:
        fields["seed"] = get("split_seed")
    if get("seed") is not None:
        fields["random_seed"] = get("seed")
    if get("include_path"):
        fields["include_path"] = _names(get("include_path"))
    for name in ("fewshot_as_multiturn", "log_samples"):
        fields[name] = bool(get(name, False))
    for name in ("chat", "overwrite"):
        fields[name] = bool(get(name, False))
    for name, field in (("tasks", "tasks"), ("calibrators", "calibrators"), ("signals", "open_signals"),
                        ("hidden_layers", "hidden_layers")):
        if get(name) is not None:
            fields[field] = _names(get(name))
    if get("fields"):  # --fields: the mapping travels in each file task's spec (my.csv[question=...])
        from llmcal.tasks.formats import fields_spec
        from llmcal.tasks.registry import with_fields

        fields["tasks"] = with_fields(fields.get("tasks", ("builtin",)), fields_spec(get("fields")))
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

    if getattr(args, "adapt", None) and not getattr(args, "from_run", None):
        raise ValueError("--adapt: needs --from SOURCE_RUN (the calibration to adapt to RUN_DIR)")
    if getattr(args, "from_run", None):
        return _calibrate_from(args)
    calibrate_run(RunDir(args.run_dir), run_config(args))
    return 0


def _calibrate_from(args: argparse.Namespace) -> int:
    """``llmcal calibrate TARGET --from SOURCE [--adapt unlabeled]``: :func:`llmcal.transfer`, printed."""
    from llmcal.pipeline.transfer import transfer

    r = transfer(args.from_run, args.run_dir, adapt=args.adapt, estimator=args.estimator,
                 cal_fraction=args.cal_fraction, seed=getattr(args, "split_seed", getattr(args, "seed", None)),
                 n_bins=args.n_bins, n_bootstrap=args.bootstrap)
    if not args.quiet:
        n = r.results["split"]["n_test"]
        print(f"{r.source} applied to {r.target} ({n} test items):")
        print(r.table())
        if r.flagged:
            print("flagged (no better than the constant): " + ", ".join(r.flagged))
        print(f"written: {r.path}")
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

    from llmcal.backends.model_args import parse_model_args

    margs = parse_model_args(args.model_args) if args.model_args else None
    path = import_lmeval(args.samples, run_config(args), model_args=margs)
    if path is not None and not args.quiet:
        print(f"report: {path}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from llmcal.tasks.registry import OTHER_SPECS, check_data_dir, describe_tasks

    root, missing, why = check_data_dir(getattr(args, "data_dir", None))
    if getattr(args, "data_dir", None) and root is None:
        raise ValueError(why)
    print(f"data folder: {root}" if root else f"data folder: none ({why})")
    for t in describe_tasks(getattr(args, "kind", None)):
        lacks = missing.get(t["name"], [])
        state = "embedded" if t["source"] == "embedded" else ("missing " + ", ".join(lacks) if lacks else "ready")
        print(f"{t['name']:<16} {t['kind']:<5} {state:<14} {t.get('description', '')}".rstrip())
    from llmcal.tasks.registry import GROUP_PER_TASK, TASK_GROUPS

    print("\ntask groups (balanced: --limit N items from each member, default %d):" % GROUP_PER_TASK)
    for name, members in TASK_GROUPS.items():
        lacks = sorted({f for m in members for f in missing.get(m, [])})
        state = "missing " + ", ".join(lacks) if lacks else "ready"
        print(f"{name:<16} {'mc':<5} {state:<14} {' + '.join(members)}")
    print("\nother task specs:")
    for syntax, kind, what in OTHER_SPECS:
        print(f"  {syntax}\n      {kind}: {what}")
    return 0


def cmd_signals(args: argparse.Namespace) -> int:
    from llmcal.signals.registry import describe_signals

    rows = describe_signals(args.kind)
    model = getattr(args, "model", None)
    if model:  # what this backend can supply (an API backend sees only the server's top-k log-probabilities)
        from llmcal.backends.registry import backend_class
        from llmcal.signals.registry import SIGNALS, availability

        caps = backend_class(model).capabilities
        for r in rows:
            r["available"] = availability(SIGNALS[r["name"]], caps, approximate_entropy="hidden_states" not in caps,
                                          nli_model=bool(getattr(args, "nli_model", None)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from llmcal.signals.registry import SIGNALS, needs

    for r in rows:
        line = (f"{r['name']:<22} {r['kind']:<5} {r['family'] or '(always)':<19} {r['cost']:<18} "
                f"{', '.join(needs(SIGNALS[r['name']])):<40} {r['citation']}")
        print(line + (f"  [{r['available']}]" if model else ""))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import sys

    from llmcal.pipeline.ask import ask_mc, choose_run

    if not args.choices:
        raise ValueError("--choices is required for now (free-form answers need the generation "
                         "signals): e.g. --choices 'Paris;Lyon;Marseille'")
    choices = tuple(c.strip() for c in args.choices.split(";") if c.strip())
    if len(choices) < 2:
        raise ValueError(f"--choices: need at least 2 choices separated by ';', got {args.choices!r}")
    run = Path(args.run) if args.run else choose_run()  # several calibrated runs: --run is required
    if not args.run:
        print(f"llmcal ask: using {run} (the only calibrated run under runs/)", file=sys.stderr)
    out = ask_mc(args.question, choices, run, threshold=args.threshold, high=args.high)
    d = out["decision"]
    if args.json:
        print(json.dumps({**d.to_dict(), "calibrator": out["calibrator"], "signal": out["signal"],
                          "raw_confidence": out["raw_confidence"], "run": str(run)}, indent=2))
        return 0
    from llmcal.report.terminal import console as plain_console

    console = plain_console()  # colour for the meter and its sentence only, no cyan numbers
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

