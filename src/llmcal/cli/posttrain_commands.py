"""``llmcal posttrain {svd,ablate,pairs,orpo,check}``: post-training toward honest confidence.

* ``svd BASE POST``: per linear layer, singular-value scaling and singular-vector
  rotations of POST against BASE (He & Cao 2025, arXiv 2509.17866); writes
  ``svd.json`` and a self-contained ``svd.html`` with heatmaps.
* ``ablate BASE POST``: models rebuilt from mixed SVD factors, with their
  perplexity, accuracy and ECE (``ablate.json``).
* ``pairs RUN_DIR``: confidence-aware preference pairs from a measured run.
* ``orpo PAIRS``: ORPO (Hong et al. 2024) with TRL, or ``--method sft+dpo`` for
  the two-stage baseline; PAIRS is a run folder or a prompt/chosen/rejected JSONL.
* ``check BEFORE AFTER``: stated-confidence ECE/AUROC, accuracy on other tasks,
  reward-hacking flag (``check.json``).

BASE, POST, BEFORE, AFTER and ``--model`` name a checkpoint folder or
``embedded``.  Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

_SUBCOMMANDS = ("svd", "ablate", "pairs", "orpo", "check")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``llmcal posttrain ...`` to the main parser (dispatch through ``args.func``)."""
    top = subparsers.add_parser("posttrain", help="ORPO toward honest confidence; SVD of what post-training changed",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.set_defaults(func=lambda args: top.print_help() or 0)
    sub = top.add_subparsers(dest="posttrain_command", metavar="STEP")

    p = sub.add_parser("svd", help="singular values and vectors of POST vs BASE, per linear layer")
    p.add_argument("base")
    p.add_argument("post")
    p.add_argument("--k", type=int, default=64, help="top-k singular directions for rotations/angles (0 = all)")
    p.add_argument("--out", default="runs/posttrain_svd", help="folder for svd.json and svd.html")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--null", action="store_true",
                   help="also analyze a control: base + random noise of post's change norm, per matrix")
    p.set_defaults(func=cmd_svd)

    p = sub.add_parser("ablate", help="rebuild models from mixed SVD factors and evaluate them")
    p.add_argument("base")
    p.add_argument("post")
    p.add_argument("--modes", default="all", help="comma-separated ablation modes (default: all)")
    p.add_argument("--task", default="arc_easy", help="multiple-choice task for accuracy/ECE (default arc_easy)")
    p.add_argument("--limit", type=int, default=100, help="items of the task (default 100)")
    p.add_argument("--texts", type=int, default=40, help="SciQ support passages for perplexity (default 40)")
    p.add_argument("--data_dir", "--data-dir", default=None)
    p.add_argument("--out", default="runs/posttrain_ablate")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("pairs", help="confidence-aware preference pairs from a measured run folder")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="JSONL to write (default RUN_DIR/pairs.jsonl)")
    p.add_argument("--threshold", type=float, default=0.75, help="abstain/'unsure' boundary (default 0.75)")
    p.add_argument("--high", type=float, default=0.90, help="'very sure' from (default 0.90)")
    p.add_argument("--balance", action="store_true",
                   help="oversample the rarer chosen levels to the most common one's count (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("orpo", help="preference-tune a model toward honest confidence (TRL)")
    p.add_argument("pairs", help="a run folder (pairs are built) or a prompt/chosen/rejected JSONL file")
    p.add_argument("--model", default="embedded", help="checkpoint folder or 'embedded' (default)")
    p.add_argument("--method", default="orpo", choices=["orpo", "sft", "dpo", "sft+dpo"])
    p.add_argument("--steps", type=int, default=50, help="optimizer steps (per stage for sft+dpo; default 50)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="ORPO's odds-ratio weight (default 0.1)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta (default 0.1)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved weights)")
    p.add_argument("--save_steps", "--save-steps", type=int, default=None,
                   help="checkpoint every N steps, for --resume (default: none; final/ is always written)")
    p.add_argument("--resume", action="store_true", help="continue each stage from its newest checkpoint-*")
    p.add_argument("--grad_accum", "--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--lora_rank", "--lora-rank", type=int, default=16, help="LoRA rank with --lora (default 16)")
    p.add_argument("--eval_fraction", "--eval-fraction", type=float, default=0.0,
                   help="hold out this share of the pairs (the last ones) and report TRL's metrics on them")
    p.add_argument("--chat", action="store_true", help="render each prompt through the model's chat template")
    p.add_argument("--max_pairs", "--max-pairs", type=int, default=None, help="use the first N pairs")
    p.add_argument("--max_length", "--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/posttrain_orpo", help="folder for checkpoints, final/ and train.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_orpo)

    p = sub.add_parser("check", help="before/after: stated-confidence ECE/AUROC, forgetting, reward hacking")
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--tasks", default="builtin,arc_easy,sciq", help="comma-separated tasks (default builtin,arc_easy,sciq)")
    p.add_argument("--train_tasks", "--train-tasks", default="builtin", help="the task(s) trained on (default builtin)")
    p.add_argument("--limit", type=int, default=100, help="items per task (default 100)")
    p.add_argument("--skip", type=int, default=0, help="skip the first N items of each task (e.g. those trained on)")
    p.add_argument("--data_dir", "--data-dir", default=None)
    p.add_argument("--out", default="runs/posttrain_check")
    p.set_defaults(func=cmd_check)


def _write(folder: str | Path, name: str, payload: dict[str, Any]) -> Path:
    from llmcal.records.run_dir import _json_default

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(payload, indent=2, default=_json_default))
    return path


def _threads() -> None:
    import os

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("LLMCAL_THREADS", os.cpu_count() or 1))))


