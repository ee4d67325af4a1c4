"""The answer log: what ``llmcal serve`` answered, with what confidence, and what users said back.

One schema (SQLAlchemy 2 Core, migrated by alembic: ``records/migrations``) on SQLite (the
embedded default, ``sqlite:///runs/serve.db``) or PostgreSQL (``postgresql://...``, through
psycopg 3), the same code for both.  Two tables:

* ``answers``: one row an answered request (:meth:`AnswerLog.record`): id, time, question,
  answer, confidence, level, abstained, threshold, signal values, calibration version, model
  fingerprint, latency, run.  With ``log_text=False`` (``--log_text off``) the question and
  answer are stored only as sha256 hex digests, never as text.
* ``feedback``: labels (:meth:`AnswerLog.feedback`): ``correct`` (true/false), a ``rating``
  (+1 thumbs up, -1 thumbs down, 0 unsure) or a ``corrected_answer`` (the answer was right
  only if the correction normalizes to the same text).  An answer may be labeled more than
  once; the latest label counts.

``retention_days``: answers older than that are deleted (with their feedback) when the log is
opened and then at most once a minute while it records.  The schema is brought to the newest
revision when the log is opened, under a lock (PostgreSQL's advisory lock; a file lock beside a
SQLite file) so that several serve workers opening one new database create it once.

Serve records through :class:`QueuedRecorder`: a background thread that writes batches, so a
request never waits for the database; ``flush()`` waits for what was handed in.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from llmcal.core.text import normalize

log = logging.getLogger("llmcal.answer_log")

MIGRATIONS = Path(__file__).with_name("migrations")
#: The fields an answered request carries (serve's ``AnswerEvent``; a mapping with these keys works too).
EVENT_FIELDS = ("id", "created", "question", "answer", "confidence", "level", "abstained", "threshold",
                "signals", "calibration_version", "model_fingerprint", "latency_ms", "run")
RATINGS = (-1, 0, 1)
_PRUNE_EVERY_S = 60.0
_PG_LOCK_KEY = 0x6C6C6D63616C  # "llmcal": the advisory lock the schema upgrade holds


def sha256_hex(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8", "surrogatepass")).hexdigest()


def database_url(url: str | Path) -> str:
    """``url`` as SQLAlchemy reads it: a bare path is a SQLite file; ``postgresql://`` uses psycopg 3."""
    text = str(url).strip()
    if not text:
        raise ValueError("--db: empty; give sqlite:///PATH or postgresql://USER@HOST:PORT/NAME")
    if "://" not in text:
        return f"sqlite:///{text}"
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    if scheme in ("sqlite", "postgresql+psycopg"):
        return text
    raise ValueError(f"--db {redact(text)}: unsupported database (use sqlite:///PATH or postgresql://...)")


def redact(url: str) -> str:
    """``url`` without its password (for messages and the monitor's output)."""
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


@dataclass(frozen=True)
class LabeledAnswer:
    """One answer with its latest label: what the monitor and the refit work on."""

    id: str
    created: float
    confidence: float
    correct: bool
    abstained: bool
    threshold: float | None
    calibration_version: str | None
    signals: dict[str, Any]
    run: str | None


