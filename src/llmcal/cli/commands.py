"""The subcommands behind ``llmcal``; each validates its input before any expensive work."""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from llmcal import __version__
from llmcal.records.run_dir import SCHEMA_VERSION, RunDir

# What makes a run folder "the same run" (resuming with another value is refused).
IDENTITY_KEYS = ("model", "model_args", "tasks", "limit", "style", "chat", "dtype", "hidden_layers")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


def _model_config(args: argparse.Namespace) -> dict[str, Any]:
    from llmcal.backends.model_args import parse_model_args

    if getattr(args, "model", "hf") == "openai":  # base_url=...,model=...: the server decides the dtype
        from llmcal.backends.openai_compat import parse_openai_args

        return parse_openai_args(args.model_args)
    margs = parse_model_args(args.model_args)
    if args.dtype:
        margs["dtype"] = args.dtype
    margs.setdefault("dtype", "float32")
    from llmcal.backends.hf import _DTYPES

    if str(margs["dtype"]).lower() not in _DTYPES:
        raise ValueError(f"dtype: unknown {margs['dtype']!r}; use float32 or bfloat16")
    return margs


def _hidden_layers(spec: str, n_layers: int | None = None) -> list[str]:
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part not in ("mid", "last") and not re.fullmatch(r"-?\d+", part):
            raise ValueError(f"--hidden_layers: {part!r} is not a layer index, 'mid' or 'last'")
        out.append(part)
    return out


def _resolve_layers(spec: list[str], n_layers: int) -> list[int]:
    out = []
    for part in spec:
        idx = n_layers // 2 if part == "mid" else -1 if part == "last" else int(part)
        if not -(n_layers + 1) <= idx <= n_layers:
            raise ValueError(f"--hidden_layers: {idx} is outside 0..{n_layers}")
        out.append(idx)
    return out


def _load_items(args: argparse.Namespace):
    from llmcal.tasks.registry import load_task

    items = []
    for spec in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        items.extend(load_task(spec, data_dir=args.data_dir, limit=args.limit))
    if not items:
        raise ValueError(f"--tasks {args.tasks!r}: no items to score")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--tasks {args.tasks!r}: the same item appears twice (a task listed twice?)")
    return items


def _run_config(args: argparse.Namespace, margs: dict[str, Any]) -> dict[str, Any]:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    pretrained = margs.get("pretrained") or margs.get("model") or ("server" if "base_url" in margs else "embedded")
    name = _slug(f"{Path(str(pretrained)).name}-{'+'.join(Path(t).stem for t in tasks)}-{args.style}"
                 f"{'-chat' if args.chat else ''}-{margs['dtype']}" + (f"-n{args.limit}" if args.limit else ""))
    return {
        "name": name,
        "model": args.model,
        "model_args": {k: v for k, v in sorted(margs.items()) if k not in ("batch_size",)},
        "tasks": tasks,
        "limit": args.limit,
        "style": args.style,
        "chat": bool(args.chat),
        "dtype": str(margs["dtype"]),
        "hidden_layers": _hidden_layers(args.hidden_layers),
        "max_tokens": args.max_tokens,
        "data_dir": args.data_dir,
    }


def _open_specs(args: argparse.Namespace) -> list[str] | None:
    """The task specs when every one is open-ended; None when all are multiple-choice."""
    from llmcal.tasks.open_tasks import open_task_name

    specs = [t.strip() for t in args.tasks.split(",") if t.strip()]
    is_open = [open_task_name(t) is not None for t in specs]
    if any(is_open) and not all(is_open):
        raise ValueError(f"--tasks {args.tasks!r}: mixes open-ended and multiple-choice tasks; run them separately")
    return specs if specs and all(is_open) else None


def _load_backend(args: argparse.Namespace, margs: dict[str, Any], quiet: bool):
    """The run's backend: an OpenAI-compatible server, or a transformers model (no hidden layers yet)."""
    if args.model == "openai":
        from llmcal.backends.openai_compat import OpenAIBackend

        return OpenAIBackend.load(**margs)
    from llmcal.backends.hf import HFBackend

    if not quiet:
        print(f"loading {margs.get('pretrained') or 'the embedded SmolLM2-135M-Instruct'} "
              f"({margs['dtype']}) ...", flush=True)
    kwargs = {k: v for k, v in margs.items() if k != "batch_size"}
    return HFBackend.load(max_tokens=args.max_tokens, hidden_layers=(), **kwargs)