# ------------------------------------------------------------------ commands
def cmd_svd(args: argparse.Namespace) -> int:
    from llmcal.posttrain.svd import analyze, report_html
    from llmcal.posttrain.weights import load_checkpoint

    t0 = time.perf_counter()
    base = load_checkpoint(args.base, args.dtype)
    post = load_checkpoint(args.post, args.dtype)
    _threads()
    tty = sys.stderr.isatty()
    res = analyze(base.model, post.model, k=args.k or None,
                  progress=(lambda i, n: print(f"\rsvd {i}/{n}", end="", file=sys.stderr)) if tty else None)
    if tty:
        print(file=sys.stderr)
    if args.null:
        from llmcal.posttrain.svd import noise_control

        res["null"] = analyze(base.model, noise_control(base.model, post.model), k=args.k or None)
    from llmcal.posttrain.svd import verdict

    res.update(base=args.base, post=args.post, wall_s=round(time.perf_counter() - t0, 1), verdict=verdict(res))
    path = _write(args.out, "svd.json", res)
    (Path(args.out) / "svd.html").write_text(report_html(res, args.base, args.post))
    for label, r in [("post", res), *([("null", res["null"])] if args.null else [])]:
        s = r["summary"]["all"]
        print(f"{label}: {r['n_matrices']} matrices, k = {r['k_used']} (the top-{r['k'] or 'all'} asked, at most "
              f"each matrix's rank): ratio mean {s['median_ratio_mean']:.5f} "
              f"(cv within {s['median_ratio_cv']:.2e}, across {s['ratio_cv_across']:.2e}); "
              f"cos(R_U, R_V) {s['median_lr_similarity']:.4f}, off-diagonal {s['median_lr_similarity_offdiag']:.4f}; "
              f"|diag R_U| {s['median_diag_u']:.4f}; principal angle U {s['median_angle_mean_u']:.3f} deg; "
              f"rel change {s['median_rel_change']:.2e}")
    for line in res["verdict"]:
        print(f"verdict: {line}")
    print(f"wrote {path} and {Path(args.out) / 'svd.html'} ({res['wall_s']} s)")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from llmcal.posttrain.ablate import MODES, heldout_texts, run_ablations
    from llmcal.posttrain.weights import load_checkpoint
    from llmcal.tasks.registry import load_task

    modes = list(MODES) if args.modes == "all" else [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"--modes: unknown {', '.join(bad)}; known: {', '.join(MODES)}")
    t0 = time.perf_counter()
    items = load_task(args.task, args.data_dir, limit=args.limit) if args.limit else []
    texts = heldout_texts(args.data_dir, n=args.texts) if args.texts else []
    base = load_checkpoint(args.base)
    post = load_checkpoint(args.post)
    _threads()

    def log(mode: str, res: dict) -> None:
        print(f"{mode:28s} " + " ".join(f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float)))

    res = run_ablations(base.model, post.model, post.tokenizer, items, texts, modes, log=log)
    payload = {"base": args.base, "post": args.post, "task": args.task, "limit": args.limit,
               "n_texts": len(texts), "results": res, "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"wrote {_write(args.out, 'ablate.json', payload)} ({payload['wall_s']} s)")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from collections import Counter

    from llmcal.policy.levels import Thresholds
    from llmcal.posttrain.pairs import balance_levels, pairs_from_run, write_pairs_jsonl

    pairs = pairs_from_run(args.run_dir, Thresholds(high=args.high, abstain=args.threshold))
    if args.balance:
        pairs = balance_levels(pairs, args.seed)
    path = write_pairs_jsonl(pairs, args.out or Path(args.run_dir) / "pairs.jsonl")
    levels = Counter(p["meta"]["level"] for p in pairs)
    print(f"wrote {len(pairs)} pairs to {path} (chosen level: " + ", ".join(f"{k} {v}" for k, v in levels.items()) + ")")
    return 0


def cmd_orpo(args: argparse.Namespace) -> int:
    from llmcal.posttrain.orpo import train
    from llmcal.posttrain.pairs import load_pairs
    from llmcal.posttrain.weights import load_checkpoint

    pairs = load_pairs(args.pairs)[: args.max_pairs or None]
    backend = load_checkpoint(args.model)
    _threads()
    _, record = train(args.method, backend.model, backend.tokenizer, pairs, args.out, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, lam=args.lam, beta=args.beta, lora=args.lora,
                      save_steps=args.save_steps, seed=args.seed, progress=not args.quiet,
                      max_length=args.max_length, grad_accum=args.grad_accum, lora_rank=args.lora_rank,
                      eval_fraction=args.eval_fraction, chat=args.chat, resume=args.resume)
    record.update(model=args.model, pairs=str(args.pairs))
    path = _write(args.out, "train.json", record)
    t = record["total"]
    print(f"{args.method}: {t['steps']} steps, {t['wall_s']} s, {t['forward_calls']} forward calls "
          f"({t['forward_rows']} sequences), peak RSS {t['peak_rss_mb']} MB; model in {record['checkpoint']}; "
          f"wrote {path}")
    for stage in record["stages"]:
        pref = stage["preference"]
        shown = [f"{k} {v['first']:+.3f} -> {v['last']:+.3f}" for k, v in pref.items()
                 if k in ("rewards/margins", "rewards/accuracies", "log_odds_ratio")]
        if shown:
            print(f"  {stage['method']} preference (first -> last logged step): " + "; ".join(shown))
        margin = pref.get("rewards/margins", {}).get("last")
        if margin is not None and margin <= 0:
            print(f"  {stage['method']}: the chosen answers are not yet preferred (last reward margin {margin:+.3f}): "
                  "train longer or raise --lr / --lambda before trusting the result")
        ev = stage.get("eval")
        if ev:
            keys = [k for k in ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies") if k in ev]
            print(f"  {stage['method']} on {record['n_eval_pairs']} held-out pairs: "
                  + "; ".join(f"{k.removeprefix('eval_')} {ev[k]:+.3f}" for k in keys))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from llmcal.posttrain.check import compare
    from llmcal.posttrain.weights import load_checkpoint
    from llmcal.tasks.registry import load_task

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = {}
    for name in names:
        items = load_task(name, args.data_dir)[args.skip: args.skip + args.limit]
        if not items:
            raise ValueError(f"task {name!r}: no items after --skip {args.skip}")
        tasks[items[0].task] = items  # a file's task is its stem, as in --train_tasks
    t0 = time.perf_counter()
    before = load_checkpoint(args.before)
    after = load_checkpoint(args.after)
    _threads()

    def log(task: str, b: dict, a: dict) -> None:
        def iv(d: dict, key: str) -> str:
            lo, hi = d[f"{key}_ci"]
            return f"{d[key]:.3f} [{lo:.2f}, {hi:.2f}]"

        print(f"{task:14s} n {b['n_items']}  acc {b['accuracy']:.3f} -> {a['accuracy']:.3f}  stated-confidence "
              f"ECE {iv(b, 'verbal_ece')} -> {iv(a, 'verbal_ece')}  AUROC {iv(b, 'verbal_auroc')} -> "
              f"{iv(a, 'verbal_auroc')}  mean stated {b['mean_stated']:.3f} -> {a['mean_stated']:.3f}")

    train_tasks = [t.strip() for t in args.train_tasks.split(",") if t.strip()]
    res = compare(before, after, tasks, train_tasks, log=log)
    res.update(before_model=args.before, after_model=args.after, limit=args.limit, skip=args.skip,
               wall_s=round(time.perf_counter() - t0, 1))
    f = res["flags"]
    print(f"forgetting: {', '.join(f['forgetting']) or 'none'}; reward hacking: "
          f"{', '.join(f['reward_hacking']) or 'none'}; stated confidence collapsed: {', '.join(f['collapsed']) or 'none'}")
    print(f"generalization: {f['generalization']}")
    print(f"wrote {_write(args.out, 'check.json', res)} ({res['wall_s']} s)")
    return 0
