"""Read lm-evaluation-harness ``--log_samples`` output into llmcal records.

lm-eval writes one ``samples_<task>_<timestamp>.jsonl`` per task; for a
multiple-choice (``loglikelihood``) task each line holds the request pairs
(``arguments``: context and continuation per option), the answers
(``filtered_resps``: ``[log-likelihood, is_greedy]`` per option), the
``target`` and the task's metrics (``acc``, ``acc_norm``).  Versions differ in
details (``arguments`` as a list of pairs or a ``gen_args_i`` -> ``arg_0`` /
``arg_1`` mapping; numbers as JSON numbers or strings; ``target`` as the
option index or its text), and all are read.  The records are the ones
``llmcal measure`` writes, so calibration and the report run on them
unchanged, without re-running the model.  Where lm-eval logged ``acc``, the
recomputed correctness is checked against it.

``acc_norm`` is lm-eval's: the log-likelihood over the length in characters of the
choice as the task defines it (``doc_to_choice``), which is the logged continuation
without its target delimiter (the leading space), or for partial scoring (one
continuation, several contexts: WinoGrande) the option's context.  Where the line
logs ``acc_norm`` itself (few-shot partial scoring puts the examples in the
context), the logged value is kept.  An item's id is ``<task>-<doc id>``, the
document's own ``id`` field where it has one (ARC's ``Mercury_7175875``): the ids
llmcal's own loaders and ``--tasks lmeval:`` give the same documents, so the runs join.
The run folder records the model (``--model_args``, else the ``results_*.json``
lm-eval wrote beside the samples) and the cloze prompt style lm-eval's tasks use, so
``llmcal ask`` scores a new question the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from llmcal.core.sample import Sample, SampleError
from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import iter_jsonl
from llmcal.tasks.lmeval import doc_keys


def _task_name(path: Path) -> str:
    stem = path.stem
    if stem.startswith("samples_"):
        stem = stem[len("samples_"):]
        parts = stem.rsplit("_", 1)  # drop the timestamp lm-eval appends
        if len(parts) == 2 and any(ch.isdigit() for ch in parts[1]):
            stem = parts[0]
    return stem


def _refuse_results_file(path: Path) -> None:
    """lm-eval's ``results_<date>.json`` given instead of a samples file: say which file is wanted."""
    head = path.read_text(encoding="utf-8", errors="replace")[:200_000]
    looks = path.name.startswith("results") or path.suffix.lower() == ".json"
    if not looks and not head.lstrip().startswith("{\n"):
        return
    try:
        obj = json.loads(head)
    except ValueError:
        return
    if isinstance(obj, dict) and "results" in obj and "doc_id" not in obj:
        near = sorted(p.name for p in path.parent.glob("samples_*.jsonl"))[:5]
        raise TaskError("this is lm-eval's results file (aggregate metrics only); import-lmeval reads the per-"
                        "sample samples_<task>_<date>.jsonl files that `lm_eval --log_samples` writes beside it"
                        + (f" (here: {', '.join(near)})" if near else ""), source=path)


def model_from_results(paths: list[Path]) -> dict[str, Any]:
    """``pretrained=...`` etc. from a ``results_*.json`` lm-eval wrote beside the samples (empty if none)."""
    from llmcal.backends.model_args import _KNOWN_KEYS as _HF_KEYS, parse_model_args

    for folder in dict.fromkeys(p.parent for p in paths):
        for res in sorted(folder.glob("results_*.json"), reverse=True):
            try:
                margs = json.loads(res.read_text()).get("config", {}).get("model_args")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(margs, str):
                margs = dict(part.split("=", 1) for part in margs.split(",") if "=" in part)
            if isinstance(margs, dict) and margs.get("pretrained"):
                # the keys llmcal's hf backend takes (lm-eval's others, e.g. parallelize, do not apply)
                return parse_model_args(",".join(f"{k}={v}" for k, v in margs.items() if k in _HF_KEYS))
    return {}


def _is_partial(pairs: list[tuple[str, str]]) -> bool:
    """Partial scoring (WinoGrande): several contexts, one continuation."""
    return len({c for c, _ in pairs}) > 1 and len({x for _, x in pairs}) == 1


