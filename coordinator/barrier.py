"""The barrier service: counts MultiNode acknowledgements and releases waiters.

It consumes ``lava.barrier`` (a quorum queue with single active consumer: a
second ``lavamq barrier`` is a hot standby) with a large prefetch and handles
every delivery that arrived together in ONE store transaction:

1. ``group-open`` records the membership (node → role);
2. ``multinode-send`` / ``multinode-sync`` insert an arrival, unique on
   (group, kind, message id, generation, node) — a redelivery counts once;
3. when an arrival completes a barrier, a release row (unique per barrier)
   and an outbox row are written in the same transaction;
4. ``multinode-timeout`` fails the group with a message naming the missing
   nodes and their roles; ``group-failed`` marks it failed;
5. after the commit the outbox is published to the group exchange, and
   only then are the AMQP deliveries acknowledged; the next batch's
   transaction marks those rows published;
6. ``multinode-query`` (a node's receiver reconnected and may have lost a
   release) publishes the release again if it was decided, else nothing.

Releases are published transient: RabbitMQ confirms them without writing
each node queue's copy to disk (5.0 → 1.6 ms for a 64-node group here),
and a broker restart may drop the copies still queued. The store still has
every decision, so nothing is lost: a node whose receiver reconnects asks
again for every release it waits for (``multinode-query``), and a node that
times out on a barrier already released is sent the release instead of a
failure. A release keeps one message id however often it is published
(``release_message_id``), so a node counts it once. Sends and group failures
stay persistent: they exist nowhere else.

A crash before the commit loses nothing (the deliveries come back and count
once); a crash between commit and publish is healed at start-up, which
publishes every outbox row not yet marked. The only duplicates possible are
of messages the broker confirmed but the store had not yet marked (a crash
before the next batch): every outbox message keeps its message id, and
clients ignore a message they already have.

A store that is away (``store_unavailable``: PostgreSQL restarting, a cut
connection, SQLite busy) or a publish failing after the commit makes the
batch raise ``TransientError``: the consumer keeps the deliveries and hands
them again after a back-off, never dead-letters them. A failed publish also
leaves the outbox to flush, which is done before the next batch and, with a
back-off, when idle; so is a flush at (re)connect that failed.

Counting happens in memory: each group's arrivals and releases are loaded
from the store once (at its first delivery after a (re)connect) and the
store is the journal, written in the batch's one transaction (arrivals with
one multi-row insert). Any error in a batch, and every (re)connect (another
instance may have counted meanwhile), drops the in-memory state so the next
batch reloads it from the store. The releases a batch decided are published
from memory (no outbox query) and marked by one statement in the next
batch's transaction: a transaction of their own cost each release
4-5 ms of the barrier's time on a 2-core VM. Statements are built once and
given their values at execute time (SQLAlchemy builds and hashes a statement
made per row anew, which cost more than the row).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session

from broker_config import topology
from broker_config.identity import check_sender, delivery_user
from broker_config.messaging import Broker, Delivery, QueueConsumer, TransientError
from coordinator.barrier_models import (
    BarrierArrival,
    BarrierGroup,
    BarrierOutbox,
    BarrierRelease,
)
from coordinator.db import (
    make_engine,
    migrate,
    session_factory,
    store_error_text,
    store_unavailable,
)
from schemas.errors import InfrastructureError
from schemas.messages.multinode import (
    BARRIER_SCHEMAS,
    GroupFailedSchema,
    MultinodeReleaseSchema,
)

log = logging.getLogger(__name__)

READY_LINE = "lavamq barrier ready"
OUTBOX_SCHEMAS = {
    MultinodeReleaseSchema.message_type: MultinodeReleaseSchema(),
    GroupFailedSchema.message_type: GroupFailedSchema(),
}


ARRIVALS: Table = BarrierArrival.__table__  # type: ignore[assignment]
OUTBOX: Table = BarrierOutbox.__table__  # type: ignore[assignment]
RELEASES: Table = BarrierRelease.__table__  # type: ignore[assignment]
GROUPS: Table = BarrierGroup.__table__  # type: ignore[assignment]
OUTBOX_INSERT = insert(OUTBOX)

#: (kind, message id, generation) of a barrier; kind "send" or "sync"
BarrierKey = tuple[str, str, int]
#: (kind, message id, generation, role) of a release; kind "wait-all" or "sync"
ReleaseKey = tuple[str, str, int, str]
#: (outbox id, group, message type, body) decided by a batch, published after its
#: commit; id None: a release published again (a query), not an outbox row
OutboxItem = tuple[int | None, str, str, dict[str, Any]]


def release_message_id(group: str, body: dict[str, Any]) -> str:
    """One message id per release, however often it is published."""
    key = f"{group}\0{body['kind']}\0{body['message_id']}\0{body['generation']}\0{body['role']}"
    return "release-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def outbox_message_id(
    group: str, row_id: int | None, message_type: str, body: dict[str, Any]
) -> str:
    """Stable ids: a message published again after a crash is dropped as the same."""
    if message_type == MultinodeReleaseSchema.message_type:
        return release_message_id(group, body)
    return f"barrier-outbox-{group}-{row_id}"


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


@dataclass
class _Group:
    """A group's membership and its counts, as committed (or being committed)."""

    members: dict[str, str]
    timeout: float
    arrived: dict[BarrierKey, set[str]] = field(default_factory=dict)
    released: set[ReleaseKey] = field(default_factory=set)
    _expected: dict[str, frozenset[str]] = field(default_factory=dict)

    def nodes(self, role: str = "") -> list[str]:
        return sorted(n for n, r in self.members.items() if not role or r == role)

    def expected(self, role: str = "") -> frozenset[str]:
        nodes = self._expected.get(role)
        if nodes is None:
            nodes = self._expected[role] = frozenset(self.nodes(role))
        return nodes