def _measure(args: argparse.Namespace) -> RunDir:
    from llmcal.pipeline.measure import measure

    if _open_specs(args):
        return _measure_open(args)
    margs = _model_config(args)
    config = _run_config(args, margs)
    items = _load_items(args)  # every item validated before the model is loaded
    run = RunDir(args.output_path or Path("runs") / config["name"])
    resumed = run.start(config, IDENTITY_KEYS, overwrite=args.overwrite)
    quiet = getattr(args, "quiet", False)

    def factory():
        backend = _load_backend(args, margs, quiet)
        if args.model != "openai":  # no hidden states over an API
            backend.hidden_layers = tuple(_resolve_layers(config["hidden_layers"], backend.n_layers))
        meta = run.config()
        meta["model_desc"] = backend.model_name
        meta["backend"] = backend.describe()
        meta["backend"]["fingerprint"] = backend.fingerprint()
        run.config_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return backend

    if resumed and not quiet:
        print(f"resuming {run.path}", flush=True)
    start = time.perf_counter()
    n_new = measure(run, items, factory, style=args.style, chat=args.chat, progress=not quiet)
    if not quiet:
        took = time.perf_counter() - start
        print(f"scored {n_new} new items in {took:.1f} s ({len(items)} in the run)", flush=True)
    return run


def _open_settings(args: argparse.Namespace):
    from llmcal.pipeline.measure_open import OpenSettings

    return OpenSettings(families=tuple(f.strip() for f in args.signals.split(",") if f.strip()),
                        k_samples=args.k_samples, sample_temperature=args.sample_temperature,
                        max_new_tokens=args.max_new_tokens, chat=not args.no_chat, seed=getattr(args, "seed", 0))


def _measure_open(args: argparse.Namespace) -> RunDir:
    """Generate, grade and compute every signal of open-ended tasks (``pipeline/measure_open``)."""
    from llmcal.pipeline.measure_open import measure_open
    from llmcal.tasks.open_tasks import load_open_task

    margs = _model_config(args)
    settings = _open_settings(args)
    items = []
    for spec in _open_specs(args) or []:
        items.extend(load_open_task(spec, data_dir=args.data_dir, limit=args.limit))
    config = _run_config(args, margs)
    config.update(kind="open", chat=settings.chat, hidden_layers=[], open_settings=settings.to_dict())
    config["name"] = config["name"].replace("-cloze", "-open")
    run = RunDir(args.output_path or Path("runs") / config["name"])
    resumed = run.start(config, IDENTITY_KEYS + ("open_settings",), overwrite=args.overwrite)
    quiet = getattr(args, "quiet", False)

    def factory():
        backend = _load_backend(args, margs, quiet)  # over an API the server generates
        meta = run.config()
        meta["model_desc"] = backend.model_name
        meta["backend"] = backend.describe()
        run.config_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return backend

    if resumed and not quiet:
        print(f"resuming {run.path}", flush=True)
    start = time.perf_counter()
    n_new = measure_open(run, items, factory, settings, progress=not quiet)
    if not quiet:
        print(f"answered {n_new} new items in {time.perf_counter() - start:.1f} s ({len(items)} in the run)",
              flush=True)
    return run


