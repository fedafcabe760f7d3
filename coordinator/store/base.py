"""The store's plumbing: one transaction per method, and the event journal.

Every state change also writes an ``events`` row; :meth:`StoreBase.drain_events`
hands the committed ones to the service, which publishes them on
``lava.events``. The parts of :class:`coordinator.store.Store` (lab, intake,
lifecycle, queries) all build on this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.db import open_database
from coordinator.store.models import Device, DeviceType, Event

log = logging.getLogger(__name__)


class StoreBase:
    """Engine, sessions and the events committed but not yet published."""

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.url = url
        self.engine, self.sessions = open_database(url, run_migrations=run_migrations)
        self._events: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction; the events it wrote become publishable once it commits."""
        with self.sessions.begin() as session:
            self._pending = []
            yield session
        # committed: the events are real now
        self._events.extend(self._pending)
        self._pending = []

    def drain_events(self) -> list[dict[str, Any]]:
        """Events committed since the last call (for publishing on ``lava.events``)."""
        out, self._events = self._events, []
        return out

    def _event(
        self,
        session: Session,
        now: float,
        kind: str,
        state: str,
        text: str,
        *,
        job_id: int | None = None,
        subjob_id: int | None = None,
        device: str | None = None,
        host: str | None = None,
    ) -> None:
        event = {
            "kind": kind,
            "state": str(state),
            "time": now,
            "text": text,
            "job_id": job_id,
            "subjob_id": subjob_id,
            "device": device,
            "host": host,
        }
        session.add(Event(**event))
        self._pending.append(event)
        log.info("%s %s: %s", kind, state, text)

    @staticmethod
    def _device(session: Session, name: str) -> Device | None:
        return session.scalar(select(Device).where(Device.name == name))

    @staticmethod
    def _device_type(session: Session, name: str) -> DeviceType:
        row = session.scalar(select(DeviceType).where(DeviceType.name == name))
        if row is None:
            row = DeviceType(name=name)
            session.add(row)
            session.flush()
        return row
