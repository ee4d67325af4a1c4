"""Alembic's environment for the answer log (:mod:`llmcal.records.answer_log`).

Run programmatically only: ``AnswerLog`` opens the database, takes a lock (PostgreSQL's
advisory lock, or a file lock beside a SQLite file) and calls ``alembic upgrade head`` with
its own connection in ``config.attributes["connection"]``; there is no alembic.ini.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