def _calibrate_open(run: RunDir, args: argparse.Namespace) -> dict[str, Any]:
    from llmcal.pipeline.evaluate_open import evaluate_open, signals_table

    config = run.config()
    calibrator = [c.strip() for c in args.calibrators.split(",") if c.strip()][0]
    if calibrator == "temperature":  # no option logits in free-form answers: Platt is its binary analogue
        calibrator = "platt"
    results, serving = evaluate_open(run.read_samples(), calibrator=calibrator, cal_fraction=args.cal_fraction,
                                     seed=args.seed, n_bins=args.n_bins, n_bootstrap=args.bootstrap)
    payload = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "config": config, "versions": _versions(), "git_hash": _git_hash(), **results}
    run.write_json(run.results_path, payload)
    run.write_json(run.calibration_path, {
        "schema_version": SCHEMA_VERSION, "kind": "open", "threshold": args.threshold,
        "chat": config.get("chat"), "model_args": config.get("model_args"), "generation": serving,
    })
    if not getattr(args, "quiet", False):
        print(f"{run.path}: accuracy {results['overall']['accuracy']:.3f} on {results['overall']['n']} items "
              f"(test part: {results['split']['n_test']})")
        print(signals_table(results))
    return payload


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"llmcal": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _calibrate(run: RunDir, args: argparse.Namespace) -> dict[str, Any]:
    config = run.config()
    if config.get("kind") == "open":
        return _calibrate_open(run, args)
    from llmcal.calibrators import CALIBRATORS
    from llmcal.pipeline.evaluate import evaluate

    names = [c.strip() for c in args.calibrators.split(",") if c.strip()]
    for c in names:
        if c not in CALIBRATORS:
            raise ValueError(f"--calibrators: unknown {c!r}; known: {', '.join(sorted(CALIBRATORS))}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    samples = run.read_samples()
    results, fitted = evaluate(samples, calibrators=names, cal_fraction=args.cal_fraction, seed=args.seed,
                               n_bins=args.n_bins, threshold=args.threshold, n_bootstrap=args.bootstrap,
                               target_error=args.target_error, risk_delta=args.risk_delta)
    payload = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "calibration_config": {"calibrators": names, "cal_fraction": args.cal_fraction, "seed": args.seed,
                               "threshold": args.threshold, "n_bins": args.n_bins, "bootstrap": args.bootstrap,
                               "target_error": args.target_error, "risk_delta": args.risk_delta},
        "versions": _versions(),
        "git_hash": _git_hash(),
        **results,
    }
    run.write_json(run.results_path, payload)
    run.write_json(run.calibration_path, {
        "schema_version": SCHEMA_VERSION, "signal": results["primary"]["signal"],
        "primary": results["primary"]["calibrator"], "threshold": args.threshold,
        "style": config.get("style"), "chat": config.get("chat"), "model_args": config.get("model_args"),
        "calibrators": fitted,
    })
    if not getattr(args, "quiet", False):
        from llmcal.report.terminal import print_summary

        print_summary(payload, str(run.path))
    return payload


def _report(run: RunDir) -> Path:
    from llmcal.report.html import render_html

    if not run.results_path.exists():
        raise FileNotFoundError(f"{run.results_path}: not found; run `llmcal calibrate {run.path}` first")
    results = json.loads(run.results_path.read_text())
    if results.get("kind") == "open":
        from llmcal.report.open_html import render_open_html as render
    else:
        render = render_html
    run.report_path.write_text(render(results, results.get("config", {})), encoding="utf-8")
    return run.report_path


def cmd_run(args: argparse.Namespace) -> int:
    run = _measure(args)
    _calibrate(run, args)
    from llmcal.cli.probe_commands import run_hook

    run_hook(run.path, args)
    if not args.no_report:
        path = _report(run)
        if not args.quiet:
            print(f"report: {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``llmcal sweep``: the temperature sweep over open-ended tasks (``pipeline/sweep``)."""
    from llmcal.pipeline.sweep import plot_sweep, sweep_table, temperature_sweep
    from llmcal.tasks.open_tasks import load_open_task

    specs = _open_specs(args)
    if not specs:
        raise ValueError(f"--tasks {args.tasks!r}: the sweep needs open-ended tasks (builtin_open, nq_open, ...)")
    try:
        temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--temperatures: expected numbers, got {args.temperatures!r}") from None
    if not temps or any(t < 0 for t in temps):
        raise ValueError(f"--temperatures: need non-negative temperatures, got {args.temperatures!r}")
    margs = _model_config(args)
    settings = _open_settings(args)
    items = [it for spec in specs for it in load_open_task(spec, data_dir=args.data_dir, limit=args.limit)]
    config = _run_config(args, margs)
    out = Path(args.output_path or Path("runs") / (config["name"].replace("-cloze", "-sweep")))

    def factory():
        from llmcal.backends.hf import HFBackend

        kwargs = {k: v for k, v in margs.items() if k != "batch_size"}
        return HFBackend.load(max_tokens=args.max_tokens, hidden_layers=(), **kwargs)

    sweep = temperature_sweep(out, items, factory, settings, temps, config, progress=not args.quiet,
                              n_bootstrap=args.bootstrap)
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2))
    table = sweep_table(sweep)
    (out / "sweep.md").write_text(table + "\n")
    png = plot_sweep(sweep, out / "sweep.png")
    if not args.quiet:
        print(table)
        print(f"plot: {png}")
    return 0


