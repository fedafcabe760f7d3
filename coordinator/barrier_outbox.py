"""The barrier's outbox: decisions committed in a batch's transaction,
published to the group's exchange after the commit.

A batch adds its releases and group failures as ``barrier_outbox`` rows in
its own transaction and publishes them from memory once it has committed;
the rows are marked published by the next batch's transaction (or at a
clean stop), not by one of their own. Whatever is left unmarked (a crash, a
failed publish) is published again by :meth:`Outbox.flush` at the next
(re)connect, before the next batch, or when idle with a back-off. Every
message keeps one id however often it is published, so nodes drop copies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from broker_config import topology
from broker_config.broker import Broker, Outgoing
from broker_config.errors import NotFound, Unroutable
from coordinator.barrier_count import ReleaseKey, release_key, release_message_id
from coordinator.barrier_models import BarrierOutbox
from coordinator.db import store_error_text, store_unavailable
from schemas.errors import InfrastructureError
from schemas.messages.multinode import GroupFailedSchema, MultinodeReleaseSchema

log = logging.getLogger(__name__)

OUTBOX_SCHEMAS = {
    MultinodeReleaseSchema.message_type: MultinodeReleaseSchema(),
    GroupFailedSchema.message_type: GroupFailedSchema(),
}
OUTBOX: Table = BarrierOutbox.__table__  # type: ignore[assignment]
OUTBOX_INSERT = insert(OUTBOX)
#: built once (its IN list expands at execution): a statement built per batch
#: cost SQLAlchemy more than the update itself
OUTBOX_MARK = (
    update(OUTBOX).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True))).values(published=True)
)

#: (outbox id, group, message type, body) decided by a batch, published after its
#: commit; id None: a release published again (a query), not an outbox row
OutboxItem = tuple[int | None, str, str, dict[str, Any]]


def outbox_message_id(
    group: str, row_id: int | None, message_type: str, body: dict[str, Any]
) -> str:
    """Stable ids: a message published again after a crash is dropped as the same."""
    if message_type == MultinodeReleaseSchema.message_type:
        return release_message_id(group, body)
    return f"barrier-outbox-{group}-{row_id}"


def outgoing_message(
    row_id: int | None, group: str, message_type: str, body: dict[str, Any]
) -> Outgoing:
    """A decision as the message to its group's exchange."""
    return Outgoing(
        topology.group_exchange_name(group),
        "",
        OUTBOX_SCHEMAS[message_type],
        body,
        message_id=outbox_message_id(group, row_id, message_type, body),
        # a release lost with a broker restart is asked for again
        persistent=message_type != MultinodeReleaseSchema.message_type,
    )


def transient(exc: BaseException) -> bool:
    """The store or the broker is away for now: try again later."""
    return isinstance(exc, InfrastructureError) or store_unavailable(exc)


