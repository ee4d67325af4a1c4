"""``llmcal quantize``: calibrate, quantize, evaluate before/after, export.

    llmcal quantize --method awq --w_bits 4 --group_size 64 --n_samples 128 \\
        --calibration sciq_support:valid --tasks arc_easy --limit 200 --output_path runs/quant/awq4

Calibrates on ``--n_samples`` texts of ``--calibration`` (SciQ support paragraphs,
a .txt/.jsonl file, or any task's prompts), quantizes with the method (``rtn``,
``smoothquant``, ``awq``, ``gptq``), measures perplexity (``--ppl_text``), accuracy, ECE,
Brier and mean confidence (``--tasks``) before and after, and writes
``quant_results.json`` plus (``--export``) the compressed-tensors folder into
``--output_path``.  Every input is checked before any model work starts.
Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``llmcal quantize`` to the main parser (dispatch through ``args.func``)."""
    p = subparsers.add_parser("quantize", help="calibrate and quantize (RTN, SmoothQuant, AWQ, GPTQ); "
                              "accuracy and confidence calibration before/after; compressed-tensors export",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model_args", "--model-args", default="",
                   help="lm-eval style pretrained=...,dtype=...; empty = the embedded SmolLM2-135M-Instruct")
    m.add_argument("--mapping", default=None,
                   help="layer mapping JSON for an architecture llmcal does not know (see docs/quant.md)")
    q = p.add_argument_group("quantization")
    q.add_argument("--recipe", default=None,
                   help="a YAML recipe (stages in order, per-layer ignore regexes; docs/quant.md): replaces "
                   "--method and the format flags below")
    q.add_argument("--method", default="awq", choices=["rtn", "smoothquant", "awq", "gptq"])
    q.add_argument("--w_bits", "--w-bits", type=int, default=4, help="weight bits (default 4)")
    q.add_argument("--granularity", default=None, choices=["tensor", "channel", "group"],
                   help="weight scale granularity (default: group below 8 bits, channel at 8)")
    q.add_argument("--group_size", "--group-size", type=int, default=64, help="default 64 (576 = 9 x 64)")
    q.add_argument("--asym", action="store_true", help="asymmetric weights (zero points)")
    q.add_argument("--float_zero_point", "--float-zero-point", action="store_true",
                   help="with --asym: zero points not rounded (GGUF Q4_1's grid; simulation only, no --export)")
    q.add_argument("--observer", default="minmax", choices=["minmax", "percentile", "mse"])
    q.add_argument("--percentile", type=float, default=99.9)
    q.add_argument("--a_bits", "--a-bits", type=int, default=None,
                   help="quantize activations too (8 = W8A8); default: weight-only, except smoothquant (8)")
    q.add_argument("--a_static", "--a-static", action="store_true",
                   help="static per-tensor activation scales from the calibration set (default: per-token dynamic)")
    q.add_argument("--a_observer", "--a-observer", default="minmax", choices=["minmax", "percentile", "mse"])
    q.add_argument("--a_percentile", "--a-percentile", type=float, default=99.99)
    q.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength (default 0.5)")
    q.add_argument("--smooth_all", "--smooth-all", action="store_true",
                   help="SmoothQuant: also smooth up_proj -> down_proj (and v_proj -> o_proj where shapes match)")
    q.add_argument("--search_tokens", "--search-tokens", type=int, default=2048,
                   help="AWQ: calibration tokens used by the scale search (default 2048)")
    q.add_argument("--no_clip", "--no-clip", action="store_true", help="AWQ without the clipping search")
    q.add_argument("--act_order", "--act-order", action="store_true",
                   help="GPTQ: quantize the columns by descending Hessian diagonal (groups fixed up front)")
    q.add_argument("--gptq_block", "--gptq-block", type=int, default=128,
                   help="GPTQ: columns per lazy batch update (default 128; same result, speed only)")
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ: dampening, a fraction of mean(diag H) (default 0.01)")
    q.add_argument("--sequential", action="store_true",
                   help="calibrate each layer on the previous layers' quantized outputs (one more pass a layer)")
    c = p.add_argument_group("calibration data")
    c.add_argument("--calibration", default="sciq_support:valid",
                   help="sciq_support[:valid|test], a .txt/.jsonl file, or a task spec (default sciq_support:valid)")
    c.add_argument("--n_samples", "--n-samples", type=int, default=128, help="calibration samples (default 128)")
    c.add_argument("--seq_len", "--seq-len", type=int, default=512, help="tokens kept per sample (default 512)")
    c.add_argument("--data_dir", "--data-dir", default=None)
    c.add_argument("--outlier", type=float, default=None,
                   help="experiment: inject one activation of OUTLIER x max |x| into the calibration statistics")
    e = p.add_argument_group("evaluation and output")
    e.add_argument("--tasks", default="arc_easy", help="multiple-choice task(s), comma-separated ('' = none)")
    e.add_argument("--limit", type=int, default=200, help="items per task (default 200)")
    e.add_argument("--ppl_text", "--ppl-text", default="sciq_support:test", help="held-out text ('' = none)")
    e.add_argument("--ppl_limit", "--ppl-limit", type=int, default=100, help="perplexity texts (default 100)")
    e.add_argument("--no_eval", "--no-eval", action="store_true", help="quantize (and export) only")
    e.add_argument("--baseline", default=None,
                   help="reuse the float measurement of an earlier run (its folder or quant_results.json) instead "
                   "of measuring it again; refused unless it measured the same model, tasks, limit and text")
    e.add_argument("--output_path", "--output-path", default=None, help="folder for quant_results.json (and --export)")
    e.add_argument("--export", action="store_true", help="write the compressed-tensors model into --output_path")
    e.add_argument("--target", default="vllm", choices=["vllm", "transformers"],
                   help="what must load the export (default vllm): bits, zero points and group sizes it cannot "
                   "load are refused before any work (docs/quant.md)")
    e.add_argument("--export_dtype", "--export-dtype", default="auto",
                   choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the export's float tensors and config (default auto: the source checkpoint's; "
                   "float16 for a GGUF such as the embedded model)")
    e.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_quantize)