def cmd_import_lmeval(args: argparse.Namespace) -> int:
    """``llmcal import-lmeval``: a run folder from lm-eval's logged samples, then calibrate and report."""
    from llmcal.records.lmeval_import import read_lmeval_samples

    records = read_lmeval_samples(args.samples)  # every line checked before anything is written
    tasks = sorted({r["task"] for r in records})
    config = {"name": Path(args.output_path).name, "model": "lm-eval import", "model_desc": "lm-eval --log_samples",
              "model_args": {}, "tasks": tasks, "limit": None, "style": "lm-eval", "chat": False,
              "dtype": "n/a", "hidden_layers": [], "sources": [str(Path(p).resolve()) for p in args.samples]}
    run = RunDir(args.output_path)
    if run.start(config, ("model", "tasks", "sources"), overwrite=args.overwrite):
        raise ValueError(f"{run.path} already holds samples; use --overwrite to import again")
    run.append(records, None)
    _calibrate(run, args)
    if not args.no_report:
        path = _report(run)
        if not args.quiet:
            print(f"report: {path}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    _measure(args)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    _calibrate(RunDir(args.run_dir), args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(_report(RunDir(args.run_dir)))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from llmcal.tasks.registry import available_tasks

    for name in available_tasks():
        print(name)
    return 0


def _latest_run(root: Path = Path("runs")) -> RunDir:
    found = sorted(root.glob("*/calibration.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no calibrated run under {root}/; run `llmcal run` first or pass --run")
    return RunDir(found[-1].parent)


def cmd_ask(args: argparse.Namespace) -> int:
    import numpy as np

    from llmcal.calibrators import from_dict
    from llmcal.policy import Thresholds, decide
    from llmcal.signals.mc import mc_signals, softmax
    from llmcal.tasks.item import MCItem
    from llmcal.tasks.prompts import build_request

    if not args.choices:
        raise ValueError("--choices is required for now (free-form answers need the generation "
                         "signals): e.g. --choices 'Paris;Lyon;Marseille'")
    choices = tuple(c.strip() for c in args.choices.split(";") if c.strip())
    if len(choices) < 2:
        raise ValueError(f"--choices: need at least 2 choices separated by ';', got {args.choices!r}")
    run = RunDir(args.run) if args.run else _latest_run()
    if not run.calibration_path.exists():
        raise FileNotFoundError(f"{run.calibration_path}: not found; run `llmcal run` first")
    saved = json.loads(run.calibration_path.read_text())
    thresholds = Thresholds(high=args.high, abstain=args.threshold if args.threshold is not None
                            else saved.get("threshold", 0.75))
    item = MCItem("ask", "ask", args.question, choices, 0)

    from llmcal.backends.hf import HFBackend

    margs = {k: v for k, v in (saved.get("model_args") or {}).items() if k != "batch_size"}
    if "base_url" in margs:  # a run scored through an OpenAI-compatible server
        from llmcal.backends.openai_compat import OpenAIBackend

        backend = OpenAIBackend.load(**margs)
    else:
        backend = HFBackend.load(hidden_layers=(), **margs)
    chat = backend.apply_chat_template if saved.get("chat") else None
    (score,) = backend.score_mc([build_request(item, saved.get("style", "cloze"), chat)])
    pred, signals = mc_signals(score.logprobs, score.n_tokens)
    primary = saved.get("primary")
    probs = softmax(score.logprobs)
    conf = signals["option_prob"]
    if primary == "temperature":
        # one temperature for any number of options: softmax(ll / T)
        probs = softmax(score.logprobs / float(from_dict(saved["calibrators"][primary]).temperature_))
        conf = float(probs[pred])
    elif primary:
        conf = float(from_dict(saved["calibrators"][primary]).predict(np.array([conf]))[0])
    d = decide(conf, choices[pred], list(zip(choices, probs.tolist())), thresholds)
    if args.json:
        print(json.dumps({**d.to_dict(), "calibrator": primary, "signal": saved.get("signal"),
                          "raw_confidence": signals["option_prob"], "run": str(run.path)}, indent=2))
        return 0
    from rich.console import Console

    console = Console()
    width = 30
    filled = int(round(conf * width))
    console.print(f"[bold]{args.question}[/bold]")
    if d.answer is not None:
        console.print(f"Answer: [bold]{d.answer}[/bold]")
    console.print(f"[{d.colour}]{'█' * filled}[/{d.colour}]{'░' * (width - filled)} "
                  f"[{d.colour}]{100 * conf:.0f}% ({d.level})[/{d.colour}]")
    console.print(f"[{d.colour}]{d.sentence}[/{d.colour}]")
    if d.abstained:
        alts = sorted(zip(choices, probs.tolist()), key=lambda c: -c[1])[:3]
        console.print("[dim]Most likely, for reference: " + ", ".join(f"{t} ({100 * p:.0f}%)" for t, p in alts) + "[/dim]")
    console.print(f"[dim]calibrated by {primary or 'none'} from {run.path}[/dim]")
    return 0
