"""Quantization benchmark: method x bits x observer -> perplexity, accuracy, retention, ECE, time, memory.

Runs on the embedded SmolLM2-135M-Instruct (or ``--model_args pretrained=...``):
calibrates on ``--samples`` texts of ``--calibration`` (default: SciQ support
paragraphs of sciq_valid.json), measures perplexity on ``--ppl_limit``
paragraphs of sciq_test.json and multiple-choice accuracy / ECE / Brier /
mean confidence on the first ``--limit`` items of ``--task`` (ARC-Easy), for
the unquantized model and every variant, and prints a markdown table.

Variants (``--methods``):

* ``rtn``: weight-only round-to-nearest, for each of ``--bits`` x ``--observers``
  (groups of ``--group_size`` below 8 bits, per output channel at 8 bits);
* ``awq``: AWQ (Lin et al. 2024) for each of ``--bits`` (min-max RTN after the search);
* ``gptq``: GPTQ (Frantar et al. 2023) for each of ``--bits`` (``--act_order`` for act-order);
* ``smoothquant``: SmoothQuant W8A8 (Xiao et al. 2023), per-channel weights and
  per-token dynamic activations, for each of ``--alphas`` x ``--smooth_groups``
  (``paper``: the norms' outputs; ``all``: also up_proj -> down_proj);
* ``w8a8``: the same W8A8 without smoothing;
* ``static``: W8A8 with *static* per-tensor activation scales set on the
  calibration set, for each observer (the setting where outliers hurt);
* ``--asymmetric`` / ``--float_zero_point``: the W4 weight rows asymmetric (integer
  zero point, as AutoAWQ and compressed-tensors) or with GGUF Q4_1's float zero point;
* ``--outlier M``: repeat static, smoothquant and awq with one extreme
  activation (M x the max |x|) injected into the calibration statistics.

    LLMCAL_THREADS=1 .venv/bin/python benchmarks/quant.py --samples 128 --limit 250 --ppl_limit 100
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time


def variants(args):
    from llmcal.quant import QuantArgs, Recipe

    def w(bits, observer="minmax"):
        if bits >= 8:
            return QuantArgs(bits, "channel", None, True, observer, args.percentile)
        sym = not (args.asymmetric or args.float_zero_point)
        return QuantArgs(bits, "group", args.group_size, sym, observer, args.percentile,
                         float_zero_point=args.float_zero_point)

    dyn = QuantArgs(8, "channel", None, True, "minmax", dynamic=True)
    out = []
    methods = args.methods.split(",")
    bits = [int(b) for b in args.bits.split(",")]
    observers = args.observers.split(",")
    for m in methods:
        if m in ("", "none"):  # --methods none: the float baseline alone (with --save_base)
            continue
        if m == "rtn":
            out += [(Recipe("rtn", w(b, o)), None) for b in bits for o in observers]
        elif m == "awq":
            out += [(Recipe("awq", w(b), search_tokens=args.search_tokens, sequential=args.sequential), None)
                    for b in bits if b < 8]
        elif m == "gptq":
            out += [(Recipe("gptq", w(b), gptq_act_order=args.act_order), None) for b in bits]
        elif m == "smoothquant":
            out += [(Recipe("smoothquant", w(8), dyn, alpha=float(a), smooth_all=(g == "all")), None)
                    for g in args.smooth_groups.split(",") for a in args.alphas.split(",")]
        elif m == "w8a8":
            out.append((Recipe("rtn", w(8), dyn), None))
        elif m == "static":
            out += [(Recipe("rtn", w(8), QuantArgs(8, "tensor", None, True, o, args.act_percentile)), None)
                    for o in observers]
        else:
            sys.exit(f"unknown method {m!r}")
    if args.outlier:
        more = [(r, args.outlier) for r, _ in out
                if r.method in ("awq", "smoothquant") or (r.activations is not None and not r.activations.dynamic)
                or (r.method == "rtn" and r.activations is None and r.weights.bits < 8
                    and r.weights.observer == "minmax")]
        if args.outlier_only:
            out = more
        else:
            out += more
    return out


def run_peer(args, base_model, tok, calib, ppl, items, base) -> list[dict]:
    """llm-compressor's AWQ and SmoothQuant modifiers on the same model, data and formats.

    Runs only where ``llmcompressor`` imports (a separate environment: it pins its own
    transformers); its result is saved as compressed-tensors, reloaded, and measured by
    the same llmcal code as every other row.
    """
    import copy
    import tempfile

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    from llmcal.quant.evaluate import compare, evaluate_model
    from llmcal.quant.export import load_compressed

    # llm-compressor 0.14 pins its cached activations with pin_memory() unconditionally, which
    # raises "Cannot access accelerator device when none is available" on a CPU-only machine;
    # pinning only speeds up host-to-GPU copies, so it is skipped there
    import torch

    if not torch.cuda.is_available():
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *a, **k: None
    ds = Dataset.from_dict({"input_ids": [c[0].tolist() for c in calib],
                            "attention_mask": [[1] * c.shape[1] for c in calib]})
    w4 = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                         "strategy": "group", "group_size": args.group_size}}}
    recipes = {
        "llm-compressor AWQ w4 g%d sym" % args.group_size:
            [AWQModifier(), QuantizationModifier(config_groups=w4, ignore=["lm_head"])],
        "llm-compressor SmoothQuant 0.5 W8A8":
            [SmoothQuantModifier(smoothing_strength=0.5), QuantizationModifier(scheme="W8A8", ignore=["lm_head"])],
    }
    rows = []
    for name, recipe in recipes.items():
        if args.peer_only and args.peer_only not in name:
            continue
        model = copy.deepcopy(base_model)
        t, c = time.perf_counter(), time.process_time()
        oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(calib),
                max_seq_length=args.seq_len)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        out = tempfile.mkdtemp(prefix="llmc-")
        model.save_pretrained(out, save_compressed=True)
        ev = evaluate_model(load_compressed(out), tok, ppl, items)
        rows.append({"variant": name, "outlier": None, **ev, **compare(base, ev), "seconds": secs,
                     "cpu_seconds": cpu})
        print(f"{name}: ppl {fmt(ev.get('perplexity'))} acc {fmt(ev.get('accuracy'))} quant {secs:.1f} s",
              file=sys.stderr, flush=True)
    return rows


def intervals(base, ev):
    """95% paired bootstrap intervals (1,000 resamples of the questions; quant/verdict.py)."""
    if "items" not in base or "items" not in ev:
        return None
    from llmcal.quant.verdict import paired_intervals

    return paired_intervals(base["items"], ev["items"])


def process_peak_mb() -> float:
    """The process's peak resident memory so far (MiB): the loaded model, the base copy, the work."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary_table(paths) -> str:
    """One markdown table from several ``--json`` files (models x methods), float rows first."""
    lines = ["| model | method | ppl (ratio) | ARC-Easy acc [95%] | retention [95% paired] | "
             "ECE before -> after (shift [95%]) | quant s | peak RSS MiB (quantization's extra) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    seen_base = set()
    for path in paths:
        d = json.loads(open(path).read())
        model = d["args"].get("model_args") or "embedded SmolLM2-135M"
        for r in d["rows"]:
            iv = r.get("intervals")
            if r["variant"].startswith("fp32"):
                if model in seen_base:
                    continue
                seen_base.add(model)
                n = r.get("n_items", 0)
                acc = r.get("accuracy")
                if acc is not None and n:
                    import math

                    half = 1.96 * math.sqrt(acc * (1 - acc) / n)  # binomial (normal approximation)
                    acc_s = f"{acc:.3f} [{acc - half:.3f}, {acc + half:.3f}] (n = {n})"
                else:
                    acc_s = "-"
                lines.append(f"| {model} | float (fp32) | {fmt(r.get('perplexity'), 2)} | {acc_s} | - | "
                             f"{fmt(r.get('ece'))} | - | {fmt(r.get('process_peak_rss_mb'), 0)} |")
                continue
            if iv:
                a, alo, ahi = iv["accuracy_after"]
                ret, rlo, rhi = iv["retention"]
                eb, ea = iv["ece_before"][0], iv["ece_after"][0]
                de, dlo, dhi = iv["delta_ece"]
                acc_s = f"{a:.3f} [{alo:.3f}, {ahi:.3f}]"
                ret_s = f"{ret:.3f} [{rlo:.3f}, {rhi:.3f}]"
                ece_s = f"{eb:.3f} -> {ea:.3f} ({de:+.3f} [{dlo:+.3f}, {dhi:+.3f}])"
            else:
                acc_s, ret_s, ece_s = fmt(r.get("accuracy")), fmt(r.get("retention")), fmt(r.get("ece"))
            ppl = f"{fmt(r.get('perplexity'), 2)} (x{fmt(r.get('ppl_ratio'), 3)})"
            lines.append(f"| {model} | {r['variant']} | {ppl} | {acc_s} | {ret_s} | {ece_s} | "
                         f"{fmt(r.get('seconds'), 1)} | {fmt(r.get('peak_rss_mb'), 0)} "
                         f"({fmt(r.get('extra_rss_mb'), 0)}) |")
    return "\n".join(lines)


def fmt(x, nd=3):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_args", default="", help="lm-eval style; empty = the embedded model")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--calibration", default="sciq_support:valid")
    ap.add_argument("--eval_text", default="sciq_support:test")
    ap.add_argument("--ppl_limit", type=int, default=100, help="perplexity texts (0 = skip)")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--limit", type=int, default=250, help="multiple-choice items (0 = skip)")
    ap.add_argument("--methods", default="rtn,awq,smoothquant,w8a8,static")
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--observers", default="minmax,percentile,mse")
    ap.add_argument("--percentile", type=float, default=99.9, help="weights' percentile observer")
    ap.add_argument("--act_percentile", type=float, default=99.99, help="activations' percentile observer")
    ap.add_argument("--group_size", type=int, default=64)
    ap.add_argument("--asymmetric", action="store_true",
                    help="weight-only rows (rtn, awq below 8 bits): asymmetric, integer zero point")
    ap.add_argument("--float_zero_point", action="store_true",
                    help="weight-only rows: asymmetric with a float zero point (GGUF Q4_1's format; "
                         "simulation only)")
    ap.add_argument("--smooth_groups", default="paper",
                    help="SmoothQuant groups, comma-separated: paper (input norms -> q,k,v and gate,up) "
                         "and/or all (also up -> down, and v -> o where shapes match)")
    ap.add_argument("--alphas", default="0.5")
    ap.add_argument("--search_tokens", type=int, default=2048, help="AWQ search tokens")
    ap.add_argument("--sequential", action="store_true", help="AWQ: next layer calibrated on quantized outputs")
    ap.add_argument("--act_order", action="store_true", help="GPTQ: columns by descending Hessian diagonal")
    ap.add_argument("--outlier", type=float, default=None, help="also run with one injected activation of M x max")
    ap.add_argument("--outlier_only", action="store_true")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--peer", action="store_true",
                    help="instead of llmcal's variants, run llm-compressor's AWQ and SmoothQuant (separate env)")
    ap.add_argument("--base_json", default=None,
                    help="read the unquantized model's numbers from this JSON (as written by --save_base)")
    ap.add_argument("--save_base", default=None,
                    help="write the unquantized model's numbers (with its predictions) to this JSON")
    ap.add_argument("--peer_only", default="", help="with --peer: only the recipe whose name contains this")
    ap.add_argument("--summary", nargs="+", default=None, metavar="JSON",
                    help="print one table from earlier --json files (models x methods, with intervals) and exit")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary_table(args.summary))
        return 0

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("LLMCAL_THREADS", "1"))))
    from llmcal.backends.model_args import parse_model_args
    from llmcal.backends.registry import load_backend
    from llmcal.quant.data import load_texts, tokenize
    from llmcal.quant.evaluate import compare, evaluate_model
    from llmcal.quant.quantizer import check_inputs, quantize_model
    from llmcal.tasks.registry import load_task

    todo = [] if args.peer else variants(args)
    t = time.perf_counter()
    margs = parse_model_args(args.model_args)
    # torch's default fp32 path (as the peer runs): the documented times are measured on it; every
    # variant is quantized from a deep copy of the loaded model (a copy would run on it anyway)
    margs.setdefault("matmul", "default")
    backend = load_backend("hf", **margs)
    base_model, tok = backend.model, backend.tokenizer
    torch.set_num_threads(max(1, int(os.environ.get("LLMCAL_THREADS", "1"))))  # load() sets its own
    for r, _ in todo:  # every bad input before any work
        check_inputs(base_model, r, None)
    calib = tokenize(tok, load_texts(args.calibration, args.samples, args.data_dir), args.seq_len)
    ppl = tokenize(tok, load_texts(args.eval_text, args.ppl_limit, args.data_dir), args.seq_len) \
        if args.ppl_limit else None
    items = load_task(args.task, data_dir=args.data_dir)[: args.limit] if args.limit else None
    print(f"loaded in {time.perf_counter() - t:.1f} s; {len(calib)} calibration samples "
          f"({sum(c.shape[1] for c in calib)} tokens); threads {torch.get_num_threads()}", file=sys.stderr)

    if args.base_json:  # the unquantized numbers from an earlier run with the same data
        base = json.loads(open(args.base_json).read())
    else:
        base = evaluate_model(base_model, tok, ppl, items)
        if args.save_base:
            with open(args.save_base, "w") as f:
                json.dump(base, f)
    rows = [{"variant": "fp32 (original)", "outlier": None, **base, "process_peak_rss_mb": process_peak_mb()}]
    print(f"fp32: {json.dumps({k: v for k, v in base.items() if k not in ('predictions', 'items')})}", file=sys.stderr)
    if args.peer:
        rows += run_peer(args, base_model, tok, calib, ppl, items, base)
        todo = []
    for recipe, outlier in todo:
        model = copy.deepcopy(base_model)
        res = quantize_model(model, calib, recipe, outlier=outlier, n_required=args.samples)
        ev = evaluate_model(model, tok, ppl, items)
        row = {"variant": recipe.label(), "outlier": outlier, **ev, **compare(base, ev), **res.summary(),
               "intervals": intervals(base, ev), "process_peak_rss_mb": process_peak_mb()}
        rows.append(row)
        dump(args, rows)  # after every row: a stopped run keeps what it measured
        print(f"{recipe.label()} outlier={outlier}: ppl {fmt(ev.get('perplexity'))} acc {fmt(ev.get('accuracy'))} "
              f"ece {fmt(ev.get('ece'))} brier {fmt(ev.get('brier'))} conf {fmt(ev.get('mean_confidence'))} "
              f"quant {res.seconds:.1f} s (cpu {res.cpu_seconds:.1f} s)", file=sys.stderr, flush=True)
        del model

    head = ("| variant | outlier | ppl | ppl ratio | acc | retention | ECE | Brier | mean conf | "
            "quant s | quant CPU s | extra RSS MiB |")
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {fmt(r['outlier'], 0) if r['outlier'] else '-'} | {fmt(r.get('perplexity'), 2)} | "
              f"{fmt(r.get('ppl_ratio'), 4)} | {fmt(r.get('accuracy'))} | {fmt(r.get('retention'))} | "
              f"{fmt(r.get('ece'))} | {fmt(r.get('brier'))} | {fmt(r.get('mean_confidence'))} | "
              f"{fmt(r.get('seconds'), 1)} | {fmt(r.get('cpu_seconds'), 1)} | {fmt(r.get('extra_rss_mb'), 0)} |")
    dump(args, rows)
    return 0


def dump(args, rows) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": [{k: v for k, v in r.items() if k != "predictions"}
                                                      for r in rows]}, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
