"""Results keep what a test said about a case (``extra``) and the files it attached.

``extra`` holds the result's details as the dispatcher sent them (a test set,
a reference URL, why a test run stopped), ``attachments`` the files of
``lava-test-case-attach``/``lava-test-run-attach``, both JSON; before, both
were dropped at the store.

Revision ID: 0008_result_details
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_result_details"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("extra", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("attachments", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("attachments")
        batch.drop_column("extra")