def _partial_target(rec: dict, pairs: list[tuple[str, str]], pred: int, where: dict) -> int:
    """The gold option of a partial-scoring line.  lm-eval logs ``target`` = the shared continuation
    (``doc_to_target``), not the gold index (``doc_to_text``), so the index comes from an index-like
    ``target``, else from the logged ``acc`` (right: the prediction; wrong, two options: the other one)."""
    target = rec.get("target")
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    if isinstance(target, int) and not isinstance(target, bool) or (
            isinstance(target, str) and target.strip().isdigit()):
        if 0 <= int(target) < len(pairs):
            return int(target)
    if "acc" in rec:
        if float(rec["acc"]):
            return pred
        if len(pairs) == 2:
            return 1 - pred
    raise TaskError("a partial-scoring line (several contexts, one continuation) whose gold option is not "
                    "logged: lm-eval logs the continuation as 'target'; the line needs 'acc' (two options) "
                    "or an index 'target'", field="target", **where)


def _norm_lengths(pairs: list[tuple[str, str]]) -> list[int]:
    """lm-eval's ``acc_norm`` divisor: the length of each choice (``doc_to_choice``), not of what was scored."""
    if _is_partial(pairs):  # partial scoring: the choices are the contexts
        return [max(1, len(c)) for c, _ in pairs]
    return [max(1, len(x[1:] if x.startswith(" ") else x)) for _, x in pairs]


def _pairs(arguments: Any, where: dict) -> list[tuple[str, str]]:
    if isinstance(arguments, dict):
        keys = sorted(arguments, key=lambda k: int("".join(ch for ch in k if ch.isdigit()) or 0))
        arguments = [[arguments[k].get("arg_0"), arguments[k].get("arg_1")] for k in keys]
    if not isinstance(arguments, list) or not arguments:
        raise TaskError("field 'arguments' is not a list of (context, continuation) pairs", field="arguments", **where)
    out = []
    for a in arguments:
        if not isinstance(a, (list, tuple)) or len(a) < 2 or not isinstance(a[0], str) or not isinstance(a[1], str):
            raise TaskError("field 'arguments': a request is not a (context, continuation) pair of strings "
                            "(is this a generation task? only loglikelihood tasks can be imported)",
                            field="arguments", **where)
        out.append((a[0], a[1]))
    return out


def _loglikelihoods(resps: Any, n: int, where: dict) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(resps, list) or len(resps) != n:
        raise TaskError(f"field 'filtered_resps' should hold {n} [log-likelihood, is_greedy] pairs",
                        field="filtered_resps", **where)
    ll, greedy = np.empty(n), np.zeros(n, dtype=bool)
    for i, r in enumerate(resps):
        while isinstance(r, list) and len(r) == 1 and isinstance(r[0], list):
            r = r[0]  # resps nest one level deeper than filtered_resps
        try:
            ll[i] = float(r[0] if isinstance(r, list) else r)
            greedy[i] = str(r[1]).lower() == "true" if isinstance(r, list) and len(r) > 1 else False
        except (TypeError, ValueError, IndexError):
            raise TaskError(f"field 'filtered_resps': response {i} is not a log-likelihood: {r!r}",
                            field="filtered_resps", **where) from None
    return ll, greedy


def _target(target: Any, conts: list[str], where: dict) -> int:
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    if isinstance(target, bool):
        raise TaskError(f"field 'target': {target!r} is not an option", field="target", **where)
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()
                                   and not any(c.strip() == target.strip() for c in conts)):
        idx = int(target)
        if 0 <= idx < len(conts):
            return idx
    if isinstance(target, str):
        stripped = [c.strip() for c in conts]
        if target.strip() in stripped:
            return stripped.index(target.strip())
    raise TaskError(f"field 'target': {target!r} is neither an option index nor an option's text",
                    field="target", **where)


