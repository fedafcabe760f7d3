"""The barrier service: counts MultiNode acknowledgements and releases waiters.

It consumes ``lava.barrier`` (a quorum queue with single active consumer: a
second ``lavamq barrier`` is a hot standby) with a large prefetch and handles
every delivery that arrived together in ONE store transaction:

1. ``group-open`` records the membership (node → role);
2. ``multinode-send`` / ``multinode-sync`` insert an arrival, unique on
   (group, kind, message id, generation, node) — a redelivery counts once;
3. when an arrival completes a barrier (``coordinator/barrier_count.py``
   decides, from memory), a release row (unique per barrier) and an outbox
   row are written in the same transaction;
4. ``multinode-timeout`` fails the group with a message naming the missing
   nodes and their roles; ``group-failed`` marks it failed;
5. after the commit the outbox (``coordinator/barrier_outbox.py``) is
   published to the group exchange, and only then are the AMQP deliveries
   acknowledged; the next batch's transaction marks those rows published;
6. ``multinode-query`` (a node's receiver reconnected and may have lost a
   release) publishes the release again if it was decided, else nothing.

Releases are published transient (a node asks again after a reconnect);
sends and group failures persistent. A store that is away or a publish
failing after the commit makes the batch raise ``TransientError``: the
consumer hands the same deliveries again after a back-off. Counting happens
in memory, loaded per group from the store (the journal) at its first
delivery after a (re)connect, and dropped on any error or reconnect. The
whole design, its crash cases and its measured costs: docs/multinode.md.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from broker_config import topology
from broker_config.consumer import Delivery, QueueConsumer, TransientError
from broker_config.identity import check_sender, delivery_user
from coordinator.barrier_count import (
    SEND,
    SYNC,
    BarrierKey,
    GroupCounts,
    ReleaseKey,
    describe_missing,
    release_message_id,
)
from coordinator.barrier_models import (
    BarrierArrival,
    BarrierGroup,
    BarrierOutbox,
    BarrierRelease,
)
from coordinator.barrier_outbox import Outbox, OutboxItem, outbox_message_id
from coordinator.db import open_database, store_error_text, store_unavailable
from schemas.errors import InfrastructureError
from schemas.messages.multinode import (
    BARRIER_SCHEMAS,
    GroupFailedSchema,
    MultinodeReleaseSchema,
)

log = logging.getLogger(__name__)

READY_LINE = "lavamq barrier ready"
#: seconds before a barrier consumes the shards it does not prefer (it stands by for them)
STANDBY_DELAY = 2.0

ARRIVALS: Table = BarrierArrival.__table__  # type: ignore[assignment]
RELEASES: Table = BarrierRelease.__table__  # type: ignore[assignment]
GROUPS: Table = BarrierGroup.__table__  # type: ignore[assignment]


def _insert(session: Session, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the store's dialect (values given at execute)."""
    return _insert_for(session.get_bind().dialect.name, table)


@functools.cache
def _insert_for(dialect: str, table: Table) -> Any:
    # built once: a statement made anew per row costs SQLAlchemy more than the row
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    raise InfrastructureError(f"barrier store: unsupported database {dialect!r}")


