"""The lab store: device types, hosts, devices, jobs, groups, sub-jobs, results, events.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("store",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_types",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_types"),
        sa.UniqueConstraint("name", name="uq_device_types_name"),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("last_heartbeat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hosts"),
        sa.UniqueConstraint("name", name="uq_hosts_name"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("device_type_id", sa.Integer(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("health", sa.String(20), nullable=False),
        sa.Column("current_job_id", sa.Integer(), nullable=True),
        sa.Column("current_subjob_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_type_id"], ["device_types.id"], name="fk_devices_device_type_id_device_types"
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name="fk_devices_host_id_hosts"),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_name", sa.String(500), nullable=False),
        sa.Column("submitter", sa.String(200), nullable=False),
        sa.Column("source", sa.String(1000), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("submit_time", sa.Float(), nullable=False),
        sa.Column("start_time", sa.Float(), nullable=True),
        sa.Column("end_time", sa.Float(), nullable=True),
        sa.Column("waiting_reason", sa.Text(), nullable=True),
        sa.Column("failure_type", sa.String(50), nullable=True),
        sa.Column("failure_cause", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("join_deadline", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_groups_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("job_id", name="uq_groups_job_id"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "subjobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(200), nullable=False),
        sa.Column("role_index", sa.Integer(), nullable=False),
        sa.Column("device_type", sa.String(100), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("requested_device", sa.String(100), nullable=True),
        sa.Column("device", sa.String(100), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("is_slave", sa.Boolean(), nullable=False),
        sa.Column("essential", sa.Boolean(), nullable=False),
        sa.Column("error_type", sa.String(50), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("assigned_at", sa.Float(), nullable=True),
        sa.Column("accepted_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_subjobs_job_id_jobs"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_subjobs_group_id_groups"),
        sa.PrimaryKeyConstraint("id", name="pk_subjobs"),
    )
    op.create_index("ix_subjobs_job_id", "subjobs", ["job_id"])
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subjob_id", sa.Integer(), nullable=False),
        sa.Column("test_run", sa.String(200), nullable=False),
        sa.Column("test_case", sa.String(500), nullable=False),
        sa.Column("result", sa.String(20), nullable=False),
        sa.Column("measurement", sa.Float(), nullable=True),
        sa.Column("units", sa.String(100), nullable=True),
        sa.Column("time", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["subjob_id"], ["subjobs.id"], name="fk_results_subjob_id_subjobs"),
        sa.PrimaryKeyConstraint("id", name="pk_results"),
    )
    op.create_index("ix_results_subjob_id", "results", ["subjob_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("subjob_id", sa.Integer(), nullable=True),
        sa.Column("device", sa.String(100), nullable=True),
        sa.Column("host", sa.String(100), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_job_id", "events", ["job_id"])


def downgrade() -> None:
    for index, table in (
        ("ix_events_job_id", "events"),
        ("ix_events_time", "events"),
        ("ix_results_subjob_id", "results"),
        ("ix_subjobs_job_id", "subjobs"),
        ("ix_jobs_state", "jobs"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("events", "results", "subjobs", "groups", "jobs", "devices", "hosts"):
        op.drop_table(table)
    op.drop_table("device_types")
