"""Tables of the barrier service: membership, arrivals, releases and an outbox.

Counting is idempotent: an arrival is unique on (group, kind, message id,
generation, node), so a redelivered acknowledgement counts once. A release
is unique on (group, kind, message id, generation, role) and is written in
the same transaction as the arrival that completed it, together with the
outbox row that is published after the commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base


class BarrierGroup(Base):
    """A group the barrier counts for: its members, MultiNode timeout, failure."""

    __tablename__ = "barrier_groups"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    #: JSON object node → role
    members: Mapped[str] = mapped_column(Text)
    timeout: Mapped[float] = mapped_column(Float)
    failed_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class _BarrierKey:
    """The columns that name one barrier, shared by its arrivals and its releases.

    ``kind``: an arrival's is "send" (lava-send, generation 0) or "sync"; a
    release's "sync" or "wait-all".
    """

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(String(255))
    generation: Mapped[int] = mapped_column(Integer)


class BarrierArrival(_BarrierKey, Base):
    """One node's acknowledgement at one barrier (a send or a sync), counted once."""

    __tablename__ = "barrier_arrivals"
    __table_args__ = (
        UniqueConstraint("group_name", "kind", "message_id", "generation", "node"),
        Index("ix_barrier_arrivals_barrier", "group_name", "kind", "message_id", "generation"),
    )

    node: Mapped[str] = mapped_column(String(120))


class BarrierRelease(_BarrierKey, Base):
    """A decided release: at most one per barrier and role."""

    __tablename__ = "barrier_releases"
    __table_args__ = (UniqueConstraint("group_name", "kind", "message_id", "generation", "role"),)

    #: "" for every node of the group
    role: Mapped[str] = mapped_column(String(120))


class BarrierOutbox(Base):
    """Messages decided in a transaction, published after its commit."""

    __tablename__ = "barrier_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_name: Mapped[str] = mapped_column(String(120))
    message_type: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
