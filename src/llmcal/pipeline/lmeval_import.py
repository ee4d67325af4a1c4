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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from llmcal.core.sample import Sample, SampleError
from llmcal.tasks.errors import TaskError
from llmcal.tasks.formats import iter_jsonl


def _task_name(path: Path) -> str:
    stem = path.stem
    if stem.startswith("samples_"):
        stem = stem[len("samples_"):]
        parts = stem.rsplit("_", 1)  # drop the timestamp lm-eval appends
        if len(parts) == 2 and any(ch.isdigit() for ch in parts[1]):
            stem = parts[0]
    return stem


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
        n_before = len(records)
        for line, rec in iter_jsonl(path):
            where = {"source": path, "line": line}
            pairs = _pairs(rec.get("arguments"), where)
            if len(pairs) < 2:
                raise TaskError("a multiple-choice item needs at least 2 options", field="arguments", **where)
            conts = [c for _, c in pairs]
            ll, greedy = _loglikelihoods(rec.get("filtered_resps", rec.get("resps")), len(pairs), where)
            ref = _target(rec.get("target"), conts, where)
            pred, signals = mc_signals(ll, np.ones(len(conts)))
            nchars = [len(c) for c in conts]
            pred_norm = int(np.argmax(ll / np.asarray(nchars, dtype=float)))
            if "acc" in rec and bool(float(rec["acc"])) != (pred == ref):
                raise TaskError(f"lm-eval logged acc={rec['acc']} but the log-likelihoods pick option {pred} "
                                f"and the target is {ref}", field="acc", **where)
            record = {
                "id": f"{task}-{rec.get('doc_id', line)}", "task": task, "prompt": pairs[0][0],
                "question": pairs[0][0].strip(),
                "choices": [c.strip() for c in conts], "reference": ref, "reference_text": conts[ref].strip(),
                "prediction": pred, "prediction_text": conts[pred].strip(), "correct": bool(pred == ref),
                "prediction_norm": pred_norm, "correct_norm": bool(pred_norm == ref),
                "option_logprobs": [float(x) for x in ll],
                # lm-eval does not log token counts; per-token normalization then equals the raw signal
                "option_ntokens": [1] * len(conts), "option_nchars": nchars,
                "option_is_greedy": [bool(x) for x in greedy], "signals": signals,
                "meta": {"source": str(path), "line": line, "imported_from": "lm-eval"},
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


def import_lmeval(paths: Iterable[str | Path], config) -> Path | None:
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
    identity = {"name": Path(config.output_path).name, "model": "lm-eval import",
                "model_desc": "lm-eval --log_samples", "model_args": {}, "tasks": tasks, "limit": None,
                "style": "lm-eval", "chat": False, "dtype": "n/a", "hidden_layers": [],
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
