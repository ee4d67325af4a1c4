#!/usr/bin/env python
"""``--tasks lmeval:`` against ``lm_eval`` itself on the same local YAML: numbers and speed, one process.

Two local lm-eval tasks over a public set in ``../shared/data`` (never copied): ARC-Easy
as multiple choice (lm-eval's own ``arc_easy`` prompt, acc and acc_norm) and the same
questions as partial scoring (the answer's text in the context, one shared continuation
" Yes": WinoGrande's shape).  Both tools use the same weights (the embedded model's
dequantized fp32 copy that llmcal keeps, so neither pays the GGUF dequantization) and
are timed with the model already loaded, from the YAML to the metrics:

* lm-eval: ``lm_eval.simple_evaluate`` with a loaded ``HFLM`` (task building, dataset
  reading, requests, forward passes, metrics), at ``--batch-size``;
* llmcal: ``load_task("lmeval:...")`` (the same TaskManager and ``build_all_requests``),
  the packed scorer, acc and acc_norm.

Prints one JSON line a task with both tools' acc / acc_norm, their seconds, the ratio
(lm-eval seconds / llmcal seconds) and ``/proc/loadavg`` before and after.  Run pinned::

    LLMCAL_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/lmeval_tasks.py --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MC_YAML = """\
task: bench_arc_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question.stem}}}}\\nAnswer:"
doc_to_choice: "{{{{question.choices | map(attribute='text') | list}}}}"
doc_to_target: "{{{{(question.choices | map(attribute='label') | list).index(answerKey)}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

PARTIAL_YAML = """\
task: bench_arc_partial
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: !function bench_utils.partial_gold
doc_to_choice: !function bench_utils.partial_contexts
doc_to_target: "Yes"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


UTILS = '''\
def partial_gold(doc):
    return [c["label"] for c in doc["question"]["choices"]].index(doc["answerKey"])


def partial_contexts(doc):
    q = doc["question"]
    return [f"Question: {q['stem']}\\nIs the answer \\"{c['text']}\\"?" for c in q["choices"]]
'''


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("LLMCAL_DATA", "../shared/data") + "/arc_easy_test.jsonl")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size (llmcal packs by tokens)")
    ap.add_argument("--tasks", default="bench_arc_mc,bench_arc_partial")
    args = ap.parse_args(argv)
    data = Path(args.data).resolve()
    if not data.is_file():
        print(f"skip: {data} not found (point --data or LLMCAL_DATA at the public sets)", file=sys.stderr)
        return 0
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(tempfile.mkdtemp(prefix="llmcal-lmeval-bench-"))
    (folder / "bench_arc_mc.yaml").write_text(MC_YAML.format(data=data))
    (folder / "bench_arc_partial.yaml").write_text(PARTIAL_YAML.format(data=data))
    (folder / "bench_utils.py").write_text(UTILS)

    import numpy as np

    from llmcal.backends.hf import HFBackend, gguf_cache_dir
    from llmcal.backends.model_args import EMBEDDED_GGUF, embedded_model_dir
    from llmcal.tasks.lmeval import LmevalOptions
    from llmcal.tasks.prompts import build_request, normalization_lengths
    from llmcal.tasks.registry import load_task

    ours = HFBackend.load()  # writes the dequantized cache the first time
    weights = gguf_cache_dir(embedded_model_dir() / EMBEDDED_GGUF)
    if weights is None or not (weights / "config.json").is_file():
        print("skip: the dequantized cache is off (LLMCAL_CACHE_DIR=off)", file=sys.stderr)
        return 0
    ours = HFBackend.load(pretrained=str(weights))

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    theirs = HFLM(pretrained=str(weights), dtype="float32", batch_size=args.batch_size, device="cpu")
    for task in args.tasks.split(","):
        before = loadavg()
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(model=theirs, tasks=[task], limit=args.limit,
                                      task_manager=TaskManager(include_path=str(folder), include_defaults=False))
        t_theirs = time.perf_counter() - t0
        res = out["results"][task]
        t0 = time.perf_counter()
        items = load_task(f"lmeval:{task}", limit=args.limit, lmeval=LmevalOptions(include_path=(str(folder),)))
        scores = ours.score_mc([build_request(it) for it in items])
        acc = np.mean([int(np.argmax(s.logprobs)) == it.answer for it, s in zip(items, scores)])
        acc_norm = np.mean([int(np.argmax(s.logprobs / np.asarray(normalization_lengths(it, "cloze"))))
                            == it.answer for it, s in zip(items, scores)])
        t_ours = time.perf_counter() - t0
        print(json.dumps({
            "task": task, "n": len(items), "lm_eval": {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"],
                                                        "seconds": round(t_theirs, 2), "batch_size": args.batch_size},
            "llmcal": {"acc": float(acc), "acc_norm": float(acc_norm), "seconds": round(t_ours, 2),
                       "max_tokens": ours.max_tokens},
            "same_numbers": bool(abs(acc - res["acc,none"]) < 1e-9 and abs(acc_norm - res["acc_norm,none"]) < 1e-9),
            "ratio_lm_eval_over_llmcal": round(t_theirs / t_ours, 2),
            "loadavg_before": before, "loadavg_after": loadavg(),
            "threads": os.environ.get("LLMCAL_THREADS", "all"),
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
