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
5. after the commit the outbox is published to the group exchange, marked
   published, and only then are the AMQP deliveries acknowledged.

A crash before the commit loses nothing (the deliveries come back and count
once); a crash between commit and publish is healed at start-up, which
publishes every outbox row not yet marked. The only duplicate possible is a
crash after the broker confirmed a release but before it was marked: clients
ignore a release they already have.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker_config import topology
from broker_config.identity import check_sender, delivery_user
from broker_config.messaging import Broker, Delivery, QueueConsumer
from coordinator.barrier_models import (
    BarrierArrival,
    BarrierGroup,
    BarrierOutbox,
    BarrierRelease,
)
from coordinator.db import make_engine, migrate, session_factory
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


def _insert(session: Session, model: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the store's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model).on_conflict_do_nothing()
    raise InfrastructureError(f"barrier store: unsupported database {dialect!r}")


@dataclass
class _Group:
    members: dict[str, str]
    timeout: float

    def nodes(self, role: str = "") -> list[str]:
        return sorted(n for n, r in self.members.items() if not role or r == role)


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
        )
        self._thread: threading.Thread | None = None
        self._outbox_added = False
        self.batches = 0

    # --- running ---

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        def ready() -> None:
            self._flush_outbox()
            if on_ready is not None:
                on_ready()

        try:
            self.consumer.run(on_ready=ready)
        finally:
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
        """Apply every delivery in one transaction, then publish what it decided."""
        with self.sessions() as session, session.begin():
            arrivals: list[dict[str, Any]] = []
            touched: dict[tuple[str, str, str, int], set[str]] = {}
            for delivery in deliveries:
                kind, body = delivery.message_type, delivery.body
                if kind in ("multinode-send", "multinode-sync"):
                    send = kind == "multinode-send"
                    row = {
                        "group_name": body["group"],
                        "kind": "send" if send else "sync",
                        "message_id": body["message_id"],
                        "generation": 0 if send else body["generation"],
                        "node": body["node"],
                    }
                    arrivals.append(row)
                    key = (row["group_name"], row["kind"], row["message_id"], row["generation"])
                    touched.setdefault(key, set()).add(row["node"])
                    continue
                self._flush_arrivals(session, arrivals, touched)
                if kind == "group-open":
                    self._open(session, body)
                elif kind == "group-close":
                    self._close(session, body["group"])
                elif kind == "group-failed":
                    self._mark_failed(session, body["group"], body["reason"])
                elif kind == "multinode-timeout":
                    self._timeout(session, body)
            self._flush_arrivals(session, arrivals, touched)
        self.batches += 1
        if self._outbox_added:  # skip the outbox query for batches that decided nothing
            self._outbox_added = False
            self._flush_outbox()

    def _group(self, session: Session, name: str) -> _Group | None:
        group = self._groups.get(name)
        if group is None:
            row = session.get(BarrierGroup, name)
            if row is None:
                return None
            group = _Group(json.loads(row.members), row.timeout)
            self._groups[name] = group
        return group

    def _open(self, session: Session, body: dict[str, Any]) -> None:
        stmt = _insert(session, BarrierGroup).values(
            name=body["group"], members=json.dumps(body["members"]), timeout=body["timeout"]
        )
        session.execute(stmt)
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
        arrivals: list[dict[str, Any]],
        touched: dict[tuple[str, str, str, int], set[str]],
    ) -> None:
        if not arrivals:
            return
        session.execute(_insert(session, BarrierArrival), arrivals)
        for (group_name, kind, message_id, generation), senders in touched.items():
            group = self._group(session, group_name)
            if group is None:
                log.warning("arrival for unknown group %s (%s %r)", group_name, kind, message_id)
                continue
            arrived = set(
                session.scalars(
                    select(BarrierArrival.node).where(
                        BarrierArrival.group_name == group_name,
                        BarrierArrival.kind == kind,
                        BarrierArrival.message_id == message_id,
                        BarrierArrival.generation == generation,
                    )
                )
            )
            if kind == "sync":
                roles = [""]
            else:
                roles = ["", *sorted({group.members.get(n, "") for n in senders} - {""})]
            for role in roles:
                expected = group.nodes(role)
                if expected and arrived.issuperset(expected):
                    self._release(
                        session,
                        group_name,
                        "sync" if kind == "sync" else "wait-all",
                        message_id,
                        generation,
                        role,
                        expected,
                    )
        arrivals.clear()
        touched.clear()

    def _release(
        self,
        session: Session,
        group: str,
        kind: str,
        message_id: str,
        generation: int,
        role: str,
        nodes: list[str],
    ) -> None:
        result: Any = session.execute(
            _insert(session, BarrierRelease).values(
                group_name=group,
                kind=kind,
                message_id=message_id,
                generation=generation,
                role=role,
            )
        )
        if result.rowcount != 1:
            return  # released before: exactly one release per barrier
        body = {
            "group": group,
            "kind": kind,
            "message_id": message_id,
            "generation": generation,
            "role": role,
            "nodes": nodes,
        }
        self._outbox_added = True
        session.add(
            BarrierOutbox(
                group_name=group,
                message_type=MultinodeReleaseSchema.message_type,
                body=json.dumps(body),
                published=False,
            )
        )
        log.debug("release %s %s %r gen %d role %r", group, kind, message_id, generation, role)

    def _released(
        self, session: Session, group: str, kind: str, message_id: str, generation: int, role: str
    ) -> bool:
        return (
            session.scalar(
                select(BarrierRelease.id).where(
                    BarrierRelease.group_name == group,
                    BarrierRelease.kind == kind,
                    BarrierRelease.message_id == message_id,
                    BarrierRelease.generation == generation,
                    BarrierRelease.role == role,
                )
            )
            is not None
        )

    def _timeout(self, session: Session, body: dict[str, Any]) -> None:
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
            if self._released(session, name, "sync", message_id, generation, ""):
                return
            kind, expected = "sync", group.nodes()
        elif operation == "lava-wait-all":
            if self._released(session, name, "wait-all", message_id, 0, role):
                return
            kind, expected, generation = "send", group.nodes(role), 0
        else:
            kind, generation = "send", 0
            expected = [n for n in group.nodes() if n != body["node"]]
        arrived = set(
            session.scalars(
                select(BarrierArrival.node).where(
                    BarrierArrival.group_name == name,
                    BarrierArrival.kind == kind,
                    BarrierArrival.message_id == message_id,
                    BarrierArrival.generation == generation,
                )
            )
        )
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
        self._outbox_added = True
        session.add(
            BarrierOutbox(
                group_name=name,
                message_type=GroupFailedSchema.message_type,
                body=json.dumps(
                    {"group": name, "reason": reason, "node": body["node"], "cause": "timeout"}
                ),
                published=False,
            )
        )
        log.warning("group %s failed: %s", name, reason)

    # --- the outbox ---

    def _publisher(self) -> Broker:
        publisher = self.consumer.publisher
        if publisher is None:
            raise InfrastructureError("barrier service: no broker connection to publish on")
        return publisher

    def _flush_outbox(self) -> None:
        """Publish every decided message not yet marked published, oldest first."""
        with self.sessions() as session:
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
                    try:
                        publisher.publish(
                            topology.group_exchange_name(row.group_name),
                            "",
                            OUTBOX_SCHEMAS[row.message_type],
                            json.loads(row.body),
                            # stable: a row published again after a crash is
                            # dropped by the clients as the same message
                            message_id=f"barrier-outbox-{row.group_name}-{row.id}",
                        )
                    except InfrastructureError as exc:
                        text = str(exc)
                        if "unroutable" not in text and "NOT_FOUND" not in text:
                            raise
                        # the group ended (exchange or queues gone): nobody to tell
                        log.warning("dropping %s for ended group: %s", row.message_type, exc)
                    done.append(row.id)
            finally:
                if done:
                    session.execute(
                        update(BarrierOutbox)
                        .where(BarrierOutbox.id.in_(done))
                        .values(published=True)
                    )
                    session.commit()
