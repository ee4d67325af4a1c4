"""Which P(True) ranks answers best: the paper's standalone prompt or the question asked in the chat?

    LLMCAL_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/ptrue_forms.py --data_dir ../shared/data \
        --tasks builtin_open,nq_open,truthfulqa_gen --limit 150

For each task the embedded model answers greedily (``answer_batch`` with the token family and the
paper's ``ptrue``), each answer is graded, and P(True) is read in four forms, by AUROC against
correctness (higher = ranks right answers above wrong ones; 0.5 = chance):

* ``ptrue``: Kadavath et al. (2022)'s standalone prompt that quotes question and answer
  (llmcal's ``--signals ptrue``; LM-Polygraph's ``PTrue`` uses the same format);
* ``followup_tf``: "Is your answer correct? Reply True or False." as the next chat turn, scored on
  "True" / "False" (llmcal's default ``ptrue_chat``);
* ``followup_ab``: the paper's "(A) True / (B) False" options as the next chat turn;
* ``followup_yn``: "Is your answer correct? Reply Yes or No." as the next chat turn.

The token-family AUROCs (``seq_prob``, ``entropy_conf``) are printed beside them for scale. The
default was chosen by the mean over the tasks, not on any single one.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

FORMS = {
    "followup_tf": ("Is your answer correct? Reply True or False.", ("True", "False")),
    "followup_ab": ("Is the proposed answer:\n (A) True\n (B) False\nThe proposed answer is:", (" (A) True", " (B) False")),
    "followup_yn": ("Is your answer correct? Reply Yes or No.", ("Yes", "No")),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="builtin_open,nq_open,truthfulqa_gen")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from sklearn.metrics import roc_auc_score

    from llmcal.backends.registry import load_backend
    from llmcal.core.requests import MCRequest
    from llmcal.pipeline.measure_open import OpenSettings, answer_batch, chat_prompt
    from llmcal.tasks.prompts import followup_messages
    from llmcal.tasks.registry import load_task

    be = load_backend("hf")
    torch.set_num_threads(max(1, int(os.environ.get("LLMCAL_THREADS", "1"))))
    settings = OpenSettings(families=("tokens", "ptrue"))
    out = {}
    for spec in args.tasks.split(","):
        items = load_task(spec.strip(), data_dir=args.data_dir, limit=args.limit)
        t0 = time.perf_counter()
        recs = []
        for lo in range(0, len(items), 16):
            recs += answer_batch(be, items[lo:lo + 16], settings)
        y = np.array([r.correct for r in recs], dtype=float)
        res = {"n": len(items), "accuracy": float(y.mean()), "seconds": round(time.perf_counter() - t0, 1)}

        def auroc(v):
            return float(roc_auc_score(y, np.nan_to_num(np.asarray(v, dtype=float)))) if 0 < y.mean() < 1 else None

        for k in ("ptrue", "seq_prob", "entropy_conf"):
            res[k] = auroc([r.signals.get(k, np.nan) for r in recs])
        for name, (question, conts) in FORMS.items():
            reqs = [MCRequest(chat_prompt(be, followup_messages(it, r.prediction_text, question), True), conts)
                    for it, r in zip(items, recs)]
            res[name] = auroc([sc.logprobs[0] - sc.logprobs[1] for sc in be.score_mc(reqs)])
        out[spec] = res
        print(spec, json.dumps(res), flush=True)
    forms = ("ptrue",) + tuple(FORMS)
    means = {f: float(np.mean([r[f] for r in out.values() if r[f] is not None])) for f in forms}
    print("mean AUROC over the tasks:", json.dumps({k: round(v, 3) for k, v in means.items()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": out, "mean": means}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
