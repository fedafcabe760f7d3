"""Submissions carry an idempotency key: a resubmit with the same key is the same job.

``submit_key`` is the key the client sent with the job (``lavamq submit``
makes one per submit, ``--key K`` names it); unique per submitter, so a client
whose submit timed out can send it again, or ask ``lavamq jobs --key K``,
without making a second job. Jobs stored before have none.

Revision ID: 0009_submit_keys
Revises: 0008_result_details
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_submit_keys"
down_revision = "0008_result_details"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("submit_key", sa.String(100), nullable=True))
        batch.create_unique_constraint("uq_jobs_submitter_key", ["submitter", "submit_key"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_submitter_key", type_="unique")
        batch.drop_column("submit_key")
