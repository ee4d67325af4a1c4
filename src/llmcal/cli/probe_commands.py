"""``llmcal probe`` and ``llmcal combine``: the external confidence model on a run folder.

* ``llmcal probe RUN_DIR``: fit the probe on the run's calibration part (the same
  seeded split as ``llmcal calibrate``), print internal vs external vs combined on
  the test part, save ``probe.json`` + ``probe.npz`` (into the run folder or
  ``--out``) and ``probe_results.json``.
* ``llmcal probe RUN_DIR --apply PROBE_JSON``: score a run with a saved probe
  (refused, with the reason, when the run comes from another model or lacks the
  probe's layers).
* ``llmcal probe --shift RUN_DIR RUN_DIR ...``: the task-shift matrix and the
  learning curve over several runs of one model; writes ``probe_shift.json`` and
  ``probe_shift.md`` into ``--out``.
* ``llmcal combine RUN_DIR``: fit the stacked combination and its calibrator and
  write ``combined`` (and ``external``) into the run's ``results.json``, beside
  the calibrators of ``llmcal calibrate``, plus the ``probe`` section the report
  renders.

Nothing heavy is imported until a command runs (no torch, no sklearn at import).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


# ------------------------------------------------------------------ parsers
def _add_probe_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("probe")
    g.add_argument(f"--{prefix}kind", default="logistic", choices=["logistic", "mlp"],
                   help="probe model: logistic regression (scikit-learn) or a small MLP (torch); default logistic")
    g.add_argument(f"--{prefix}layers", default="all",
                   help="hidden-state layers the probe reads, among those the run kept: 'all' (default), "
                        "'none' (cheap features only), or indices / 'mid' / 'last', comma-separated")
    g.add_argument(f"--{prefix}positions", default="auto",
                   help="token positions read at each layer: 'auto' (default: answer_mean when the run kept it, "
                        "else last_prompt), 'all', or 'last_prompt', 'answer_mean' (mean over the answer's "
                        "tokens), comma-separated")
    g.add_argument(f"--{prefix}components", default="16",
                   help="principal components kept of the hidden block (default 16; 'all' = no reduction)")
    g.add_argument(f"--{prefix}no_cheap", action="store_true",
                   help="leave out the cheap input/output features (lengths, internal signals)")
    g.add_argument(f"--{prefix}calibrator", default="platt",
                   help="calibrator after the stacker: platt (default), isotonic, beta, histogram, temperature")


def _add_split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("split and intervals")
    g.add_argument("--cal_fraction", "--cal-fraction", type=float, default=None,
                   help="fraction used to fit (default: the run's results.json, else 0.5)")
    g.add_argument("--seed", type=int, default=None, help="split seed (default: the run's results.json, else 0)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0 = none)")
    g.add_argument("--quiet", action="store_true")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``probe`` and ``combine`` subcommands to ``llmcal``'s parser."""
    p = subparsers.add_parser("probe", help="fit the external confidence probe on a run's hidden states",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    _add_probe_args(p)
    _add_split_args(p)
    p.add_argument("--out", default=None,
                   help="probe: where probe.json/.npz go (default: the run folder); "
                        "--shift: folder for probe_shift.json/.md (default: runs/probe_shift)")
    p.add_argument("--apply", metavar="PROBE_JSON", default=None,
                   help="score the run(s) with a saved probe instead of fitting one")
    p.add_argument("--shift", action="store_true",
                   help="task-shift matrix + learning curve over the run folders (one task each or more)")
    p.add_argument("--no_learning_curve", "--no-learning-curve", action="store_true",
                   help="with --shift: skip the learning curve")
    p.add_argument("--repeats", type=int, default=3, help="with --shift: learning-curve repeats (default 3)")
    p.add_argument("--sizes", default="50,100,250,500,1000", help="with --shift: learning-curve sizes")
    p.add_argument("--extra_probes", default="", help="with --shift: also report these probe kinds, e.g. mlp")
    p.add_argument("--no_fingerprint", action="store_true",
                   help="do not load the model to fingerprint runs that did not record one "
                        "(the artifact then cannot be checked against other weights of the same name)")

    p = subparsers.add_parser("combine", help="fit `combined` (internal signals + probe, stacked and calibrated) "
                                              "and add it to the run's results.json")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_probe_args(p)
    _add_split_args(p)
    p.add_argument("--out", default=None, help="where probe.json/.npz go (default: the run folder)")
    p.add_argument("--no_fingerprint", action="store_true", help=argparse.SUPPRESS)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options of ``llmcal run`` for the probe step (``--probe`` turns it on)."""
    p.add_argument("--probe", action="store_true",
                   help="also fit the external probe and `combined` on the hidden states (llmcal combine)")
    _add_probe_args(p, prefix="probe_")


# ------------------------------------------------------------------ helpers
def probe_config(args: argparse.Namespace, prefix: str = ""):
    """The :class:`~llmcal.pipeline.config.ProbeConfig` that the probe options (``--{prefix}kind`` ...) ask for."""
    from llmcal.pipeline.config import ProbeConfig

    get = lambda k: getattr(args, prefix + k)  # noqa: E731
    return ProbeConfig(kind=get("kind"), layers=str(get("layers")), positions=str(get("positions")),
                       components=str(get("components")), cheap=not get("no_cheap"), calibrator=get("calibrator"))


def _say(args: argparse.Namespace):
    if getattr(args, "quiet", False):
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _print_methods(res: dict[str, Any], title: str) -> None:
    from llmcal.probe.tables import f3, methods_table

    print(f"\n{title}\n")
    print(methods_table(res["methods"]))
    if res.get("best_single"):
        comb = res["methods"].get("combined", {})
        print(f"\nbest single signal by AUROC: {res['best_single']} {f3(res['best_single_auroc'])}; "
              f"combined {f3(comb.get('auroc'))}")


# ------------------------------------------------------------------ commands
def cmd_probe(args: argparse.Namespace) -> int:
    if args.apply:
        return _cmd_apply(args)
    if args.shift:
        return _cmd_shift(args)
    if len(args.run_dirs) != 1:
        raise ValueError("give one RUN_DIR (or several with --shift / --apply)")
    from llmcal.pipeline.probe_step import fit_in_task, save_artifact, write_clean

    run_dir = Path(args.run_dirs[0])
    res, fitted, _ = fit_in_task(run_dir, probe_config(args), args.cal_fraction, args.seed, args.bootstrap,
                                 fingerprint=not args.no_fingerprint, say=_say(args))
    art_path = save_artifact(fitted, res, run_dir, args.out)
    res["artifact"] = str(art_path)
    out = write_clean(run_dir, "probe_results.json", res)
    if not args.quiet:
        _print_methods(res, f"test part of {run_dir} ({res['split']['n_test']} items)")
        print(f"\nprobe: {art_path} (+ .npz); results: {out}")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from llmcal.probe.artifact import ProbeArtifact
    from llmcal.probe.features import concat_features, load_run_features
    from llmcal.probe.protocol import RAW_SIGNALS, compare

    art = ProbeArtifact.load(args.apply)
    rfs = [load_run_features(p, compute_fingerprint=not args.no_fingerprint) for p in args.run_dirs]
    for rf in rfs:
        art.check_model(rf.model)  # refuses another model's activations, naming what differs
    rf = concat_features(rfs)
    confs = {name: rf.signals[sig] for name, sig in RAW_SIGNALS.items()}
    confs.update(art.predict(rf))
    res = compare(confs, rf.correct, args.bootstrap, args.seed or 0)
    res.update({"artifact": str(args.apply), "runs": list(args.run_dirs), "n": len(rf)})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from llmcal.records.results import clean

        Path(args.out).write_text(json.dumps(clean(res), indent=2))
    if not args.quiet:
        _print_methods(res, f"{args.apply} applied to {', '.join(args.run_dirs)} (all {len(rf)} items)")
    return 0


def _cmd_shift(args: argparse.Namespace) -> int:
    from llmcal.pipeline.probe_step import probe_settings
    from llmcal.probe.features import load_run_features
    from llmcal.probe.protocol import learning_curve, shift_matrix
    from llmcal.records.results import clean
    from llmcal.probe.tables import learning_curve_table, shift_tables

    say = _say(args)
    rfs = [load_run_features(p, compute_fingerprint=not args.no_fingerprint) for p in args.run_dirs]
    s = probe_settings(probe_config(args), rfs[0].model, model_positions=rfs[0].positions)
    cal_fraction = 0.5 if args.cal_fraction is None else args.cal_fraction
    seed = 0 if args.seed is None else args.seed
    s.seed = seed
    s.extra_probes = [k.strip() for k in args.extra_probes.split(",") if k.strip()]
    t0 = time.perf_counter()
    matrix = shift_matrix(rfs, s, cal_fraction, seed, n_boot=args.bootstrap, progress=say)
    payload: dict[str, Any] = {"runs": list(args.run_dirs), "model": rfs[0].model.to_dict(), "shift": matrix}
    if not args.no_learning_curve:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        payload["learning_curve"] = learning_curve(rfs, s, sizes, args.repeats, cal_fraction, seed, progress=say)
    payload["seconds"] = time.perf_counter() - t0
    out = Path(args.out or "runs/probe_shift")
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_shift.json").write_text(json.dumps(clean(payload), indent=2))
    md = "## Task-shift matrix\n\n" + shift_tables(matrix)
    if "learning_curve" in payload:
        md += "\n\n## Learning curve\n" + learning_curve_table(payload["learning_curve"])
    (out / "probe_shift.md").write_text(md + "\n")
    if not args.quiet:
        print(md)
        print(f"\nwritten: {out / 'probe_shift.json'}, {out / 'probe_shift.md'}")
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from llmcal.pipeline.probe_step import combine_run

    res = combine_run(args.run_dir, probe_config(args), args.cal_fraction, args.seed, args.bootstrap, out=args.out,
                      fingerprint=not args.no_fingerprint, say=_say(args))
    if not args.quiet:
        _print_methods(res, f"test part of {args.run_dir} ({res['split']['n_test']} items)")
        merged = (Path(args.run_dir) / "results.json").exists()
        print("\n`combined` and `external` written into " + (
            f"{Path(args.run_dir) / 'results.json'}" if merged else
            f"{Path(args.run_dir) / 'probe_results.json'} (no results.json yet: run `llmcal calibrate` "
            "and `llmcal combine` again to see them beside the calibrators)"))
    return 0
