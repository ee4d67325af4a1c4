"""Post-training end to end on the embedded model: pairs -> ORPO vs SFT+DPO -> check -> SVD -> ablations.

    LLMCAL_THREADS=1 .venv/bin/python benchmarks/posttrain.py --run_dir RUN_DIR [--steps 40] [--out DIR]

RUN_DIR is a measured and calibrated run folder (``llmcal run --tasks builtin
--limit 400 --bootstrap 0 --no_report --output_path RUN_DIR``); its 400 items
give the preference pairs, and ``check`` uses the built-in items after them
(``--skip 400``) so nothing trained on is checked.  Each step runs the CLI
(``python -m llmcal posttrain``) in a fresh process, writes its
JSON under ``--out`` and is skipped when that JSON exists, so an interrupted
benchmark resumes.  At the end a markdown summary is printed (and written to
``--out/summary.md``): the numbers recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "llmcal", "posttrain"]


def step(name: str, args: list[str], done: Path) -> None:
    if done.exists():
        print(f"[{name}] done before: {done}")
        return
    t0 = time.perf_counter()
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    print(f"[{name}] {' '.join(args)}", flush=True)
    subprocess.run(CLI + args, check=True, env=env)
    print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--out", default="runs/posttrain_bench")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--check_limit", type=int, default=100)
    ap.add_argument("--ablate_limit", type=int, default=100)
    ap.add_argument("--ablate_texts", type=int, default=20)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = out / "pairs.jsonl"
    step("pairs", ["pairs", a.run_dir, "--out", str(pairs)], pairs)
    train = ["--steps", str(a.steps), "--batch_size", str(a.batch_size), "--lr", str(a.lr), "--quiet"]
    for method in ("orpo", "sft+dpo"):
        folder = out / method.replace("+", "_")
        step(method, ["orpo", str(pairs), "--method", method, "--out", str(folder), *train], folder / "train.json")
    for method in ("orpo", "sft_dpo"):
        step(f"check {method}", ["check", "embedded", str(out / method / "final"), "--tasks", "builtin,arc_easy,sciq",
                                 "--train_tasks", "builtin", "--skip", "400", "--limit", str(a.check_limit),
                                 "--out", str(out / method)], out / method / "check.json")
        step(f"svd {method}", ["svd", "embedded", str(out / method / "final"), "--null", "--out", str(out / method)],
             out / method / "svd.json")
    step("ablate orpo", ["ablate", "embedded", str(out / "orpo" / "final"), "--limit", str(a.ablate_limit),
                         "--texts", str(a.ablate_texts), "--out", str(out / "orpo")], out / "orpo" / "ablate.json")
    summary = summarize(out)
    (out / "summary.md").write_text(summary)
    print(summary)
    return 0


def summarize(out: Path) -> str:
    lines = ["| method | steps | wall s | forward calls | sequences | peak RSS MB | train loss (first -> last) |",
             "|---|---|---|---|---|---|---|"]
    extra = [m for m in ("orpo_balanced",) if (out / m / "train.json").exists()]  # optional extra runs
    for method in ("orpo", "sft_dpo", *extra):
        rec = json.loads((out / method / "train.json").read_text())
        t = rec["total"]
        losses = "; ".join(f"{s['method']} {s['first_loss']:.3f} -> {s['last_loss']:.3f}" for s in rec["stages"])
        lines.append(f"| {method} | {t['steps']} | {t['wall_s']} | {t['forward_calls']} | {t['forward_rows']} "
                     f"| {t['peak_rss_mb']} | {losses} |")
    lines += ["", "| model | task | acc before -> after | verbal ECE | verbal AUROC | mean stated conf | option ECE |",
              "|---|---|---|---|---|---|---|"]
    for method in ("orpo", "sft_dpo", *[m for m in extra if (out / m / "check.json").exists()]):
        chk = json.loads((out / method / "check.json").read_text())
        for task, b in chk["before"].items():
            x = chk["after"][task]
            lines.append(f"| {method} | {task} | {b['accuracy']:.3f} -> {x['accuracy']:.3f} | {b['verbal_ece']:.3f} -> "
                         f"{x['verbal_ece']:.3f} | {b['verbal_auroc']:.3f} -> {x['verbal_auroc']:.3f} | "
                         f"{b['mean_stated']:.3f} -> {x['mean_stated']:.3f} | {b['option_ece']:.3f} -> "
                         f"{x['option_ece']:.3f} |")
        f = chk["flags"]
        if "std_stated" not in next(iter(chk["after"].values())):  # a check.json from before the flag existed
            f["collapsed"] = [k for k, v in chk["after"].items() if max(v["level_share"].values()) > 0.99]
        lines.append(f"| {method} | flags | forgetting: {', '.join(f['forgetting']) or 'none'} | reward hacking: "
                     f"{', '.join(f['reward_hacking']) or 'none'} | collapsed: "
                     f"{', '.join(f.get('collapsed', [])) or 'none'} | not generalized: "
                     f"{f['calibration_not_generalized']} | |")
    lines += ["", "| post model | ratio mean (median) | CV within (median) | CV across matrices | cos(R_U,R_V) "
              "| cos off-diagonal | mean abs diag R_U | principal angle U (deg) | rel change |",
              "|---|---|---|---|---|---|---|---|---|"]
    for method in ("orpo", "sft_dpo"):
        svd = json.loads((out / method / "svd.json").read_text())
        for label, res in [(method, svd), *([(f"{method}: noise control", svd["null"])] if "null" in svd else [])]:
            s = res["summary"]["all"]
            lines.append(f"| {label} | {s['median_ratio_mean']:.5f} | {s['median_ratio_cv']:.2e} | "
                         f"{s['ratio_cv_across']:.2e} | {s['median_lr_similarity']:.4f} | "
                         f"{s.get('median_lr_similarity_offdiag', float('nan')):.3f} | {s['median_diag_u']:.4f} | "
                         f"{s['median_angle_mean_u']:.3f} | {s['median_rel_change']:.2e} |")
    abl = json.loads((out / "orpo" / "ablate.json").read_text())
    lines += ["", f"| ablation (base = embedded, post = ORPO) | perplexity | {abl['task']} acc | ECE |",
              "|---|---|---|---|"]
    for mode, r in abl["results"].items():
        lines.append(f"| {mode} | {r.get('perplexity', float('nan')):.3f} | {r.get('accuracy', float('nan')):.3f} | "
                     f"{r.get('ece', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
