"""The ``llmcal`` command: one console script, one subcommand a pipeline step.

``llmcal run`` does measure -> calibrate -> report; ``measure``, ``calibrate``
and ``report`` do one step each on a run folder.  Arguments follow
lm-evaluation-harness where it has one (``--model``, ``--model_args``,
``--tasks``, ``--limit``, ``--batch_size``, ``--output_path``).  Nothing heavy
is imported before a subcommand needs it, so ``llmcal --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from llmcal._version import __version__
from llmcal.cli import probe_commands, serve_commands


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="hf",
                   help="backend (default: hf, transformers; openai: any OpenAI-compatible server, "
                        "--model_args base_url=http://HOST:PORT/v1,model=NAME[,concurrency=8]; others from "
                        "installed packages' `llmcal.backends` entry points)")
    g.add_argument("--model_args", "--model-args", default="",
                   help="lm-eval style: pretrained=NAME_OR_DIR,gguf_file=F,dtype=float32|bfloat16,revision=R. "
                        "Empty = the embedded SmolLM2-135M-Instruct.")
    g.add_argument("--tasks", default="builtin",
                   help="comma-separated task names or .jsonl/.csv paths (default: builtin; see `llmcal tasks`)")
    g.add_argument("--data_dir", "--data-dir", default=None,
                   help="folder with the public evaluation sets (default: $LLMCAL_DATA or ../shared/data)")
    g.add_argument("--limit", type=int, default=None, help="first N items of each task")
    g.add_argument("--style", default="cloze", choices=["cloze", "letters"], help="prompt style (default: cloze)")
    g.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    g.add_argument("--dtype", default=None, help="float32 (default) or bfloat16; overrides model_args")
    g.add_argument("--batch_size", "--batch-size", default=None,
                   help="accepted for lm-eval compatibility; llmcal packs batches by --max_tokens")
    g.add_argument("--max_tokens", "--max-tokens", type=int, default=512, help="tokens per forward pass (default 512)")
    g.add_argument("--hidden_layers", "--hidden-layers", default="-1,mid",
                   help="hidden-state layers kept for the probe (indices, 'mid', 'last'; default -1,mid)")
    g = p.add_argument_group("open-ended tasks (builtin_open, nq_open, gsm8k, truthfulqa_gen)")
    g.add_argument("--signals", default="tokens,ptrue,verbalized,agreement",
                   help="signal families: tokens (free), ptrue (+1 scoring pass), verbalized / verbalized_percent "
                        "(+1 short generation), agreement (k samples + semantic entropy); default all but "
                        "verbalized_percent")
    g.add_argument("--k_samples", "--k-samples", type=int, default=5, help="sampled answers for agreement (default 5)")
    g.add_argument("--sample_temperature", "--sample-temperature", type=float, default=0.8,
                   help="temperature of the sampled answers (default 0.8)")
    g.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=32,
                   help="answer length limit (default 32; GSM8K gets 192)")
    g.add_argument("--no_chat", "--no-chat", action="store_true",
                   help="open tasks: plain Question/Answer text instead of the chat template")
    o = p.add_argument_group("output")
    o.add_argument("--output_path", "--output-path", default=None,
                   help="run folder (default: runs/<derived from model, tasks, style, dtype, limit>)")
    o.add_argument("--overwrite", action="store_true", help="discard an earlier run in the folder")
    o.add_argument("--log_samples", "--log-samples", action="store_true",
                   help="accepted for lm-eval compatibility: samples are always logged")
    o.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def _add_calibrate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calibrators", default=None,
                   help="comma-separated: temperature,platt,isotonic,histogram,beta (default: temperature for "
                        "multiple choice, platt for free-form answers); the first that fits is the one used")
    g.add_argument("--signal", default=None,
                   help="the confidence signal to calibrate (default: option_prob for multiple choice, "
                        "mean_token_prob for free-form answers; see `llmcal signals`)")
    g.add_argument("--cal_fraction", "--cal-fraction", type=float, default=0.5,
                   help="fraction of items used to fit (default 0.5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threshold", type=float, default=0.75, help="confidence filter (default 0.75, the brief's)")
    g.add_argument("--target_error", "--target-error", type=float, default=0.10,
                   help="error rate among answered questions to guarantee (default 0.10)")
    g.add_argument("--risk_delta", "--risk-delta", type=float, default=0.05,
                   help="the guarantee holds with probability 1 - delta (default 0.05)")
    g.add_argument("--n_bins", "--n-bins", type=int, default=15)
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0 = none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmcal",
        description="When the model says it is sure, is it right? Measure, calibrate and report "
                    "the confidence of a language model.",
    )
    parser.add_argument("--version", action="version", version=f"llmcal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="measure, calibrate and report (the main job)")
    _add_measure_args(p)
    _add_calibrate_args(p)
    p.add_argument("--no_report", "--no-report", action="store_true", help="skip report.html")
    probe_commands.add_run_args(p)

    p = sub.add_parser("measure", help="score the items and record every signal")
    _add_measure_args(p)

    p = sub.add_parser("calibrate", help="fit calibrators on a run folder and compute metrics")
    p.add_argument("run_dir")
    _add_calibrate_args(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("report", help="write report.html of a calibrated run folder")
    p.add_argument("run_dir")

    p = sub.add_parser("ask", help="answer one question with calibrated confidence, in words and colour")
    p.add_argument("question")
    p.add_argument("--choices", default=None, help="the options, separated by ';'")
    p.add_argument("--run", default=None, help="run folder whose calibration to use (default: the latest)")
    p.add_argument("--threshold", type=float, default=None, help="abstain below (default: the run's, 0.75)")
    p.add_argument("--high", type=float, default=0.90, help="'very sure' from (default 0.90)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")

    p = sub.add_parser("sweep", help="open-ended tasks: accuracy and each signal's ECE/AUROC at several "
                                     "sampling temperatures (the brief's 0.8 -> 0.5 claim)")
    _add_measure_args(p)
    p.add_argument("--temperatures", default="0,0.3,0.5,0.8,1.0",
                   help="comma-separated sampling temperatures (0 = greedy; default 0,0.3,0.5,0.8,1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per cell (default 200)")

    p = sub.add_parser("import-lmeval", help="calibrate from lm-evaluation-harness --log_samples output, "
                                             "without re-running the model")
    p.add_argument("samples", nargs="+", metavar="SAMPLES_JSONL", help="lm-eval samples_<task>_*.jsonl files")
    p.add_argument("--output_path", "--output-path", required=True, help="the run folder to create")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in the folder")
    p.add_argument("--no_report", "--no-report", action="store_true", help="skip report.html")
    _add_calibrate_args(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("tasks", help="list the task names, both kinds (multiple-choice and free-form)")

    p = sub.add_parser("signals", help="list the confidence signals: kind, family, cost and citation")
    p.add_argument("--kind", choices=["mc", "open"], default=None, help="only multiple-choice or free-form ones")
    p.add_argument("--json", action="store_true", help="print them as JSON")

    probe_commands.add_parsers(sub)
    __import__("llmcal.cli.quant_commands", fromlist=["register"]).register(sub)  # light: no torch
    serve_commands.register(sub)
    __import__("llmcal.cli.posttrain_commands", fromlist=["register"]).register(sub)  # light: no torch
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from llmcal.cli import commands

    try:
        name = f"cmd_{args.command.replace('-', '_')}"
        fn = getattr(args, "func", None) or getattr(commands, name, None) or getattr(probe_commands, name)
        return int(fn(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished items are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # OSError: a missing file, a full disk; ConnectionError: a server failed
        msg = str(err)
        if isinstance(err, OSError) and getattr(err, "filename", None) and str(err.filename) not in msg:
            msg = f"{err.filename}: {err.strerror or msg}"
        print(f"llmcal {args.command}: error: {msg or type(err).__name__}", file=sys.stderr)
        return 2
    except RecursionError:  # JSON nested 100,000 deep, read somewhere that did not name the file
        print(f"llmcal {args.command}: error: an input is nested too deeply to read", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