class BarrierService:
    """Run with ``run()`` (blocks) or ``start()`` (a thread); stop with ``stop()``."""

    def __init__(
        self,
        broker_url: str,
        db_url: str,
        *,
        prefetch: int = 500,
        migrate_db: bool = True,
        prefer: Collection[int] | None = None,
        standby_delay: float = STANDBY_DELAY,
    ) -> None:
        self.broker_url = broker_url
        self.db_url = db_url
        self.engine, self.sessions = open_database(db_url, run_migrations=migrate_db)
        self._groups: dict[str, GroupCounts] = {}
        #: group → node → broker user of its host, from ``group-open`` (when given)
        self._owners: dict[str, dict[str, str]] = {}
        # the preferred shards at once, the others a little later: barriers
        # started together spread the shards, and each stands by for the rest
        shards = topology.barrier_queues()
        first = [q for k, q in enumerate(shards) if prefer is None or k in prefer] or shards
        self._standby = [q for q in shards if q.name not in {f.name for f in first}]
        self._standby_delay = standby_delay
        self.consumer = QueueConsumer(
            broker_url,
            first,
            BARRIER_SCHEMAS,
            batch_handler=self.handle_batch,
            authorize=self.authorize,
            prefetch=prefetch,
            poll_interval=0.2,
            on_consume=self._on_consume,
            idle_callback=self._idle,
        )
        self.outbox = Outbox(self.sessions, lambda: self.consumer.publisher)
        self._thread: threading.Thread | None = None
        self.batches = 0

    # --- running ---

    def _on_consume(self) -> None:
        """Each (re)connect: forget counts (the store is the truth), send the outbox."""
        self._groups.clear()
        # a broker restart (the only way queued releases are lost) cuts this
        # connection too: releases sent again before it may be needed again
        self.outbox.resent.clear()
        self.outbox.try_flush()

    def _idle(self) -> None:
        self.outbox.flush_if_due()

    def _stand_by(self) -> None:
        """Consume the shards not preferred too (standing by while another process has them)."""
        if self.consumer._stop.wait(self._standby_delay):
            return
        for queue in self._standby:
            try:
                self.consumer.add_queue(queue)
            except InfrastructureError as exc:
                log.warning("barrier: cannot stand by for %s: %s", queue.name, exc)

    def _ready(self, on_ready: Callable[[], None] | None) -> None:
        if self._standby:
            threading.Thread(target=self._stand_by, name="barrier-standby", daemon=True).start()
        if on_ready is not None:
            on_ready()

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Consume until stopped (blocks)."""
        try:
            self.consumer.run(on_ready=functools.partial(self._ready, on_ready))
        finally:
            self.outbox.mark_on_stop()
            self.engine.dispose()

    def start(self, timeout: float = 30.0) -> None:
        """Run in a daemon thread (embedded mode, tests) and wait until consuming."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:
                errors.append(exc)
                log.exception("barrier service died")
                self.consumer._ready.set()

        self._thread = threading.Thread(target=target, name="lavamq-barrier", daemon=True)
        self._thread.start()
        if not self.consumer.wait_ready(timeout) or errors:
            raise InfrastructureError(
                f"barrier service did not start: {errors[0] if errors else 'timeout'}"
            )

    def stop(self, join: float = 10.0) -> None:
        """Stop consuming and wait for the thread ``start()`` made."""
        self.consumer.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(join)

    # --- who may send what ---

    def authorize(self, delivery: Delivery) -> None:
        """Raise ``Unauthorized`` for a sender that may not send this (see identity.py).

        Runs in delivery order before the batch is handled, so the owners a
        ``group-open`` names apply to the acknowledgements after it. Owners are
        kept in memory: after a restart, nodes of groups opened before it are
        checked by role (a host user) only.
        """
        body = delivery.body
        node = body.get("node") if delivery.message_type != "group-failed" else None
        check_sender(
            delivery.message_type,
            delivery_user(delivery.properties),
            node=node,
            owners=self._owners.get(str(body.get("group"))),
            amqp=self.consumer.url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"),
        )
        if delivery.message_type == "group-open" and body.get("owners"):
            self._owners[body["group"]] = dict(body["owners"])

    # --- the batch ---

    def handle_batch(self, deliveries: list[Delivery]) -> None:
        """Apply every delivery in one transaction, then publish what it decided.

        A store that is away (``store_unavailable``) or a failed publish raises
        ``TransientError``: the consumer hands the same deliveries again after
        a back-off. What was committed stays committed and counts once; its
        unpublished decisions are published by ``Outbox.flush`` first.
        """
        if self.outbox.flush_pending and not self.outbox.try_flush():
            raise TransientError("barrier: earlier decisions are not published yet")
        outbox: list[OutboxItem] = []
        marked, self.outbox.unmarked = self.outbox.unmarked, []
        try:
            with self.sessions() as session, session.begin():
                self.outbox.mark_published(session, marked)
                journal: list[dict[str, Any]] = []
                touched: dict[tuple[str, BarrierKey], set[str]] = {}
                for delivery in deliveries:
                    kind, body = delivery.message_type, delivery.body
                    if kind == "multinode-send" or kind == "multinode-sync":
                        send = kind == "multinode-send"
                        row = {
                            "group_name": body["group"],
                            "kind": SEND if send else SYNC,
                            "message_id": body["message_id"],
                            "generation": 0 if send else body["generation"],
                            "node": body["node"],
                        }
                        journal.append(row)
                        key = BarrierKey(row["kind"], row["message_id"], row["generation"])
                        touched.setdefault((row["group_name"], key), set()).add(row["node"])
                        continue
                    self._flush_arrivals(session, journal, touched, outbox)
                    if kind == "group-open":
                        self._open(session, body)
                    elif kind == "group-close":
                        self._close(session, body["group"])
                    elif kind == "group-failed":
                        self._mark_failed(session, body["group"], body["reason"])
                    elif kind == "multinode-timeout":
                        self._timeout(session, body, outbox)
                    elif kind == "multinode-query":
                        self._query(session, body, outbox)
                self._flush_arrivals(session, journal, touched, outbox)
        except BaseException as exc:
            # the in-memory counts may hold what was rolled back: reload from the store
            self._groups.clear()
            self.outbox.unmarked[:0] = marked
            if store_unavailable(exc):
                raise TransientError(f"barrier store unavailable: {store_error_text(exc)}") from exc
            raise
        self.batches += 1
        if outbox:
            try:
                self.outbox.publish(outbox)
            except InfrastructureError as exc:
                # committed: the outbox rows wait in the store, the queries'
                # answers are given again when the deliveries are handled again
                self.outbox.flush_pending = True
                raise TransientError(f"barrier: publishing failed: {exc.message}") from exc

    def _group(self, session: Session, name: str) -> GroupCounts | None:
        """The group's counts, loaded from the store at its first use."""
        group = self._groups.get(name)
        if group is None:
            row = session.get(BarrierGroup, name)
            if row is None:
                return None
            group = GroupCounts(json.loads(row.members), row.timeout)
            arrivals = session.execute(
                select(
                    BarrierArrival.kind,
                    BarrierArrival.message_id,
                    BarrierArrival.generation,
                    BarrierArrival.node,
                ).where(BarrierArrival.group_name == name)
            )
            for kind, message_id, generation, node in arrivals:
                group.arrived.setdefault(BarrierKey(kind, message_id, generation), set()).add(node)
            releases = session.execute(
                select(
                    BarrierRelease.kind,
                    BarrierRelease.message_id,
                    BarrierRelease.generation,
                    BarrierRelease.role,
                ).where(BarrierRelease.group_name == name)
            )
            group.released.update(ReleaseKey(k, m, g, r) for k, m, g, r in releases)
            self._groups[name] = group
        return group

    def _open(self, session: Session, body: dict[str, Any]) -> None:
        session.execute(
            _insert(session, GROUPS),
            {
                "name": body["group"],
                "members": json.dumps(body["members"]),
                "timeout": body["timeout"],
            },
        )
        self._groups.pop(body["group"], None)
        log.info("group %s open with %d nodes", body["group"], len(body["members"]))

    def _close(self, session: Session, name: str) -> None:
        for model in (BarrierArrival, BarrierRelease, BarrierOutbox):
            session.execute(delete(model).where(model.group_name == name))
        session.execute(delete(BarrierGroup).where(BarrierGroup.name == name))
        self._groups.pop(name, None)
        self._owners.pop(name, None)
        log.info("group %s closed", name)

    def _mark_failed(self, session: Session, name: str, reason: str) -> bool:
        row = session.get(BarrierGroup, name)
        if row is None or row.failed_reason:
            return False
        row.failed_reason = reason
        log.warning("group %s failed: %s", name, reason)
        return True

    def _flush_arrivals(
        self,
        session: Session,
        journal: list[dict[str, Any]],
        touched: dict[tuple[str, BarrierKey], set[str]],
        outbox: list[OutboxItem],
    ) -> None:
        """Journal the arrivals (one statement), count them in memory, write the releases."""
        if not journal:
            return
        session.execute(_insert(session, ARRIVALS), journal)
        for (group_name, key), senders in touched.items():
            group = self._group(session, group_name)
            if group is None:
                log.warning("arrival for unknown group %s (%s %r)", group_name, *key[:2])
                continue
            for release in group.arrive(key, senders):
                self._release(session, group, group_name, release, outbox)
        journal.clear()
        touched.clear()

    def _release(
        self,
        session: Session,
        state: GroupCounts,
        group: str,
        key: ReleaseKey,
        outbox: list[OutboxItem],
    ) -> None:
        result: Any = session.execute(
            _insert(session, RELEASES),
            {
                "group_name": group,
                "kind": key.kind,
                "message_id": key.message_id,
                "generation": key.generation,
                "role": key.role,
            },
        )
        if result.rowcount != 1:
            return  # released before: exactly one release per barrier
        body = state.release_body(group, key)
        self.outbox.add(session, outbox, group, MultinodeReleaseSchema.message_type, body)
        log.debug("release %s %r", group, key)

    def _timeout(self, session: Session, body: dict[str, Any], outbox: list[OutboxItem]) -> None:
        name = body["group"]
        group = self._group(session, name)
        row = session.get(BarrierGroup, name)
        if group is None or row is None:
            log.warning("timeout for unknown group %s", name)
            return
        if row.failed_reason:
            return  # already failed: every client has been told
        verdict = group.judge_timeout(body)
        if verdict is None:
            return
        if verdict.resend is not None:
            # released: the node lost it (a broker restart); it has it again
            self._resend(group, name, verdict.resend, outbox)
            return
        assert verdict.reason is not None
        row.failed_reason = verdict.reason
        self.outbox.add(
            session,
            outbox,
            name,
            GroupFailedSchema.message_type,
            {"group": name, "reason": verdict.reason, "node": body["node"], "cause": "timeout"},
        )
        log.warning("group %s failed: %s", name, verdict.reason)

    def _query(self, session: Session, body: dict[str, Any], outbox: list[OutboxItem]) -> None:
        group = self._group(session, body["group"])
        if group is None:
            return
        key = ReleaseKey(body["kind"], body["message_id"], body["generation"], body["role"])
        # after a broker restart every waiting node asks: one answer (fanned
        # out to every node queue) serves them all
        if not self._resend(group, body["group"], key, outbox, once=True):
            log.debug("query %s %r from %s: not released yet", body["group"], key, body["node"])

    def _resend(
        self,
        state: GroupCounts,
        group: str,
        key: ReleaseKey,
        outbox: list[OutboxItem],
        *,
        once: bool = False,
    ) -> bool:
        """Publish a decided release again (no outbox row: asked again if lost again).

        ``once``: not if it was already sent again on this connection, or is
        about to be by this batch.
        """
        if key not in state.released:
            return False
        if once and self.outbox.is_resent(group, key, outbox):
            return True
        body = state.release_body(group, key)
        outbox.append((None, group, MultinodeReleaseSchema.message_type, body))
        log.info("release %s %r published again", group, key)
        return True


__all__ = [
    "READY_LINE",
    "BarrierService",
    "describe_missing",
    "outbox_message_id",
    "release_message_id",
]