def _tables():
    import sqlalchemy as sa

    md = sa.MetaData()
    answers = sa.Table(
        "answers", md,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("question", sa.Text), sa.Column("question_sha256", sa.String(64), nullable=False),
        sa.Column("answer", sa.Text), sa.Column("answer_sha256", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float), sa.Column("level", sa.String(32)),
        sa.Column("abstained", sa.Boolean, nullable=False), sa.Column("threshold", sa.Float),
        sa.Column("signals", sa.JSON), sa.Column("calibration_version", sa.String(64)),
        sa.Column("model_fingerprint", sa.JSON), sa.Column("latency_ms", sa.Float),
        sa.Column("run", sa.String(255)),
    )
    feedback = sa.Table(
        "feedback", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("answer_id", sa.String(64), sa.ForeignKey("answers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("correct", sa.Boolean), sa.Column("rating", sa.Integer),
        sa.Column("corrected_answer", sa.Text), sa.Column("corrected_sha256", sa.String(64)),
    )
    return answers, feedback


def _finite_or_none(value: Any, field: str, unit: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"answer log: field {field!r} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (unit and not 0.0 <= v <= 1.0):
        raise ValueError(f"answer log: field {field!r} must be {'in [0, 1]' if unit else 'finite'}, got {value!r}")
    return v


def _json_safe(obj: Any) -> Any:
    """Signals and fingerprints as JSON both databases take: NaN/inf -> None, numpy scalars -> float."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    try:
        v = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    return v if math.isfinite(v) else None


def _check_label(correct: Any, rating: Any, corrected_answer: Any) -> None:
    if correct is not None and not isinstance(correct, bool):
        raise ValueError(f"feedback: 'correct' must be true or false, got {correct!r}")
    if rating is not None and (isinstance(rating, bool) or rating not in RATINGS):
        raise ValueError(f"feedback: 'rating' must be -1 (wrong), 0 (unsure) or 1 (right), got {rating!r}")
    if corrected_answer is not None and (not isinstance(corrected_answer, str) or not corrected_answer.strip()):
        raise ValueError("feedback: 'corrected_answer' must be a non-empty string")
    if correct is None and rating is None and corrected_answer is None:
        raise ValueError("feedback: give one of 'correct', 'rating' or 'corrected_answer'")


def event_fields(event: Any) -> dict[str, Any]:
    """An ``AnswerEvent`` (or a mapping with its keys) as a plain dict of :data:`EVENT_FIELDS`."""
    if isinstance(event, Mapping):
        return {f: event.get(f) for f in EVENT_FIELDS}
    return {f: getattr(event, f, None) for f in EVENT_FIELDS}


class AnswerLog:
    """The answer log on one database URL (see the module docstring)."""

    def __init__(self, url: str | Path = "sqlite:///runs/serve.db", log_text: bool = True,
                 retention_days: float | None = None, now=time.time) -> None:
        try:
            import sqlalchemy as sa
        except ImportError as err:  # pragma: no cover - the store extra
            raise ValueError(f"the answer log needs the store extra: pip install 'llmcal[store]' ({err})") from None
        if retention_days is not None and not (retention_days > 0 and math.isfinite(retention_days)):
            raise ValueError(f"--retention_days must be a number of days > 0, got {retention_days}")
        self.url = database_url(url)
        self.shown_url = redact(str(url))
        self.log_text = bool(log_text)
        self.retention_days = retention_days
        self._now = now
        self._last_prune = -math.inf
        self._sa = sa
        kwargs: dict[str, Any] = {"future": True}
        if self.url.startswith("sqlite"):
            self._sqlite_path = self._sqlite_file()
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            self._sqlite_path = None
            kwargs["pool_pre_ping"] = True
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except (ImportError, sa.exc.ArgumentError) as err:
            raise ValueError(f"--db {self.shown_url}: {err}") from None
        if self._sqlite_path is not None:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.answers, self.feedback_table = _tables()
        try:
            self._migrate()
        except sa.exc.OperationalError as err:
            self.engine.dispose()
            raise OSError(f"--db {self.shown_url}: cannot open the database ({err.orig})") from None
        self.prune()

    # ------------------------------------------------------------ opening
    def _sqlite_file(self) -> Path | None:
        path = self.url.split("sqlite:///", 1)[1] if self.url.startswith("sqlite:///") else ""
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        p = Path(path.split("?", 1)[0])
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @contextmanager
    def _schema_lock(self, conn) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            conn.execute(self._sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(self._sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
        elif self._sqlite_path is not None:
            with open(self._sqlite_path.with_name(self._sqlite_path.name + ".lock"), "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        else:
            yield

    def _migrate(self) -> None:
        """``alembic upgrade head`` on this database, unless it is there already."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with self.engine.connect() as conn:
            with self._schema_lock(conn):
                current = MigrationContext.configure(conn).get_current_revision()
                if current == head:
                    return
                conn.commit()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "AnswerLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writing
    def _row(self, event: Any) -> dict[str, Any]:
        e = event_fields(event)
        answer_id = e["id"]
        if not isinstance(answer_id, str) or not answer_id.strip() or len(answer_id) > 64:
            raise ValueError(f"answer log: field 'id' must be a non-empty string of at most 64 characters, "
                             f"got {answer_id!r}")
        question, answer = e["question"] or "", e["answer"] or ""
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError("answer log: fields 'question' and 'answer' must be strings")
        created = _finite_or_none(e["created"], "created")
        return {
            "id": answer_id, "created": self._now() if created is None else created,
            "question": question if self.log_text else None, "question_sha256": sha256_hex(question),
            "answer": answer if self.log_text else None, "answer_sha256": sha256_hex(normalize(answer)),
            "confidence": _finite_or_none(e["confidence"], "confidence", unit=True),
            "level": None if e["level"] is None else str(e["level"])[:32],
            "abstained": bool(e["abstained"]), "threshold": _finite_or_none(e["threshold"], "threshold", unit=True),
            "signals": _json_safe(dict(e["signals"] or {})),
            "calibration_version": None if e["calibration_version"] is None else str(e["calibration_version"]),
            "model_fingerprint": _json_safe(e["model_fingerprint"]),
            "latency_ms": _finite_or_none(e["latency_ms"], "latency_ms"),
            "run": None if e["run"] is None else str(e["run"])[:255],
        }

    def record(self, event: Any) -> None:
        """Log one answered request (an ``AnswerEvent`` or a mapping of :data:`EVENT_FIELDS`)."""
        self.record_many([event])

    def record_many(self, events: Iterable[Any]) -> int:
        """Log several answers in one transaction; a repeated id is refused (each answer is logged once)."""
        rows = [self._row(e) for e in events]
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(self.answers.insert(), rows)
        except self._sa.exc.IntegrityError:
            ids = [r["id"] for r in rows]
            raise ValueError(f"answer log: an answer id is already logged (one of {ids[:3]}"
                             f"{'...' if len(ids) > 3 else ''})") from None
        if self.retention_days is not None and self._now() - self._last_prune > _PRUNE_EVERY_S:
            self.prune()
        return len(rows)

    def feedback(self, answer_id: str, correct: bool | None = None, rating: int | None = None,
                 corrected_answer: str | None = None, created: float | None = None) -> bool | None:
        """Store a label on answer ``answer_id``; the label it implies (None: a rating of 0).

        ``KeyError`` when no such answer is logged (or it was pruned); ``ValueError`` for a label
        that is not one (nothing given, a rating outside -1/0/+1, a non-boolean ``correct``).
        """
        return self.feedback_many([{"id": answer_id, "correct": correct, "rating": rating,
                                    "corrected_answer": corrected_answer, "created": created}])[0]

    def feedback_many(self, labels: Iterable[Mapping[str, Any]]) -> list[bool | None]:
        """:meth:`feedback` for several ``{id, correct | rating | corrected_answer}`` in one transaction
        (all stored, or none when one is refused)."""
        sa = self._sa
        out, rows = [], []
        with self.engine.begin() as conn:
            for lab in labels:
                answer_id = lab.get("id")
                correct, rating, corrected = lab.get("correct"), lab.get("rating"), lab.get("corrected_answer")
                _check_label(correct, rating, corrected)
                row = conn.execute(sa.select(self.answers.c.answer_sha256)
                                   .where(self.answers.c.id == answer_id)).first()
                if row is None:
                    raise KeyError(f"no answer with id {answer_id!r} in the log")
                label = correct
                corrected_sha = sha256_hex(normalize(corrected)) if corrected is not None else None
                if label is None and rating is not None and rating != 0:
                    label = rating > 0
                if label is None and corrected_sha is not None:
                    label = corrected_sha == row[0]
                created = lab.get("created")
                rows.append({"answer_id": answer_id, "created": self._now() if created is None else float(created),
                             "correct": label, "rating": rating,
                             "corrected_answer": corrected if self.log_text else None,
                             "corrected_sha256": corrected_sha})
                out.append(label)
            if rows:
                conn.execute(self.feedback_table.insert(), rows)
        return out

    def prune(self, now: float | None = None) -> int:
        """Delete answers (and their feedback) older than ``retention_days``; how many answers went."""
        if self.retention_days is None:
            return 0
        now = self._now() if now is None else now
        self._last_prune = now
        cutoff = now - self.retention_days * 86400.0
        sa, a, f = self._sa, self.answers, self.feedback_table
        with self.engine.begin() as conn:
            old = sa.select(a.c.id).where(a.c.created < cutoff)
            conn.execute(f.delete().where(f.c.answer_id.in_(old)))
            return conn.execute(a.delete().where(a.c.created < cutoff)).rowcount or 0

    # ------------------------------------------------------------ reading
    def counts(self) -> dict[str, int]:
        """``answers``, ``feedback`` (rows) and ``labeled`` (answers with a true/false label)."""
        sa, a, f = self._sa, self.answers, self.feedback_table
        with self.engine.connect() as conn:
            n_a = conn.execute(sa.select(sa.func.count()).select_from(a)).scalar_one()
            n_f = conn.execute(sa.select(sa.func.count()).select_from(f)).scalar_one()
            n_l = conn.execute(sa.select(sa.func.count(sa.distinct(f.c.answer_id)))
                               .where(f.c.correct.is_not(None))).scalar_one()
        return {"answers": int(n_a), "feedback": int(n_f), "labeled": int(n_l)}

    def get(self, answer_id: str) -> dict[str, Any] | None:
        """One logged answer as stored (None when absent)."""
        with self.engine.connect() as conn:
            row = conn.execute(self._sa.select(self.answers).where(self.answers.c.id == answer_id)).mappings().first()
        return dict(row) if row is not None else None

    def ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(self._sa.select(self.answers.c.id))]

    def answered(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every logged answer's time, confidence, abstention and version (for coverage), oldest first."""
        a = self.answers
        q = self._sa.select(a.c.id, a.c.created, a.c.confidence, a.c.abstained, a.c.threshold,
                            a.c.calibration_version, a.c.run).order_by(a.c.created, a.c.id)
        if since is not None:
            q = q.where(a.c.created >= since)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def labeled(self, run: str | None = None, version: str | None = None, since: float | None = None,
                until: float | None = None) -> list[LabeledAnswer]:
        """The answers with a true/false label (the latest one each), oldest first; answers logged
        without a confidence are left out."""
        sa, a, f = self._sa, self.answers, self.feedback_table
        latest = (sa.select(sa.func.max(f.c.id).label("fid")).where(f.c.correct.is_not(None))
                  .group_by(f.c.answer_id).subquery())
        q = (sa.select(a.c.id, a.c.created, a.c.confidence, f.c.correct, a.c.abstained, a.c.threshold,
                       a.c.calibration_version, a.c.signals, a.c.run)
             .join(f, f.c.answer_id == a.c.id).join(latest, latest.c.fid == f.c.id)
             .where(a.c.confidence.is_not(None)).order_by(a.c.created, a.c.id))
        for col, value, op in ((a.c.run, run, "eq"), (a.c.calibration_version, version, "eq"),
                               (a.c.created, since, "ge"), (a.c.created, until, "lt")):
            if value is not None:
                q = q.where(col == value if op == "eq" else col >= value if op == "ge" else col < value)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [LabeledAnswer(id=r[0], created=float(r[1]), confidence=float(r[2]), correct=bool(r[3]),
                              abstained=bool(r[4]), threshold=r[5], calibration_version=r[6],
                              signals=dict(r[7] or {}), run=r[8]) for r in rows]


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL (readers never block the writer; fsync at checkpoints, not every commit), a busy wait
    instead of 'database is locked', cascades."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # in WAL: a crash of serve loses nothing; a power cut the last commits
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class QueuedRecorder:
    """Hands answers to a background thread that logs them in batches (serve's ``on_answer``).

    A request never waits for the database.  The thread waits ``linger_s`` (1 s) after the first
    answer of a batch so that the ones arriving meanwhile share its commit: SQLAlchemy's cost is
    per statement, and the writer holds the GIL while it runs, so many small batches showed in the
    requests' p99 (benchmarks/serve_load.py, docs/serve.md: 50 ms gave p99 +12.6%, 1 s +5.1%).
    ``flush()`` and ``close()`` cut the wait short.  ``flush()`` returns once
    everything submitted so far is written (or failed); ``close()`` flushes and stops the thread.  A batch that fails is retried
    row by row, so one bad event cannot lose the others; what still fails is counted and logged.
    """

    def __init__(self, answer_log: AnswerLog, max_batch: int = 256, linger_s: float = 1.0) -> None:
        self.log = answer_log
        self.max_batch = int(max_batch)
        self.linger_s = float(linger_s)
        self.written = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue()
        self._hurry = threading.Event()  # flush()/close(): write now, without the linger
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llmcal-answer-log", daemon=True)
        self._thread.start()

    def __call__(self, event: Any) -> None:
        self.submit(event)

    def submit(self, event: Any) -> None:
        if self._closed:
            raise RuntimeError("the answer log recorder is closed")
        self._queue.put(event)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            if self.linger_s > 0:  # let a batch gather: one commit (and one GIL hand-off) for many rows
                self._hurry.wait(self.linger_s)
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    self._queue.task_done()
                    break
                batch.append(item)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()

    def _write(self, batch: list[Any]) -> None:
        try:
            self.written += self.log.record_many(batch)
            return
        except Exception:  # noqa: BLE001 - retried one by one below
            pass
        for event in batch:
            try:
                self.log.record(event)
                self.written += 1
            except Exception as err:  # noqa: BLE001 - a log failure must never stop serving
                self.failed += 1
                log.error("llmcal serve: an answer could not be logged: %s", err)

    def flush(self) -> None:
        self._hurry.set()
        try:
            self._queue.join()
        finally:
            self._hurry.clear()

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "failed": self.failed, "pending": self._queue.qsize()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._hurry.set()
            self._thread.join()
