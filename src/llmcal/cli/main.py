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
                   help="comma-separated task names or .jsonl/.csv paths (default: builtin; see `llmcal tasks`); "
                        "`mix`: the built-in task and the 7 public multiple-choice sets, --limit (default 200) "
                        "items from each")
    g.add_argument("--data_dir", "--data-dir", default=None,
                   help="folder with the public evaluation sets (default: $LLMCAL_DATA or ../shared/data)")
    g.add_argument("--limit", type=int, default=None, help="first N items of each task")
    g.add_argument("--style", default="cloze", choices=["cloze", "letters"], help="prompt style (default: cloze)")
    g.add_argument("--chat", "--apply_chat_template", "--apply-chat-template", dest="chat", action="store_true",
                   help="wrap prompts in the model's chat template (lm-eval's --apply_chat_template; multiple choice "
                        "and lmeval: tasks are plain text without it, llmcal's own open tasks use it unless --no_chat)")
    g.add_argument("--dtype", default=None, help="float32 (default) or bfloat16; overrides model_args")
    g.add_argument("--batch_size", "--batch-size", default=None,
                   help="lm-eval's: at most N items a forward pass (hf), within the --max_tokens budget; "
                        "'auto' (default) = by --max_tokens alone")
    g.add_argument("--max_tokens", "--max-tokens", type=int, default=512, help="tokens per forward pass (default 512)")
    g.add_argument("--fields", default=None,
                   help="field mapping of the data-file tasks: question=sentence,choices=option1|option2,"
                        "answer=answer:index1 (also answers=, grader=, header=yes|no, id=, meta=), or a YAML "
                        "file of key: field pairs (docs/tasks.md)")
    g.add_argument("--hidden_layers", "--hidden-layers", default="-1,mid",
                   help="hidden-state layers kept for the probe (indices, 'mid', 'last'; default -1,mid)")
    g = p.add_argument_group("open-ended tasks (builtin_open, nq_open, gsm8k, truthfulqa_gen)")
    g.add_argument("--signals", default="tokens,ptrue_chat,verbalized,agreement",
                   help="signal families: tokens (free), ptrue_chat (P(True) as a follow-up turn, +1 short prefill), "
                        "ptrue (the paper's standalone P(True) prompt, +1 scoring pass), verbalized / verbalized_percent "
                        "(+1 short generation), agreement (k samples + semantic entropy); opt-in estimator families "
                        "sampled, pmi, sar, ccp, cpmi (see `llmcal signals --kind open`); default tokens, ptrue_chat, "
                        "verbalized, agreement")
    g.add_argument("--k_samples", "--k-samples", type=int, default=5, help="sampled answers for agreement (default 5)")
    g.add_argument("--sample_temperature", "--sample-temperature", type=float, default=0.8,
                   help="temperature of the sampled answers (default 0.8)")
    g.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=32,
                   help="answer length limit (default 32; GSM8K gets 192)")
    g.add_argument("--nli_model", "--nli-model", default=None,
                   help="NLI cross-encoder (hub name or local folder, e.g. microsoft/deberta-large-mnli) for "
                        "meaning clusters and the sampled estimators; default: sentence embeddings")
    g.add_argument("--no_chat", "--no-chat", action="store_true",
                   help="open tasks: plain Question/Answer text instead of the chat template")
    g = p.add_argument_group("lm-eval's flags, with lm-eval's meanings (`--tasks lmeval:NAME[,...]`; docs/tasks.md)")
    g.add_argument("--include_path", "--include-path", default=None, metavar="DIR",
                   help="folder(s) of local lm-eval task YAML, comma-separated")
    g.add_argument("--num_fewshot", "--num-fewshot", type=int, default=None,
                   help="few-shot examples per prompt (default: the task's own)")
    g.add_argument("--system_instruction", "--system-instruction", default=None,
                   help="system instruction lm-eval prepends to every prompt")
    g.add_argument("--fewshot_as_multiturn", "--fewshot-as-multiturn", action="store_true",
                   help="few-shot examples as chat turns (needs --apply_chat_template)")
    g.add_argument("--gen_kwargs", "--gen-kwargs", default=None,
                   help="generate_until tasks: e.g. temperature=0,max_gen_toks=64,until=\\n\\n|Q: (overrides the task's)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps: where the model runs (model_args device=)")
    g.add_argument("--seed", default=None,
                   help="lm-eval's: seeds python random, numpy, torch and few-shot sampling, one number or "
                        "R,N,T,F (default 0,1234,1234,1234); the calibration split's seed is --split_seed")
    o = p.add_argument_group("output")
    o.add_argument("--output_path", "--output-path", default=None,
                   help="run folder (default: runs/<derived from model, tasks, style, dtype, limit>)")
    o.add_argument("--overwrite", action="store_true", help="discard an earlier run in the folder")
    o.add_argument("--log_samples", "--log-samples", action="store_true",
                   help="also write lm-eval's samples_<task>_<date>.jsonl and results_<date>.json under "
                        "OUTPUT_PATH/lmeval/ (llmcal's samples.jsonl and results.json are always written)")
    o.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def _add_calibrate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    # The names are written out, not read from llmcal.calibrators.CALIBRATORS: importing the registry pulls
    # numpy and scipy into every CLI start-up, --help included; tests/test_cli.py checks the list against it.
    g.add_argument("--calibrators", default=None,
                   help="comma-separated: temperature, temperature_norm, platt, platt_chance, isotonic, histogram, beta "
                        "(default: temperature for multiple choice, platt for free-form answers); the first "
                        "that fits is the one used")
    g.add_argument("--signal", default=None,
                   help="the confidence signal to calibrate (default: option_prob for multiple choice, "
                        "mean_token_prob for free-form answers; see `llmcal signals`); auto: chosen on the "
                        "calibration part (multiple choice: by cross-validated ECE and AUROC)")
    g.add_argument("--cal_fraction", "--cal-fraction", type=float, default=0.5,
                   help="fraction of items used to fit (default 0.5)")
    g.add_argument("--split_seed", "--split-seed", type=int, default=0,
                   help="seed of the calibration/test split (default 0; was --seed before --seed took lm-eval's meaning)")
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
    p.add_argument("run_dir", nargs="?", default=None, help="the run folder (with --from-feedback: or --run)")
    _add_calibrate_args(p)
    g = p.add_argument_group("apply another run's calibration (docs/transfer.md)")
    g.add_argument("--from", dest="from_run", metavar="SOURCE_RUN", default=None,
                   help="apply SOURCE_RUN's calibration.json (and its probe's `combined`) unchanged to RUN_DIR's "
                        "test part, beside a constant baseline and RUN_DIR's own fit; writes RUN_DIR/transfer.json")
    g.add_argument("--adapt", choices=["unlabeled"], default=None,
                   help="with --from: also rescale the calibration to RUN_DIR's accuracy estimated from its "
                        "questions without their answers (ATC, Garg et al. 2022)")
    g.add_argument("--estimator", default=None,
                   help="with --adapt unlabeled: the accuracy estimator, atc, doc or atc_prior (ATC halfway to the "
                        "source accuracy), optionally @SIGNAL to read Platt on SIGNAL instead of each "
                        "calibration (default: atc_prior@option_prob_norm for multiple choice, doc for "
                        "free-form answers; chosen by leave-one-task-out, docs/transfer.md)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("report", help="write report.html of a calibrated run folder")
    p.add_argument("run_dir")

    p = sub.add_parser("ask", help="answer one question with calibrated confidence, in words and colour")
    p.add_argument("question")
    p.add_argument("--choices", default=None, help="the options, separated by ';'")
    p.add_argument("--run", default=None, help="run folder whose calibration to use (needed when runs/ holds "
                                               "more than one calibrated run)")
    p.add_argument("--threshold", type=float, default=None, help="abstain below (default: the run's, 0.75)")
    p.add_argument("--high", type=float, default=0.90, help="'very sure' from (default 0.90)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")

    p = sub.add_parser("sweep", help="open-ended tasks: accuracy and each signal's ECE/AUROC at several "
                                     "sampling temperatures (the brief's 0.8 -> 0.5 claim)")
    _add_measure_args(p)
    p.add_argument("--temperatures", default="0,0.3,0.5,0.8,1.0",
                   help="comma-separated sampling temperatures (0 = greedy; default 0,0.3,0.5,0.8,1.0)")
    p.add_argument("--split_seed", "--split-seed", type=int, default=0,
                   help="seed of the sampled answers and the split (default 0; --seed is lm-eval's)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per cell (default 200)")

    p = sub.add_parser("import-lmeval", help="calibrate from lm-evaluation-harness --log_samples output, "
                                             "without re-running the model")
    p.add_argument("samples", nargs="+", metavar="SAMPLES_JSONL", help="lm-eval samples_<task>_*.jsonl files")
    p.add_argument("--output_path", "--output-path", required=True, help="the run folder to create")
    p.add_argument("--model_args", "--model-args", default=None,
                   help="the model lm-eval ran (pretrained=...), so `llmcal ask` can use the run; default: read "
                        "from the results_*.json lm-eval wrote beside the samples")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in the folder")
    p.add_argument("--no_report", "--no-report", action="store_true", help="skip report.html")
    _add_calibrate_args(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("tasks", help="list the task names, both kinds (multiple-choice and free-form)")
    p.add_argument("--data_dir", "--data-dir", default=None,
                   help="check which tasks this data folder holds (default: $LLMCAL_DATA or ../shared/data)")
    p.add_argument("--kind", choices=["mc", "open"], default=None, help="only multiple-choice or free-form ones")

    p = sub.add_parser("signals", help="list the confidence signals: kind, family, cost and citation")
    p.add_argument("--kind", choices=["mc", "open"], default=None, help="only multiple-choice or free-form ones")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.add_argument("--model", default=None, help="also say whether this backend (hf, openai, ...) can supply each")
    p.add_argument("--nli_model", "--nli-model", default=None, help="an NLI model will be given (see run --nli_model)")

    probe_commands.add_parsers(sub)
    __import__("llmcal.cli.quant_commands", fromlist=["register"]).register(sub)  # light: no torch
    serve_commands.register(sub)
    __import__("llmcal.cli.posttrain_commands", fromlist=["register"]).register(sub)  # light: no torch
    __import__("llmcal.cli.monitor_commands", fromlist=["register"]).register(sub)  # monitor, --from-feedback
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