def read_lmeval_samples(paths: Iterable[str | Path]) -> list[Sample]:
    """llmcal sample records from lm-eval ``samples_*.jsonl`` files (multiple-choice tasks), validated."""
    from llmcal.signals.mc import mc_signals

    records: list[Sample] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise TaskError("no such file", source=path)
        task = _task_name(path)
        _refuse_results_file(path)
        n_before = len(records)
        rows = list(iter_jsonl(path))
        keys = doc_keys([rec.get("doc") for _, rec in rows], [rec.get("doc_id", line) for line, rec in rows])
        for (line, rec), key in zip(rows, keys):
            where = {"source": path, "line": line}
            pairs = _pairs(rec.get("arguments"), where)
            if len(pairs) < 2:
                raise TaskError("a multiple-choice item needs at least 2 options", field="arguments", **where)
            conts = [c for _, c in pairs]
            ll, greedy = _loglikelihoods(rec.get("filtered_resps", rec.get("resps")), len(pairs), where)
            pred, signals = mc_signals(ll, np.ones(len(conts)))
            ref = _partial_target(rec, pairs, pred, where) if _is_partial(pairs) else _target(rec.get("target"),
                                                                                               conts, where)
            nchars = _norm_lengths(pairs)
            pred_norm = int(np.argmax(ll / np.asarray(nchars, dtype=float)))
            if "acc" in rec and bool(float(rec["acc"])) != (pred == ref):
                raise TaskError(f"lm-eval logged acc={rec['acc']} but the log-likelihoods pick option {pred} "
                                f"and the target is {ref}", field="acc", **where)
            if "acc_norm" in rec and bool(float(rec["acc_norm"])) != (pred_norm == ref):
                # lm-eval's divisor is not recoverable from the log (few-shot partial scoring): keep its verdict
                if float(rec["acc_norm"]):
                    pred_norm = ref
                else:
                    order = np.argsort(-(ll / np.asarray(nchars, dtype=float)))
                    pred_norm = int(next(o for o in order if o != ref))
            record = {
                "id": f"{task}-{key}", "task": task, "prompt": pairs[0][0],
                "question": pairs[0][0].strip(),
                "choices": [c.strip() for c in conts], "reference": ref, "reference_text": conts[ref].strip(),
                "prediction": pred, "prediction_text": conts[pred].strip(), "correct": bool(pred == ref),
                "prediction_norm": pred_norm, "correct_norm": bool(pred_norm == ref),
                "option_logprobs": [float(x) for x in ll],
                # lm-eval does not log token counts; per-token normalization then equals the raw signal
                "option_ntokens": [1] * len(conts), "option_nchars": nchars,
                "option_is_greedy": [bool(x) for x in greedy], "signals": signals,
                "meta": {"source": str(path), "line": line, "imported_from": "lm-eval",
                         "doc_id": rec.get("doc_id", line)},
            }
            try:
                records.append(Sample.from_dict(record, where=f"{path} line {line}"))
            except SampleError as err:
                raise TaskError(str(err).split(": ", 1)[-1], **where) from None
        if len(records) == n_before:
            raise TaskError("holds no samples", source=path)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise TaskError("the same task's samples were given twice (two files of one task?)")
    return records


def import_lmeval(paths: Iterable[str | Path], config, model_args: dict[str, Any] | None = None) -> Path | None:
    """``llmcal import-lmeval``: a run folder from lm-eval's logged samples, calibrated (and reported).

    Every line is checked before anything is written; importing into a folder that already
    holds samples is refused rather than duplicating them.  Returns the report's path
    (None with ``config.report`` off).
    """
    from llmcal.pipeline.run import calibrate_run, report_run
    from llmcal.records.run_dir import RunDir

    paths = [str(p) for p in paths]
    if config.output_path is None:
        raise ValueError("--output_path: the run folder to create is required")
    records = read_lmeval_samples(paths)
    tasks = sorted({r.task for r in records})
    margs = dict(model_args) if model_args is not None else model_from_results([Path(p) for p in paths])
    name = str(margs.get("pretrained") or "") or "lm-eval import (model unknown: give --model_args)"
    identity = {"name": Path(config.output_path).name, "model": "hf", "model_desc": name,
                "model_args": margs, "tasks": tasks, "limit": None,
                # lm-eval's multiple-choice prompts are llmcal's cloze ("Question: ...\nAnswer:", " " + choice)
                "style": "cloze", "prompt_source": "lm-eval --log_samples", "chat": False,
                "dtype": str(margs.get("dtype", "n/a")), "hidden_layers": [],
                "sources": [str(Path(p).resolve()) for p in paths]}
    run = RunDir(config.output_path)
    if config.overwrite:
        run.check_overwrite()  # a folder llmcal did not make is refused before anything changes
    with run.lock():
        had_config = run.config_path.exists() and not config.overwrite
        try:
            if run.start(identity, ("model", "tasks", "sources"), overwrite=config.overwrite):
                raise ValueError(f"{run.path} already holds samples; use --overwrite to import again")
            run.append(records, None)
        except BaseException:
            if not had_config:
                run.discard_start()
            raise
        calibrate_run(run, config)
        return report_run(run) if config.report else None