def build_recipe(args):
    if getattr(args, "recipe", None):
        from llmcal.quant.recipe_file import load_recipe

        return load_recipe(args.recipe)
    from llmcal.quant import QuantArgs, Recipe

    a_bits = args.a_bits if args.a_bits is not None else (8 if args.method == "smoothquant" else None)
    gran = args.granularity or ("group" if args.w_bits < 8 else "channel")
    w = QuantArgs(args.w_bits, gran, args.group_size if gran == "group" else None, not args.asym,
                  args.observer, args.percentile, float_zero_point=args.float_zero_point)
    a = None
    if a_bits is not None:
        a = QuantArgs(a_bits, "tensor" if args.a_static else "channel", None, True, args.a_observer,
                      args.a_percentile, dynamic=not args.a_static)
    return Recipe(args.method, w, a, alpha=args.alpha, awq_clip=not args.no_clip, sequential=args.sequential,
                  search_tokens=args.search_tokens, smooth_all=args.smooth_all, gptq_block=args.gptq_block,
                  gptq_act_order=args.act_order, gptq_damp=args.damp).validate()


def cmd_quantize(args) -> int:
    recipe = build_recipe(args)  # bad bits / group sizes fail here, before loading anything
    export_dtype = None
    if args.export:  # what the target cannot load is refused here, before any data or model is touched
        from llmcal.quant.targets import check_dtype, check_export

        if not args.output_path:
            raise ValueError("--export needs --output_path")
        check_export(recipe, args.target)
        export_dtype = check_dtype(args.export_dtype)
    from llmcal.quant.data import load_texts

    calib_texts = load_texts(args.calibration, args.n_samples, args.data_dir)
    ppl_texts = load_texts(args.ppl_text, args.ppl_limit, args.data_dir) \
        if args.ppl_text and args.ppl_limit and not args.no_eval else None
    items = []
    if args.tasks and not args.no_eval:
        from llmcal.tasks.registry import load_task

        for t in args.tasks.split(","):
            items += load_task(t.strip(), data_dir=args.data_dir)[: args.limit]

    from llmcal.backends.model_args import parse_model_args
    from llmcal.backends.registry import load_backend
    from llmcal.quant.data import tokenize
    from llmcal.quant.evaluate import compare, evaluate_model
    from llmcal.quant.quantizer import check_inputs, quantize_model

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    settings = {"model_args": args.model_args, "tasks": args.tasks, "limit": args.limit,
                "data_dir": args.data_dir, "ppl_text": args.ppl_text, "ppl_limit": args.ppl_limit,
                "seq_len": args.seq_len}
    saved_before = _read_baseline(args.baseline, settings) if args.baseline and not args.no_eval else None
    margs = parse_model_args(args.model_args)
    backend = load_backend("hf", **margs)  # quantization needs the weights here
    model, tok = backend.model, backend.tokenizer
    mapping = check_inputs(model, recipe, args.mapping)  # unknown architecture, group sizes: before any pass
    if args.export:
        from llmcal.quant.targets import check_widths, linear_shapes, source_dtype

        for w in check_widths(recipe, args.target, linear_shapes(model, mapping)):
            print(f"llmcal quantize: warning: --target {args.target}: {w}", file=sys.stderr)
        if export_dtype is None:
            export_dtype = source_dtype(margs.get("pretrained"), margs.get("gguf_file"))
    calib = tokenize(tok, calib_texts, args.seq_len)
    ppl = tokenize(tok, ppl_texts, args.seq_len) if ppl_texts else None
    if saved_before is not None:
        before = saved_before
        before["predictions"] = before["items"].get("predictions", [])
        log(f"before (reused from {args.baseline}): {_short(before)}")
    else:
        before = evaluate_model(model, tok, ppl, items) if (ppl or items) else {}
        if before:
            log(f"before: {_short(before)}")
    t = time.perf_counter()
    res = quantize_model(model, calib, recipe, args.mapping, outlier=args.outlier, n_required=args.n_samples,
                         progress=None if args.quiet else (lambda i, n: log(f"  layer {i}/{n}")))
    log(f"quantized ({recipe.label()}) in {time.perf_counter() - t:.1f} s")
    after = evaluate_model(model, tok, ppl, items) if (ppl or items) else {}
    cmp = compare(before, after) if after else {}
    summary = None
    if "items" in before and "items" in after:
        from llmcal.quant.verdict import paired_intervals, verdict

        iv = paired_intervals(before["items"], after["items"])
        cmp["intervals"] = {k: list(v) for k, v in iv.items()}
        summary = verdict(recipe.label(), iv, len(before["items"]["correct"]), cmp.get("ppl_ratio"))
        cmp["verdict"] = summary
    results = {"model": backend.model_name, "baseline_key": _baseline_key(settings),
               "baseline_from": args.baseline, "quantization": res.summary(),
               "calibration": {"source": args.calibration, "n_samples": args.n_samples, "seq_len": args.seq_len,
                               "outlier": args.outlier},
               "before": _strip(before), "after": _strip(after), "compare": cmp}
    if not args.quiet and after:
        _print_table(before, after, cmp)
    if summary:
        print(summary)
    if args.output_path:
        out = Path(args.output_path)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        if args.export:
            from llmcal.quant.export import export_compressed

            try:
                export_compressed(model, res, out / "model", tokenizer=tok, target=args.target,
                                  dtype=export_dtype)
            except BaseException:
                if created:  # a failed export leaves no folder behind
                    import shutil

                    shutil.rmtree(out, ignore_errors=True)
                raise
            results["export"] = str(out / "model")
            results["export_target"], results["export_dtype"] = args.target, export_dtype
        (out / "quant_results.json").write_text(json.dumps(results, indent=1, default=str))
        log(f"wrote {out / 'quant_results.json'}")
    return 0


