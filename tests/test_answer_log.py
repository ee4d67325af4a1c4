"""The answer log (records/answer_log.py): the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from pg_server import db_url, postgres_server  # noqa: E402

FIXTURES = (db_url, postgres_server)  # the same tests on SQLite and PostgreSQL

from llmcal.records.answer_log import AnswerLog, QueuedRecorder, database_url, redact  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def event(i: int, **kw):
    e = {"id": f"ans-{i}", "created": 1000.0 + i, "question": f"What is {i} + 1?", "answer": f"{i + 1}.",
         "confidence": 0.5 + (i % 5) / 10, "level": "likely", "abstained": False, "threshold": 0.6,
         "signals": {"option_prob": 0.7, "margin": 0.2}, "calibration_version": "abc123def456",
         "model_fingerprint": {"model": "tiny", "sha": "f00"}, "latency_ms": 12.5, "run": "builtin"}
    e.update(kw)
    return e


def test_record_round_trip_and_schema_version(db_url):
    with AnswerLog(db_url) as lg:
        lg.record(event(1))
        row = lg.get("ans-1")
        assert row["question"] == "What is 1 + 1?" and row["answer"] == "2."
        assert row["confidence"] == pytest.approx(0.6) and row["threshold"] == pytest.approx(0.6)
        assert row["signals"] == {"option_prob": 0.7, "margin": 0.2}
        assert row["model_fingerprint"] == {"model": "tiny", "sha": "f00"}
        assert row["calibration_version"] == "abc123def456" and row["run"] == "builtin"
        assert row["question_sha256"] == hashlib.sha256(b"What is 1 + 1?").hexdigest()
        import sqlalchemy as sa

        with lg.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
    with AnswerLog(db_url) as again:  # reopening an up-to-date database migrates nothing and keeps the rows
        assert again.counts() == {"answers": 1, "feedback": 0, "labeled": 0}


def test_log_text_off_stores_hashes_only(db_url):
    with AnswerLog(db_url, log_text=False) as lg:
        lg.record(event(2))
        lg.feedback("ans-2", corrected_answer="3")
        row = lg.get("ans-2")
        assert row["question"] is None and row["answer"] is None
        assert row["question_sha256"] == hashlib.sha256(b"What is 2 + 1?").hexdigest()
        # the answer's hash is of its normalized text, so a correction can be compared without the text
        assert lg.labeled()[0].correct is True
        import sqlalchemy as sa

        with lg.engine.connect() as conn:
            texts = conn.execute(sa.text("SELECT corrected_answer FROM feedback")).scalars().all()
        assert texts == [None]


def test_each_answer_is_logged_once(db_url):
    with AnswerLog(db_url) as lg:
        lg.record(event(3))
        with pytest.raises(ValueError, match="answer id is already logged"):
            lg.record(event(3))
        assert lg.counts()["answers"] == 1


def test_feedback_labels_and_latest_wins(db_url):
    with AnswerLog(db_url) as lg:
        lg.record_many([event(i) for i in range(4)])
        assert lg.feedback("ans-0", correct=True) is True
        assert lg.feedback("ans-1", rating=-1) is False
        assert lg.feedback("ans-2", rating=0) is None  # unsure: stored, not a label
        assert lg.feedback("ans-3", corrected_answer="five") is False
        assert lg.feedback("ans-3", corrected_answer=" 4 ") is True  # a later correction that agrees
        got = {a.id: a.correct for a in lg.labeled()}
        assert got == {"ans-0": True, "ans-1": False, "ans-3": True}
        assert lg.counts() == {"answers": 4, "feedback": 5, "labeled": 3}
        assert [a.id for a in lg.labeled(since=1001.0, until=1003.0)] == ["ans-1"]
        with pytest.raises(KeyError, match="no answer with id 'nope'"):
            lg.feedback("nope", correct=True)
        with pytest.raises(ValueError, match="'rating' must be -1"):
            lg.feedback("ans-0", rating=3)
        with pytest.raises(ValueError, match="give one of 'correct', 'rating' or 'corrected_answer'"):
            lg.feedback("ans-0")
        with pytest.raises(ValueError, match="'correct' must be true or false"):
            lg.feedback("ans-0", correct="yes")
        with pytest.raises(KeyError, match="'nope'"):  # one refused label: none of the batch is stored
            lg.feedback_many([{"id": "ans-0", "correct": False}, {"id": "nope", "correct": True}])
        assert lg.counts()["feedback"] == 5 and {a.id: a.correct for a in lg.labeled()}["ans-0"] is True


def test_bad_events_are_refused_with_the_field(db_url):
    with AnswerLog(db_url) as lg:
        with pytest.raises(ValueError, match="field 'confidence' must be in \\[0, 1\\]"):
            lg.record(event(5, confidence=1.5))
        with pytest.raises(ValueError, match="field 'id' must be a non-empty string"):
            lg.record(event(5, id=""))
        assert lg.counts()["answers"] == 0


def test_retention_prunes_old_answers_and_their_feedback(db_url):
    clock = [1000.0 + 40 * 86400]
    with AnswerLog(db_url, retention_days=30, now=lambda: clock[0]) as lg:
        lg.record_many([event(1, created=1000.0), event(2, created=clock[0] - 86400)])
        lg.feedback("ans-2", correct=False)
        assert lg.prune() == 1  # ans-1 is 40 days old
        assert lg.ids() == ["ans-2"]
        clock[0] += 30 * 86400
        assert lg.prune() == 1
        assert lg.counts() == {"answers": 0, "feedback": 0, "labeled": 0}


def test_queued_recorder_keeps_the_good_events_of_a_bad_batch(db_url):
    with AnswerLog(db_url) as lg:
        rec = QueuedRecorder(lg)
        for i in range(50):
            rec.submit(event(i, confidence=2.0) if i == 17 else event(i))
        rec.flush()
        assert rec.stats() == {"written": 49, "failed": 1, "pending": 0}
        rec.close()
        assert len(set(lg.ids())) == 49 and "ans-17" not in lg.ids()


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from llmcal.records.answer_log import AnswerLog, QueuedRecorder
    url, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lg = AnswerLog(url)
    rec = QueuedRecorder(lg, max_batch=8)
    for i in range(n):
        rec.submit({{"id": f"{{who}}-{{i}}", "confidence": 0.5, "abstained": False, "question": "q", "answer": "a"}})
    rec.close()
    print(rec.written, rec.failed)
""")


def test_two_processes_write_one_database_concurrently(db_url):
    """Two writers (as two serve workers) open one new database at once: the schema is made once, and
    every answer is there exactly once."""
    code = _WRITER.format(src=str(SRC))
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url, who, "200"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for who in ("w1", "w2")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert [o[0].split() for o in outs] == [["200", "0"], ["200", "0"]]
    with AnswerLog(db_url) as lg:
        ids = lg.ids()
        assert len(ids) == 400 and len(set(ids)) == 400
        assert {i.split("-")[0] for i in ids} == {"w1", "w2"}


def test_database_urls_and_redaction(tmp_path):
    assert database_url("runs/serve.db") == "sqlite:///runs/serve.db"
    assert database_url("postgresql://u@h:5432/d") == "postgresql+psycopg://u@h:5432/d"
    assert redact("postgresql://user:secret@db:5432/x") == "postgresql://user:***@db:5432/x"
    with pytest.raises(ValueError, match="--db mysql://u:\\*\\*\\*@h/d: unsupported database"):
        database_url("mysql://u:pw@h/d")
    with pytest.raises(ValueError, match="--retention_days must be a number of days > 0"):
        AnswerLog(f"sqlite:///{tmp_path / 'x.db'}", retention_days=0)
