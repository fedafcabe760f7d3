"""Barrier service tables.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "barrier_groups",
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("members", sa.Text(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("failed_reason", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_barrier_groups")),
    )
    op.create_table(
        "barrier_arrivals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_name", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(120), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_barrier_arrivals")),
        sa.UniqueConstraint(
            "group_name",
            "kind",
            "message_id",
            "generation",
            "node",
            name=op.f("uq_barrier_arrivals_group_name"),
        ),
    )
    op.create_index(
        "ix_barrier_arrivals_barrier",
        "barrier_arrivals",
        ["group_name", "kind", "message_id", "generation"],
    )
    op.create_table(
        "barrier_releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_name", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(120), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_barrier_releases")),
        sa.UniqueConstraint(
            "group_name",
            "kind",
            "message_id",
            "generation",
            "role",
            name=op.f("uq_barrier_releases_group_name"),
        ),
    )
    op.create_table(
        "barrier_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_name", sa.String(120), nullable=False),
        sa.Column("message_type", sa.String(40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_barrier_outbox")),
    )


def downgrade() -> None:
    op.drop_table("barrier_outbox")
    op.drop_table("barrier_releases")
    op.drop_index("ix_barrier_arrivals_barrier", table_name="barrier_arrivals")
    op.drop_table("barrier_arrivals")
    op.drop_table("barrier_groups")
