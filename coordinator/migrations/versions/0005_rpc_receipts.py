"""RPC receipts: a submit redelivered after a coordinator crash creates no second job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rpc_receipts",
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("method", sa.String(50), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_rpc_receipts"),
    )


def downgrade() -> None:
    op.drop_table("rpc_receipts")
