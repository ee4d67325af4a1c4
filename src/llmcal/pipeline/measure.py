"""Step 1 of a run: score every item, compute its signals, append its record.

Items already in ``samples.jsonl`` are skipped, so an interrupted run resumes
where it stopped.  The backend is built lazily by a factory: a run whose
items are all done never loads the model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import numpy as np

from llmcal.core.sample import Sample
from llmcal.records.run_dir import RunDir, RunDirError
from llmcal.signals.mc import mc_signals
from llmcal.core.items import MCItem
from llmcal.tasks.prompts import build_request, normalization_lengths


def item_hash(item) -> str:
    """A content hash of what decides an item's prompt and grade: task, question, options or
    accepted answers, the reference, the grader.  Stored with each sample; a resumed run whose
    item changed under the same id is refused (:func:`check_resume`)."""
    if getattr(item, "kind", "mc") == "mc":
        content: dict[str, Any] = {"task": item.task, "question": item.question, "choices": list(item.choices),
                                   "answer": int(item.answer)}
    else:
        content = {"task": item.task, "question": item.question, "answers": list(item.answers),
                   "grader": item.grader, "incorrect": list(item.incorrect)}
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:32]


def check_resume(run: RunDir, done: Sequence[Sample], items: Sequence[Any]) -> None:
    """Refuse to resume when the items under the recorded ids changed (an edited task file, another
    ``--data_dir``) or recorded items are no longer asked for; names the first few ids."""
    by_id = {it.id: it for it in items}
    changed = [s.id for s in done if s.id in by_id and s.item_hash is not None
               and s.item_hash != item_hash(by_id[s.id])]
    gone = [s.id for s in done if s.id not in by_id]

    def few(ids: list[str]) -> str:
        return ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")

    if changed:
        raise RunDirError(f"{run.samples_path}: {len(changed)} item(s) changed since they were scored "
                          f"({few(changed)}): the task file or --data_dir differs from the earlier run; "
                          "use --overwrite to score them again, or another --output_path")
    if gone:
        raise RunDirError(f"{run.samples_path}: {len(gone)} recorded item(s) are no longer among the tasks' items "
                          f"({few(gone)}): the task file or --data_dir differs from the earlier run; "
                          "use --overwrite to start again, or another --output_path")


def sample_record(item: MCItem, context: str, score, style: str, hidden_row: int | None) -> Sample:
    """One line of ``samples.jsonl``: everything known about one answered item, validated.

    Building it through :meth:`Sample.from_dict` checks what a backend returned (a NaN
    log-probability from a server stops the run here, before it reaches the folder).
    """
    pred, signals = mc_signals(score.logprobs, score.n_tokens)
    nchars = normalization_lengths(item, style)
    pred_norm = int(np.argmax(score.logprobs / np.asarray(nchars, dtype=np.float64)))
    rec: dict[str, Any] = {
        "id": item.id,
        "task": item.task,
        "prompt": context,
        "question": item.question,
        "choices": list(item.choices),
        "reference": item.answer,
        "reference_text": item.choices[item.answer],
        "prediction": pred,
        "prediction_text": item.choices[pred],
        "correct": bool(pred == item.answer),
        "prediction_norm": pred_norm,
        "correct_norm": bool(pred_norm == item.answer),
        "option_logprobs": [float(x) for x in score.logprobs],
        "option_ntokens": [int(x) for x in score.n_tokens],
        "option_nchars": nchars,
        "option_is_greedy": [bool(x) for x in score.is_greedy],
        "signals": signals,
        "meta": item.meta,
    }
    if hidden_row is not None:
        rec["hidden_row"] = hidden_row
    rec["item_hash"] = item_hash(item)
    return Sample.from_dict(rec, where=f"item {item.id!r} (task {item.task})")


def hidden_rows(scores) -> tuple[np.ndarray | None, list[str]]:
    """The run's hidden-state rows for a batch of scores, and what their slots hold.

    A row is (n_positions * n_kept, hidden): the last prompt token at every kept
    layer, then (when the backend kept it) the mean over the *predicted*
    option's tokens at every kept layer.
    """
    if not scores or scores[0].hidden is None:
        return None, []
    if all(s.answer_hidden is not None for s in scores):
        rows = [np.concatenate([s.hidden, s.answer_hidden[int(np.argmax(s.logprobs))]]) for s in scores]
        return np.stack(rows), ["last_prompt", "answer_mean"]  # (batch, 2 * n_kept, hidden)
    return np.stack([s.hidden for s in scores]), ["last_prompt"]  # (batch, n_kept, hidden)


def measure(
    run: RunDir,
    items: Sequence[MCItem],
    backend_factory: Callable[[], Any],
    style: str = "cloze",
    chat: bool = False,
    chunk: int = 64,
    progress: bool = True,
) -> int:
    """Score the items not yet recorded; return how many were scored now."""
    recorded = run.repair()
    check_resume(run, recorded, items)
    done = {s.id for s in recorded}
    n_done = len(done)
    todo = [it for it in items if it.id not in done]
    if not todo:
        return 0
    backend = backend_factory()
    chat_template = backend.apply_chat_template if chat else None
    bar = _progress(progress, total=len(items), done=n_done, label="scoring")
    try:
        for start in range(0, len(todo), chunk):
            batch = todo[start: start + chunk]
            requests = [build_request(it, style, chat_template) for it in batch]
            scores = backend.score_mc(requests, progress=bar.advance)
            hidden, positions = hidden_rows(scores)
            records = [
                sample_record(it, req.context, sc, style, n_done + i if hidden is not None else None)
                for i, (it, req, sc) in enumerate(zip(batch, requests, scores))
            ]
            run.append(records, hidden, positions)
            n_done += len(batch)
    finally:
        bar.close()
    return len(todo)


class _progress:
    """A rich progress bar when asked for and rich is installed; else silent."""

    def __init__(self, enabled: bool, total: int, done: int, label: str) -> None:
        self._p = None
        if not enabled:
            return
        try:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
        except ImportError:  # pragma: no cover - rich is a core extra
            return
        self._p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self._p.start()
        self._task = self._p.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
