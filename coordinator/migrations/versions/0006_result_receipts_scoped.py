"""Result receipts scoped by sub-job and sender: one host's result ids cannot pre-empt another's.

A receipt was keyed by the message's ``id`` alone, so a result sent first
with an id another sub-job (or another host) would use later made the later,
genuine one look like a redelivery. The key is now (sub-job, sender's broker
user, id); receipts written before keep their ids with an empty sender.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("result_receipts", recreate="always") as batch:
        batch.add_column(sa.Column("sender", sa.String(200), nullable=False, server_default=""))
        batch.drop_constraint("pk_result_receipts", type_="primary")
        batch.create_primary_key("pk_result_receipts", ["subjob_id", "sender", "message_id"])


def downgrade() -> None:
    with op.batch_alter_table("result_receipts", recreate="always") as batch:
        batch.drop_constraint("pk_result_receipts", type_="primary")
        batch.drop_column("sender")
        batch.create_primary_key("pk_result_receipts", ["message_id"])