def _release_body(state: _Group, group: str, key: ReleaseKey) -> dict[str, Any]:
    kind, message_id, generation, role = key
    return {
        "group": group,
        "kind": kind,
        "message_id": message_id,
        "generation": generation,
        "role": role,
        "nodes": state.nodes(role),
    }


def _release_key(body: dict[str, Any]) -> ReleaseKey:
    return (body["kind"], body["message_id"], body["generation"], body["role"])


def _transient(exc: BaseException) -> bool:
    """The store or the broker is away for now: try again later."""
    return isinstance(exc, InfrastructureError) or store_unavailable(exc)


def describe_missing(members: dict[str, str], missing: list[str]) -> str:
    return ", ".join(f"{members.get(n, '?')} ({n})" for n in missing)


class BarrierService:
    """Run with ``run()`` (blocks) or ``start()`` (a thread); stop with ``stop()``."""

    def __init__(
        self,
        broker_url: str,
        db_url: str,
        *,
        prefetch: int = 500,
        migrate_db: bool = True,
    ) -> None:
        self.broker_url = broker_url
        self.db_url = db_url
        if migrate_db:
            migrate(db_url)
        self.engine = make_engine(db_url)
        self.sessions = session_factory(self.engine)
        self._groups: dict[str, _Group] = {}
        #: group → node → broker user of its host, from ``group-open`` (when given)
        self._owners: dict[str, dict[str, str]] = {}
        self.consumer = QueueConsumer(
            broker_url,
            [topology.barrier_queue()],
            BARRIER_SCHEMAS,
            batch_handler=self.handle_batch,
            authorize=self.authorize,
            prefetch=prefetch,
            poll_interval=0.2,
            on_consume=self._on_consume,
            idle_callback=self._idle,
        )
        self._thread: threading.Thread | None = None
        self.batches = 0
        #: (group, release) published again on this connection: every node
        #: queue got that copy, so more questions about it need no answer
        self._resent: set[tuple[str, ReleaseKey]] = set()
        #: outbox rows published, to be marked so by the next transaction
        self._unmarked: list[int] = []
        #: a publish (or the outbox flush) failed: committed decisions may be
        #: unpublished; flushed before the next batch and, with a back-off
        #: (``_flush_delay``), when idle
        self._flush_pending = False
        self._flush_delay = 0.0
        self._flush_at = 0.0

    # --- running ---

    def _on_consume(self) -> None:
        """Each (re)connect: forget counts (the store is the truth), send the outbox."""
        self._groups.clear()
        # a broker restart (the only way queued releases are lost) cuts this
        # connection too: releases sent again before it may be needed again
        self._resent.clear()
        self._try_flush()

    def _idle(self) -> None:
        if self._flush_pending and time.monotonic() >= self._flush_at:
            self._try_flush()

    def _try_flush(self) -> bool:
        """Publish the unpublished outbox; on a store or broker error try again later."""
        try:
            self._flush_outbox()
        except Exception as exc:
            if not _transient(exc):
                raise
            self._flush_pending = True
            self._flush_delay = min(max(2 * self._flush_delay, 0.1), 2.0)
            self._flush_at = time.monotonic() + self._flush_delay
            log.warning(
                "barrier: outbox not published (%s); trying again in %.1f s",
                store_error_text(exc),
                self._flush_delay,
            )
            return False
        self._flush_pending, self._flush_delay = False, 0.0
        return True

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        try:
            self.consumer.run(on_ready=on_ready)
        finally:
            try:
                with self.sessions() as session, session.begin():
                    self._mark_published(session, self._unmarked)
            except Exception as exc:  # they are only published again at start-up
                log.warning("barrier: could not mark published outbox rows: %s", exc)
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
        unpublished decisions are published by ``_flush_outbox`` first.
        """
        if self._flush_pending and not self._try_flush():
            raise TransientError("barrier: earlier decisions are not published yet")
        outbox: list[OutboxItem] = []
        marked, self._unmarked = self._unmarked, []
        try:
            with self.sessions() as session, session.begin():
                self._mark_published(session, marked)
                journal: list[dict[str, Any]] = []
                touched: dict[tuple[str, BarrierKey], set[str]] = {}
                for delivery in deliveries:
                    kind, body = delivery.message_type, delivery.body
                    if kind == "multinode-send" or kind == "multinode-sync":
                        send = kind == "multinode-send"
                        row = {
                            "group_name": body["group"],
                            "kind": "send" if send else "sync",
                            "message_id": body["message_id"],
                            "generation": 0 if send else body["generation"],
                            "node": body["node"],
                        }
                        journal.append(row)
                        key = (row["kind"], row["message_id"], row["generation"])
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
            self._unmarked[:0] = marked
            if store_unavailable(exc):
                raise TransientError(f"barrier store unavailable: {store_error_text(exc)}") from exc
            raise
        self.batches += 1
        if outbox:
            try:
                self._publish(outbox)
            except InfrastructureError as exc:
                # committed: the outbox rows wait in the store, the queries'
                # answers are given again when the deliveries are handled again
                self._flush_pending = True
                raise TransientError(f"barrier: publishing failed: {exc.message}") from exc

    def _group(self, session: Session, name: str) -> _Group | None:
        """The group's state, loaded from the store at its first use."""
        group = self._groups.get(name)
        if group is None:
            row = session.get(BarrierGroup, name)
            if row is None:
                return None
            group = _Group(json.loads(row.members), row.timeout)
            arrivals = session.execute(
                select(
                    BarrierArrival.kind,
                    BarrierArrival.message_id,
                    BarrierArrival.generation,
                    BarrierArrival.node,
                ).where(BarrierArrival.group_name == name)
            )
            for kind, message_id, generation, node in arrivals:
                group.arrived.setdefault((kind, message_id, generation), set()).add(node)
            releases = session.execute(
                select(
                    BarrierRelease.kind,
                    BarrierRelease.message_id,
                    BarrierRelease.generation,
                    BarrierRelease.role,
                ).where(BarrierRelease.group_name == name)
            )
            group.released.update((k, m, g, r) for k, m, g, r in releases)
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
        """Journal the arrivals (one statement), count them in memory, decide releases."""
        if not journal:
            return
        session.execute(_insert(session, ARRIVALS), journal)
        for (group_name, key), senders in touched.items():
            group = self._group(session, group_name)
            if group is None:
                log.warning("arrival for unknown group %s (%s %r)", group_name, *key[:2])
                continue
            arrived = group.arrived.setdefault(key, set())
            arrived.update(senders)
            kind, message_id, generation = key
            if kind == "sync":
                releases = [("sync", "")]
            else:
                roles = {group.members.get(n, "") for n in senders} - {""}
                releases = [("wait-all", role) for role in ("", *sorted(roles))]
            for release_kind, role in releases:
                if (release_kind, message_id, generation, role) in group.released:
                    continue
                expected = group.expected(role)
                if expected and len(arrived) >= len(expected) and arrived.issuperset(expected):
                    self._release(
                        session,
                        group,
                        group_name,
                        release_kind,
                        message_id,
                        generation,
                        role,
                        outbox,
                    )
        journal.clear()
        touched.clear()

    def _add_outbox(
        self,
        session: Session,
        outbox: list[OutboxItem],
        group: str,
        message_type: str,
        body: dict[str, Any],
    ) -> None:
        result: Any = session.execute(
            OUTBOX_INSERT,
            {
                "group_name": group,
                "message_type": message_type,
                "body": json.dumps(body),
                "published": False,
            },
        )
        outbox.append((int(result.inserted_primary_key[0]), group, message_type, body))

    def _release(
        self,
        session: Session,
        state: _Group,
        group: str,
        kind: str,
        message_id: str,
        generation: int,
        role: str,
        outbox: list[OutboxItem],
    ) -> None:
        state.released.add((kind, message_id, generation, role))
        result: Any = session.execute(
            _insert(session, RELEASES),
            {
                "group_name": group,
                "kind": kind,
                "message_id": message_id,
                "generation": generation,
                "role": role,
            },
        )
        if result.rowcount != 1:
            return  # released before: exactly one release per barrier
        body = _release_body(state, group, (kind, message_id, generation, role))
        self._add_outbox(session, outbox, group, MultinodeReleaseSchema.message_type, body)
        log.debug("release %s %s %r gen %d role %r", group, kind, message_id, generation, role)

    def _timeout(self, session: Session, body: dict[str, Any], outbox: list[OutboxItem]) -> None:
        name = body["group"]
        group = self._group(session, name)
        row = session.get(BarrierGroup, name)
        if group is None or row is None:
            log.warning("timeout for unknown group %s", name)
            return
        if row.failed_reason:
            return  # already failed: every client has been told
        operation, message_id, role = body["operation"], body["message_id"], body["role"]
        generation = body["generation"]
        if operation == "lava-sync":
            if self._resend(group, name, ("sync", message_id, generation, ""), outbox):
                return  # released: the node lost it (a broker restart); it has it again
            kind, expected = "sync", group.nodes()
        elif operation == "lava-wait-all":
            if self._resend(group, name, ("wait-all", message_id, 0, role), outbox):
                return
            kind, expected, generation = "send", group.nodes(role), 0
        else:
            kind, generation = "send", 0
            expected = [n for n in group.nodes() if n != body["node"]]
        arrived = group.arrived.get((kind, message_id, generation), set())
        missing = [n for n in expected if n not in arrived]
        if operation == "lava-wait" and len(missing) < len(expected):
            return  # someone did send: the waiter's copy is on its way
        if not missing:
            return
        waited = f"{body['timeout']:g}"
        who = describe_missing(group.members, missing)
        if operation == "lava-wait":
            reason = (
                f"lava-wait '{message_id}': timed out after {waited} s waiting for any of {who}; "
                f"0 of {len(expected)} sent"
            )
        else:
            label = f"{operation} '{message_id}'" + (f" (role {role})" if role else "")
            reason = (
                f"{label}: timed out after {waited} s waiting for {who}; "
                f"{len(expected) - len(missing)} of {len(expected)} arrived"
            )
        row.failed_reason = reason
        self._add_outbox(
            session,
            outbox,
            name,
            GroupFailedSchema.message_type,
            {"group": name, "reason": reason, "node": body["node"], "cause": "timeout"},
        )
        log.warning("group %s failed: %s", name, reason)

    def _query(self, session: Session, body: dict[str, Any], outbox: list[OutboxItem]) -> None:
        group = self._group(session, body["group"])
        if group is None:
            return
        key = (body["kind"], body["message_id"], body["generation"], body["role"])
        # after a broker restart every waiting node asks: one answer (fanned
        # out to every node queue) serves them all
        if not self._resend(group, body["group"], key, outbox, once=True):
            log.debug("query %s %r from %s: not released yet", body["group"], key, body["node"])

    def _resend(
        self,
        state: _Group,
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
        if once and (
            (group, key) in self._resent
            or any(
                row_id is None and g == group and _release_key(body) == key
                for row_id, g, _, body in outbox
            )
        ):
            return True
        body = _release_body(state, group, key)
        outbox.append((None, group, MultinodeReleaseSchema.message_type, body))
        log.info("release %s %r published again", group, key)
        return True

    # --- the outbox ---

    def _publisher(self) -> Broker:
        publisher = self.consumer.publisher
        if publisher is None:
            raise InfrastructureError("barrier service: no broker connection to publish on")
        return publisher

    def _publish(self, outbox: list[OutboxItem]) -> None:
        """Publish a batch's decisions (known from the batch: no outbox query).

        Each published row is marked in the next batch's transaction, not one
        of its own: a crash before that publishes it again, which nodes ignore.
        """
        publisher = self._publisher()
        for row_id, group, message_type, body in outbox:
            self._publish_one(publisher, row_id, group, message_type, body)
            if row_id is None:
                self._resent.add((group, _release_key(body)))
            else:
                self._unmarked.append(row_id)

    @staticmethod
    def _mark_published(session: Session, rows: list[int]) -> None:
        """Mark ``rows`` (taken from ``_unmarked``) published, in the caller's transaction."""
        if rows:
            session.execute(update(OUTBOX).where(OUTBOX.c.id.in_(rows)).values(published=True))

    @staticmethod
    def _publish_one(
        publisher: Broker, row_id: int | None, group: str, message_type: str, body: dict[str, Any]
    ) -> None:
        try:
            publisher.publish(
                topology.group_exchange_name(group),
                "",
                OUTBOX_SCHEMAS[message_type],
                body,
                message_id=outbox_message_id(group, row_id, message_type, body),
                # a release lost with a broker restart is asked for again
                persistent=message_type != MultinodeReleaseSchema.message_type,
            )
        except InfrastructureError as exc:
            text = str(exc)
            if "unroutable" not in text and "NOT_FOUND" not in text:
                raise
            # the group ended (exchange or queues gone): nobody to tell
            log.warning("dropping %s for ended group: %s", message_type, exc)

    def _flush_outbox(self) -> None:
        """Publish every decided message not yet marked published, oldest first."""
        with self.sessions() as session:
            marked, self._unmarked = self._unmarked, []
            try:
                with session.begin():
                    self._mark_published(session, marked)  # published before
            except BaseException:
                self._unmarked[:0] = marked
                raise
            rows = session.scalars(
                select(BarrierOutbox)
                .where(BarrierOutbox.published.is_(False))
                .order_by(BarrierOutbox.id)
            ).all()
            if not rows:
                return
            publisher = self._publisher()
            done: list[int] = []
            try:
                for row in rows:
                    self._publish_one(
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
