"""The answer log's first schema: one row an answered request, one row a feedback label.

``answers``: what was answered with what confidence (text, or only its sha256 with
``--log_text off``), the calibration version and model fingerprint it was answered under,
and the latency.  ``feedback``: a label on one answer (``correct``, a ``rating``, or a
``corrected_answer``); an answer may get several, the latest counts.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "answers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("question", sa.Text, nullable=True),
        sa.Column("question_sha256", sa.String(64), nullable=False),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("answer_sha256", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("level", sa.String(32), nullable=True),
        sa.Column("abstained", sa.Boolean, nullable=False),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("signals", sa.JSON, nullable=True),
        sa.Column("calibration_version", sa.String(64), nullable=True, index=True),
        sa.Column("model_fingerprint", sa.JSON, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("run", sa.String(255), nullable=True),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("answer_id", sa.String(64), sa.ForeignKey("answers.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("correct", sa.Boolean, nullable=True),
        sa.Column("rating", sa.Integer, nullable=True),
        sa.Column("corrected_answer", sa.Text, nullable=True),
        sa.Column("corrected_sha256", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("answers")
