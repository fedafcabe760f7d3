"""Result receipts: each ``test-result`` message is stored once, whatever redelivers it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_receipts",
        sa.Column("message_id", sa.String(100), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("subjob_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="pk_result_receipts"),
    )
    op.create_index("ix_result_receipts_job_id", "result_receipts", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_result_receipts_job_id", table_name="result_receipts")
    op.drop_table("result_receipts")