def _baseline_key(settings: dict) -> dict:
    from llmcal.quant.verdict import baseline_key

    return baseline_key(settings)


def _read_baseline(path: str, settings: dict) -> dict:
    """The float measurement stored by an earlier ``llmcal quantize`` (``--baseline``), checked to match."""
    from llmcal.quant.verdict import check_baseline

    p = Path(path)
    if p.is_dir():
        p = p / "quant_results.json"
    try:
        saved = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"--baseline: {p} does not exist (give an earlier run's folder or its quant_results.json)")
    except json.JSONDecodeError as e:
        raise ValueError(f"--baseline: {p} line {e.lineno}: not JSON ({e.msg})")
    if not isinstance(saved, dict):
        raise ValueError(f"--baseline: {p}: not a quant_results.json (top level is not an object)")
    return check_baseline(saved, settings, str(p))


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "predictions"}


def _short(d: dict) -> str:
    keys = ("perplexity", "accuracy", "ece", "brier", "mean_confidence")
    return ", ".join(f"{k} {d[k]:.4f}" for k in keys if k in d)


def _print_table(before: dict, after: dict, cmp: dict) -> None:
    """The before/after table with n, 95% paired intervals where there are per-question answers, and definitions."""
    from llmcal.quant.verdict import DEFINITIONS

    iv = cmp.get("intervals", {})

    def cell(key: str, value: float) -> str:
        if key in iv:
            _, lo, hi = iv[key]
            return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
        return f"{value:.3f}" if key != "perplexity" else f"{value:.2f}"

    n_q = before.get("n_items")
    n_tok = before.get("ppl_tokens")
    print("| metric | n | float | quantized |")
    print("|---|---:|---:|---:|")
    for k, ivk in (("perplexity", None), ("accuracy", "accuracy"), ("ece", "ece"), ("brier", None),
                   ("mean_confidence", None)):
        if k in before and k in after:
            n = n_tok if k == "perplexity" else n_q
            unit = " tokens" if k == "perplexity" else ""
            b = cell(f"{ivk}_before", before[k]) if ivk else cell(k, before[k])
            a = cell(f"{ivk}_after", after[k]) if ivk else cell(k, after[k])
            print(f"| {k} | {n}{unit} | {b} | {a} |")
    for k in ("retention", "ppl_ratio", "agreement"):
        if k in cmp:
            print(f"| {k} | {n_tok if k == 'ppl_ratio' else n_q} | | {cell(k, cmp[k])} |")
    print()
    for k in ("perplexity", "accuracy", "ece", "brier", "mean_confidence", "retention", "ppl_ratio", "agreement"):
        if k in before or k in cmp:
            print(f"  {k}: {DEFINITIONS[k]}")
    if iv:
        print("  [low, high]: 95% paired bootstrap interval over the same questions")
