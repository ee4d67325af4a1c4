"""The answer log's endpoints, mounted by ``llmcal serve --db`` (``create_app(extra_routers=...)``).

=========================  ==============================================================
``POST /v1/feedback``      ``{id, correct | rating | corrected_answer}``: a label on an answer
``GET /v1/monitor``        the monitor summary (:func:`llmcal.pipeline.monitor.monitor_summary`)
``GET /dashboard``         the monitor page (``dashboard.html``: reliability diagram, alarm)
=========================  ==============================================================

``/v1/*`` need the API key when the server has one (serve's guard checks it before any of
this runs); the dashboard page itself holds no data and asks ``/v1/monitor`` with the key the
user typed (kept in the tab's sessionStorage, shared with the main page).  Database work runs
in a thread, never on the event loop.  Feedback for an answer the background recorder has not
written yet waits for it (``QueuedRecorder.flush``) before it is refused as unknown (404).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llmcal.pipeline.monitor import monitor_summary
from llmcal.records.answer_log import AnswerLog, QueuedRecorder

DASHBOARD = Path(__file__).with_name("dashboard.html")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64, description="the answer's id (the response's `id`, or "
                                                             "`confidence.id`)")
    correct: bool | None = None
    rating: int | None = Field(None, ge=-1, le=1, description="+1 thumbs up, -1 thumbs down, 0 unsure")
    corrected_answer: str | None = Field(None, min_length=1, max_length=8000)


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": code}},
                        status_code=status)


def feedback_router(answer_log: AnswerLog, recorder: QueuedRecorder | None = None, run_dir: str | Path | None = None,
                    baseline: float | None = None, window_s: float = 3600.0, bootstrap: int = 300) -> APIRouter:
    """The router over ``answer_log`` (``recorder``: the queue serve records through, flushed before
    a feedback for an id not yet written is refused)."""
    router = APIRouter()

    def store(body: FeedbackRequest) -> bool | None:
        kw = {"correct": body.correct, "rating": body.rating, "corrected_answer": body.corrected_answer}
        try:
            return answer_log.feedback(body.id, **kw)
        except KeyError:
            if recorder is None:
                raise
            recorder.flush()  # it may still be on its way to the database
            return answer_log.feedback(body.id, **kw)

    @router.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        """A label on an answer: stored; the answer it implies (``label``: true, false or null for unsure)."""
        if body.correct is None and body.rating is None and body.corrected_answer is None:
            return _error(422, "give one of 'correct', 'rating' or 'corrected_answer'", "invalid_body")
        try:
            label = await asyncio.to_thread(store, body)
        except KeyError:
            return _error(404, f"no answer with id {body.id!r} in the answer log", "not_found")
        except ValueError as err:
            return _error(422, str(err), "invalid_body")
        return {"id": body.id, "label": label, "stored": True}

    @router.get("/v1/monitor")
    async def monitor(window: float = Query(window_s, gt=0, description="seconds a time window spans")):
        """ECE, accuracy, coverage, reliability and the drift alarm over the labeled answers."""
        return await asyncio.to_thread(monitor_summary, answer_log, run_dir, baseline, window, 10,
                                       bootstrap=bootstrap)

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> Any:
        return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    return router


#: ``llmcal serve``'s answer log unless ``--db`` says otherwise.
DEFAULT_DB = "sqlite:///runs/serve.db"
#: ``--retention_days`` when ``--log_text off`` names none: hashes only, and not forever.
DEFAULT_HASHED_RETENTION_DAYS = 30.0


def answer_log_wiring(db: str | None, log_text: bool = True, retention_days: float | None = None,
                      run_dir: str | Path | None = None) -> tuple[dict[str, Any], Any]:
    """What ``llmcal serve --db`` adds to ``create_app``: ``({"on_answer", "extra_routers"}, close)``.

    ``db`` None or ``"off"``: no log, no routes (``({}, a no-op)``).  ``close()`` writes what is still
    queued and closes the database (call it after the server stops)."""
    if db is None or str(db).strip().lower() == "off":
        return {}, lambda: None
    missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
    if missing:
        if str(db) != DEFAULT_DB:
            raise ValueError(f"--db {db}: the answer log needs the store extra: pip install 'llmcal[store]' "
                             f"({', '.join(missing)} missing)")
        print(f"llmcal serve: answers are not logged (the store extra is missing: {', '.join(missing)}; "
              "--db off hides this)", file=sys.stderr)
        return {}, lambda: None
    if not log_text and retention_days is None:
        retention_days = DEFAULT_HASHED_RETENTION_DAYS
    answer_log = AnswerLog(db, log_text=log_text, retention_days=retention_days)
    recorder = QueuedRecorder(answer_log)

    def close() -> None:
        recorder.close()
        answer_log.close()

    return {"on_answer": recorder, "extra_routers": [feedback_router(answer_log, recorder, run_dir)]}, close