class Outbox:
    """What the barrier decided and has yet to publish, or to mark published."""

    def __init__(
        self, sessions: sessionmaker[Session], publisher: Callable[[], Broker | None]
    ) -> None:
        self.sessions = sessions
        self._publisher_of = publisher
        #: (group, release) published again on this connection: every node
        #: queue got that copy, so more questions about it need no answer
        self.resent: set[tuple[str, ReleaseKey]] = set()
        #: outbox rows published, to be marked so by the next transaction
        self.unmarked: list[int] = []
        #: a publish (or the flush) failed: committed decisions may be
        #: unpublished; flushed before the next batch and, with a back-off, when idle
        self.flush_pending = False
        self._flush_delay = 0.0
        self._flush_at = 0.0

    # --- inside a batch's transaction ---

    @staticmethod
    def add(
        session: Session, items: list[OutboxItem], group: str, message_type: str, body: Any
    ) -> None:
        """Write a decided message in the caller's transaction and keep it for publishing."""
        result: Any = session.execute(
            OUTBOX_INSERT,
            {
                "group_name": group,
                "message_type": message_type,
                "body": json.dumps(body),
                "published": False,
            },
        )
        items.append((int(result.inserted_primary_key[0]), group, message_type, body))

    @staticmethod
    def mark_published(session: Session, rows: list[int]) -> None:
        """Mark ``rows`` (taken from ``unmarked``) published, in the caller's transaction."""
        if rows:
            session.execute(OUTBOX_MARK, {"ids": rows})

    def is_resent(self, group: str, key: ReleaseKey, items: list[OutboxItem]) -> bool:
        """The release was published again on this connection, or is about to be."""
        return (group, key) in self.resent or any(
            row_id is None and g == group and release_key(body) == key
            for row_id, g, _, body in items
        )

    # --- after the commit ---

    def publisher(self) -> Broker:
        """The consumer's connection to publish on (InfrastructureError if none)."""
        publisher = self._publisher_of()
        if publisher is None:
            raise InfrastructureError("barrier service: no broker connection to publish on")
        return publisher

    def publish(self, items: list[OutboxItem]) -> None:
        """Publish a batch's decisions (known from the batch: no outbox query).

        All of them at once, confirmed together (``Broker.publish_many``: with
        many groups, one confirm round trip per release was most of the
        barrier's time); if the broker refuses one (a group's exchange is
        gone), one by one, dropping what an ended group cannot take. Each
        published row is marked in the next batch's transaction, not one of
        its own: a crash before that publishes it again, which nodes ignore.
        """
        publisher = self.publisher()
        outgoing = [
            outgoing_message(row_id, group, kind, body) for row_id, group, kind, body in items
        ]
        try:
            for message_id in publisher.publish_many(outgoing):
                log.warning("dropping message %s for an ended group: unroutable", message_id)
        except NotFound:
            for row_id, group, message_type, body in items:
                self.publish_one(publisher, row_id, group, message_type, body)
        for row_id, group, _, body in items:
            if row_id is None:
                self.resent.add((group, release_key(body)))
            else:
                self.unmarked.append(row_id)

    @staticmethod
    def publish_one(
        publisher: Broker, row_id: int | None, group: str, message_type: str, body: dict[str, Any]
    ) -> None:
        """Publish one decision to its group's exchange; dropped if the group ended."""
        m = outgoing_message(row_id, group, message_type, body)
        try:
            publisher.publish(
                m.exchange,
                m.routing_key,
                m.schema,
                body,
                message_id=m.message_id,
                persistent=m.persistent,
            )
        except (Unroutable, NotFound) as exc:
            # the group ended (exchange or queues gone): nobody to tell
            log.warning("dropping %s for ended group: %s", message_type, exc)

    # --- what a crash or a failed publish left ---

    def flush(self) -> None:
        """Publish every decided message not yet marked published, oldest first."""
        with self.sessions() as session:
            marked, self.unmarked = self.unmarked, []
            try:
                with session.begin():
                    self.mark_published(session, marked)  # published before
            except BaseException:
                self.unmarked[:0] = marked
                raise
            rows = session.scalars(
                select(BarrierOutbox)
                .where(BarrierOutbox.published.is_(False))
                .order_by(BarrierOutbox.id)
            ).all()
            if not rows:
                return
            publisher = self.publisher()
            done: list[int] = []
            try:
                for row in rows:
                    self.publish_one(
                        publisher, row.id, row.group_name, row.message_type, json.loads(row.body)
                    )
                    done.append(row.id)
            finally:
                if done:
                    session.execute(
                        update(BarrierOutbox)
                        .where(BarrierOutbox.id.in_(done))
                        .values(published=True)
                    )
                    session.commit()

    def try_flush(self) -> bool:
        """Publish the unpublished outbox; on a store or broker error try again later."""
        try:
            self.flush()
        except Exception as exc:
            if not transient(exc):
                raise
            self.flush_pending = True
            self._flush_delay = min(max(2 * self._flush_delay, 0.1), 2.0)
            self._flush_at = time.monotonic() + self._flush_delay
            log.warning(
                "barrier: outbox not published (%s); trying again in %.1f s",
                store_error_text(exc),
                self._flush_delay,
            )
            return False
        self.flush_pending, self._flush_delay = False, 0.0
        return True

    def flush_if_due(self) -> None:
        """When idle: retry a failed flush once its back-off has passed."""
        if self.flush_pending and time.monotonic() >= self._flush_at:
            self.try_flush()

    def mark_on_stop(self) -> None:
        """A clean stop marks what it published (else only start-up publishes it again)."""
        try:
            with self.sessions() as session, session.begin():
                self.mark_published(session, self.unmarked)
        except Exception as exc:  # they are only published again at start-up
            log.warning("barrier: could not mark published outbox rows: %s", exc)
