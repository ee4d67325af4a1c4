"""Multiple-choice scoring throughput: llmcal against lm-evaluation-harness, same items, same run.

    python benchmarks/scoring.py --data ../shared/data/arc_easy_test.jsonl --limit 300 \
        --peer-python .bench-venv/bin/python

The peer (lm-eval 0.4.13, HF backend, batch 16) runs in its own environment
(benchmarks/setup_bench_env.sh) through benchmarks/lmeval_peer.py; llmcal runs
here in fp32 and bf16. Model loading is excluded on both sides. Prints one
table with accuracies side by side and the throughput ratio, and exits
non-zero if llmcal's fp32 accuracy differs from lm-eval's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_llmcal(data: Path, limit: int, dtype: str, max_tokens: int, matmul: str = "auto") -> dict:
    from llmcal.backends.registry import load_backend
    from llmcal.tasks.prompts import build_request, normalization_lengths
    from llmcal.tasks.registry import load_task

    # the ARC loader, on the very file the peer reads
    split = "dev" if data.stem.endswith("_dev") else "test"
    name = ("arc_challenge" if "challenge" in data.name else "arc_easy") + f":{split}"
    items = load_task(name, data_dir=data.parent, limit=limit)
    backend = load_backend("hf", dtype=dtype, max_tokens=max_tokens, hidden_layers=(-1,), matmul=matmul)
    chosen = backend.describe()["matmul"]
    print(f"llmcal {dtype} matmul={matmul}: {chosen}", flush=True)
    requests = [build_request(it, "cloze") for it in items]
    backend.score_mc(requests[:8])  # warm-up
    start = time.perf_counter()
    scores = backend.score_mc(requests)
    seconds = time.perf_counter() - start
    acc = float(np.mean([np.argmax(s.logprobs) == it.answer for s, it in zip(scores, items)]))
    acc_norm = float(np.mean([
        np.argmax(s.logprobs / np.asarray(normalization_lengths(it, "cloze"))) == it.answer
        for s, it in zip(scores, items)
    ]))
    tool = "llmcal" if matmul == "auto" else f"llmcal {matmul}"
    return {"tool": f"{tool} ({chosen['matmul']})", "dtype": dtype, "n": len(items), "acc": acc,
            "acc_norm": acc_norm, "seconds": seconds, "items_per_s": len(items) / seconds}


def run_peer(python: str, data: Path, limit: int, batch_size: int) -> dict:
    cmd = [python, str(HERE / "lmeval_peer.py"), "--data", str(data), "--limit", str(limit),
           "--batch-size", str(batch_size), "--dtype", "float32"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"lm-eval peer failed:\n{out.stderr[-4000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    res = json.loads(line)
    return {"tool": f"lm-eval {res.get('version', '')}", "dtype": "float32", "n": res["n"], "acc": res["acc"],
            "acc_norm": res["acc_norm"], "seconds": res["seconds"], "items_per_s": res["items_per_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--peer-python", default=str(HERE.parent / ".bench-venv" / "bin" / "python"))
    ap.add_argument("--peer-batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()

    rows = []
    if not args.skip_peer:
        rows.append(run_peer(args.peer_python, args.data, args.limit, args.peer_batch_size))
    print(f"load average {open('/proc/loadavg').read().split()[:3]}", flush=True)
    rows.append(run_llmcal(args.data, args.limit, "float32", args.max_tokens))
    # the same fp32 scoring on torch's default matmul, in the same run: what the oneDNN probe bought
    rows.append(run_llmcal(args.data, args.limit, "float32", args.max_tokens, matmul="default"))
    rows.append(run_llmcal(args.data, args.limit, "bfloat16", args.max_tokens))
    base = rows[0]["items_per_s"]
    print(f"{'tool':<30}{'dtype':<10}{'n':>5}{'acc':>9}{'acc_norm':>10}{'seconds':>9}{'items/s':>9}{'ratio':>7}")
    for r in rows:
        print(f"{r['tool']:<30}{r['dtype']:<10}{r['n']:>5}{r['acc']:>9.4f}{r['acc_norm']:>10.4f}"
              f"{r['seconds']:>9.1f}{r['items_per_s']:>9.2f}{r['items_per_s'] / base:>6.1f}x")
    if not args.skip_peer:
        peer, ours = rows[0], rows[1]
        same = round(peer["acc"], 6) == round(ours["acc"], 6) and round(peer["acc_norm"], 6) == round(ours["acc_norm"], 6)
        print(f"fp32 accuracy identical to lm-eval: {same}")
        bf = rows[3]
        print(f"bf16 - fp32 accuracy: {100 * (bf['acc'] - ours['acc']):+.2f} points")
        print(f"load average at the end {open('/proc/loadavg').read().split()[:3]}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
