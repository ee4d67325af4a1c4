"""``--log_samples``: a run's ``lmeval:`` tasks written the way ``lm_eval --log_samples`` writes them.

Beside llmcal's own ``samples.jsonl`` and ``results.json``, the run folder gets
``lmeval/samples_<task>_<date>.jsonl`` (one line a document and filter: ``doc_id``,
``doc``, ``target``, ``arguments`` as ``gen_args_i`` -> ``arg_j``, ``resps`` and
``filtered_resps`` as strings, ``filter``, ``metrics``, the three hashes, then every
metric's value) and ``lmeval/results_<date>.json`` (``results`` keyed ``metric,filter``
with ``_stderr``, ``configs``, ``versions``, ``n-shot``, ``higher_is_better``,
``n-samples``, ``config``), so dashboards and scripts that read lm-eval's output read
an llmcal run, and ``llmcal import-lmeval`` reads the samples files back.

The per-document metrics are lm-eval's own (``process_results`` on llmcal's scores,
:meth:`llmcal.tasks.lmeval.LmevalTask.mc_metrics`; the generate_until ones were
computed when the answers were graded); the aggregates and standard errors are
lm-eval's functions (:meth:`~llmcal.tasks.lmeval.LmevalTask.aggregate`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from llmcal.records.run_dir import RunDir
from llmcal.tasks.lmeval import is_recorded_chat

FOLDER = "lmeval"


def _args(context: str, second: Any) -> dict[str, Any]:
    return {"arg_0": context, "arg_1": second}


def _mc_lines(task, sample) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc_id = int(sample.meta["doc_id"])
    insts = task.instances[doc_id]
    chat = any(is_recorded_chat(i.arguments[0]) for i in insts)
    contexts = [sample.prompt if chat else i.arguments[0] for i in insts]
    metrics = task.mc_metrics(doc_id, sample.option_logprobs, sample.option_is_greedy)
    pairs = [[str(lp), str(bool(g))] for lp, g in zip(sample.option_logprobs, sample.option_is_greedy)]
    target = task.target(doc_id)
    line = {
        "doc_id": doc_id, "doc": task.docs[doc_id], "target": str(target),
        "arguments": {f"gen_args_{o}": _args(c, i.arguments[1]) for o, (c, i) in enumerate(zip(contexts, insts))},
        "resps": [[p] for p in pairs], "filtered_resps": pairs, "filter": "none", "metrics": list(metrics),
        **task.hashes(doc_id, contexts[0], target), **metrics,
    }
    return [line], {"none": metrics}


def _gen_lines(task, sample) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc_id = int(sample.meta["doc_id"])
    inst = task.instances[doc_id][0]
    logged = sample.meta.get("lmeval") or {}
    prompt = sample.prompt if isinstance(sample.prompt, str) else json.dumps(sample.prompt)
    target = task.target(doc_id)
    lines, per_filter = [], {}
    for flt, metrics in (logged.get("metrics") or {}).items():
        lines.append({
            "doc_id": doc_id, "doc": task.docs[doc_id], "target": str(target),
            "arguments": {"gen_args_0": _args(prompt, inst.arguments[1])},
            "resps": [[str(sample.prediction_text)]], "filtered_resps": [str(logged["filtered"][flt])],
            "filter": flt, "metrics": list(metrics), **task.hashes(doc_id, prompt, target), **metrics,
        })
        per_filter[flt] = metrics
    return lines, per_filter


def write_lmeval_logs(run: RunDir, config, date: str | None = None) -> dict[str, Path]:
    """Write ``lmeval/samples_<task>_<date>.jsonl`` and ``lmeval/results_<date>.json``; return their paths."""
    from llmcal.tasks.lmeval import is_lmeval_spec, lmeval_version, load_lmeval_tasks

    specs = [t for t in config.tasks if is_lmeval_spec(t)]
    if not specs:
        raise ValueError("--log_samples writes lm-eval's samples files for lmeval: tasks; "
                         f"--tasks {','.join(config.tasks)} names none (llmcal's samples.jsonl is always written)")
    options = config.lmeval_options()
    tasks = [t for spec in specs for t in load_lmeval_tasks(spec, options, limit=config.limit)]
    samples = run.read_samples()
    date = date or datetime.now().isoformat().replace(":", "-")
    folder = run.path / FOLDER
    folder.mkdir(exist_ok=True)
    for old in list(folder.glob("samples_*.jsonl")) + list(folder.glob("results_*.json")):
        old.unlink()  # one run, one set of lm-eval files
    written: dict[str, Path] = {}
    results: dict[str, Any] = {}
    for task in tasks:
        mine = sorted((s for s in samples if s.task == task.name), key=lambda s: int(s.meta["doc_id"]))
        lines: list[dict[str, Any]] = []
        per_filter: dict[str, list[dict[str, Any]]] = {}
        for s in mine:
            got, metrics = (_mc_lines if task.kind == "mc" else _gen_lines)(task, s)
            lines += got
            for flt, m in metrics.items():
                per_filter.setdefault(flt, []).append(m)
        path = folder / f"samples_{task.name}_{date}.jsonl"
        run.write_text(path, "".join(json.dumps(x, ensure_ascii=False, default=str) + "\n" for x in lines))
        written[task.name] = path
        results[task.name] = {"name": task.name, **task.aggregate(per_filter), "sample_len": len(mine)}
    margs = config.model_args if isinstance(config.model_args, str) else ",".join(
        f"{k}={v}" for k, v in config.model_args.items())
    payload = {
        "results": results,
        "group_subtasks": {t.name: [] for t in tasks},
        "configs": {t.name: t.config_dict() for t in tasks},
        "versions": {t.name: t.version() for t in tasks},
        "n-shot": {t.name: t.n_shot() for t in tasks},
        "higher_is_better": {t.name: t.higher_is_better() for t in tasks},
        "n-samples": {t.name: {"original": len(t.task.eval_docs), "effective": results[t.name]["sample_len"]}
                      for t in tasks},
        "config": {"model": config.model, "model_args": margs, "batch_size": config.batch_size,
                   "device": config.device, "limit": config.limit, "bootstrap_iters": 1000,
                   "random_seed": config.seeds()[0], "numpy_seed": config.seeds()[1],
                   "torch_seed": config.seeds()[2], "fewshot_seed": config.seeds()[3],
                   "gen_kwargs": config.gen_kwargs},
        "date": date,
        "lm_eval_version": lmeval_version(),
        "llmcal": {"run": str(run.path), "results": str(run.results_path)},
    }
    results_path = folder / f"results_{date}.json"
    run.write_text(results_path, json.dumps(payload, indent=2, ensure_ascii=False, default=str))
    written["results"] = results_path
    return written
