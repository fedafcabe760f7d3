"""The barrier rides out a failed publish and a store that is briefly away.

Each test injects the failure (or makes a real PostgreSQL refuse connections)
and waits, with a deadline, for the release the nodes need.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from barrier_lab import BarrierLab
from lab import MEMORY_AND_RABBIT, broker_url_for, wait_for
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from broker_config import topology
from broker_config.broker import Broker
from broker_config.consumer import Delivery
from coordinator.barrier import BarrierService
from coordinator.barrier_models import BarrierOutbox, BarrierRelease
from coordinator.barrier_outbox import Outbox
from schemas.errors import InfrastructureError
from schemas.messages.multinode import MultinodeSyncSchema

PAIR = {"a": "server", "b": "client"}


class Lab(BarrierLab):
    """The barrier harness with one group of two nodes; the test starts the service,
    and every batch that raised is recorded."""

    def __init__(self, url: str, db_url: str) -> None:
        super().__init__(url, db_url, start=False)
        self.create_group(PAIR, prefix="f")
        self.failures: list[BaseException] = []

    def start(self) -> None:
        self.service.start()
        handle = self.service.consumer.batch_handler
        assert handle is not None

        def recording(deliveries: list[Delivery]) -> None:
            try:
                handle(deliveries)
            except BaseException as exc:
                self.failures.append(exc)
                raise

        # the consumer reads batch_handler at each call
        self.service.consumer.batch_handler = recording

    def sync(self, node: str, message_id: str = "go") -> None:
        self.to_barrier(
            MultinodeSyncSchema(), {"node": node, "message_id": message_id, "generation": 1}
        )

    def release(self, node: str = "a") -> Any:
        """The next message in ``node``'s group queue, if any."""
        queue = topology.group_queue_name(self.group, node)
        return self.broker.channel().basic_get(queue, no_ack=True)

    def wait_release(self, message_id: str = "go") -> None:
        message = wait_for(self.release, 10, "the release in a's queue")
        assert message.properties["type"] == "multinode-release"
        assert json.loads(message.body)["message_id"] == message_id

    def count(self, model: Any, *where: Any) -> int:
        with self.service.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture(params=MEMORY_AND_RABBIT)
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    url = broker_url_for(request)
    lab = Lab(url, f"sqlite:///{tmp_path / 'barrier.sqlite'}")
    try:
        yield lab
    finally:
        lab.close()


def test_a_release_whose_publish_failed_is_published_without_a_reconnect(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch completing the barrier commits the release, then its publish
    fails twice: the committed release is published from the outbox when the
    batch is handled again (not only after the consumer reconnects), once, and
    the acknowledgements are not dead-lettered."""
    real, real_many = Outbox.publish_one, Broker.publish_many
    failures = [2]

    def flaky(publisher: Any, row_id: Any, group: str, message_type: str, body: Any) -> None:
        if message_type == "multinode-release" and failures[0]:
            failures[0] -= 1
            raise InfrastructureError("publish multinode-release: broker connection lost 6 times")
        real(publisher, row_id, group, message_type, body)

    def flaky_many(broker: Broker, messages: Any) -> set[str]:
        # a batch's decisions go out together: the same failure
        if any(m.schema.message_type == "multinode-release" for m in messages) and failures[0]:
            failures[0] -= 1
            raise InfrastructureError("publish multinode-release: broker connection lost 6 times")
        return real_many(broker, messages)

    monkeypatch.setattr(Outbox, "publish_one", staticmethod(flaky))
    monkeypatch.setattr(Broker, "publish_many", flaky_many)
    lab.start()
    connection = lab.service.consumer.connection
    lab.sync("a")
    lab.sync("b")
    lab.wait_release()
    assert failures == [0]
    assert lab.service.consumer.connection is connection, "published only after a reconnect"
    assert lab.service.consumer.dead_lettered == 0
    wait_for(lambda: not lab.service.outbox.flush_pending, 10, "the outbox flushed")
    wait_for(
        lambda: lab.count(BarrierOutbox, BarrierOutbox.published.is_(False)) == 0,
        10,
        "the outbox row marked published",
    )
    assert lab.count(BarrierRelease) == 1


@pytest.mark.parametrize("error", ["operational", "invalidated"])
def test_a_store_error_in_a_batch_is_retried_not_dead_lettered(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """The transaction of the batch with both syncs fails three times with a
    database error (OperationalError; a DBAPIError whose connection was
    invalidated): the same deliveries are handled again after a back-off and
    the barrier releases, with nothing dead-lettered."""
    from sqlalchemy.exc import DBAPIError

    real = BarrierService._flush_arrivals
    failures = [3]

    def flaky(self: BarrierService, session: Any, journal: Any, touched: Any, outbox: Any) -> None:
        if journal and failures[0]:
            failures[0] -= 1
            cause = Exception("server closed the connection unexpectedly")
            if error == "operational":
                raise OperationalError("INSERT", {}, cause)
            raise DBAPIError("INSERT", {}, cause, connection_invalidated=True)
        real(self, session, journal, touched, outbox)

    monkeypatch.setattr(BarrierService, "_flush_arrivals", flaky)
    lab.start()
    lab.sync("a")
    lab.sync("b")
    lab.wait_release()
    assert failures == [0]
    assert len(lab.failures) >= 3
    assert lab.service.consumer.dead_lettered == 0
    assert lab.count(BarrierRelease) == 1


def test_a_bug_in_a_batch_is_still_dead_lettered(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only store outages are retried: a handler bug on a message still
    dead-letters it (once), and the barrier goes on serving."""
    real = BarrierService._flush_arrivals

    def buggy(self: BarrierService, session: Any, journal: Any, touched: Any, outbox: Any) -> None:
        if any(row["message_id"] == "poison" for row in journal):
            raise KeyError("poison")
        real(self, session, journal, touched, outbox)

    monkeypatch.setattr(BarrierService, "_flush_arrivals", buggy)
    lab.start()
    wait_for(lambda: lab.service.batches >= 1, 10, "group-open handled")
    lab.sync("a", "poison")
    wait_for(lambda: lab.service.consumer.dead_lettered == 1, 10, "the poison dead-lettered")
    lab.sync("a")
    lab.sync("b")
    lab.wait_release()
    assert lab.service.consumer.dead_lettered == 1


def _unpublished_release(service: BarrierService, group: str) -> None:
    """A release committed by a barrier that died before publishing it."""
    body = {
        "group": group,
        "kind": "sync",
        "message_id": "go",
        "generation": 1,
        "role": "",
        "nodes": sorted(PAIR),
    }
    with service.sessions() as session, session.begin():
        session.add(
            BarrierOutbox(
                group_name=group,
                message_type="multinode-release",
                body=json.dumps(body),
                published=False,
            )
        )


@pytest.mark.parametrize("error", ["store", "broker"])
def test_a_failed_outbox_flush_at_connect_is_retried_when_idle(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """At every (re)connect the barrier publishes its unpublished outbox. A store
    error (OperationalError) or a broker error there escaped ``on_consume`` and
    killed the barrier. Now it is retried, with a back-off, while idle."""
    _unpublished_release(lab.service, lab.group)
    real = Outbox.flush
    failures = [2]

    def flaky(self: Outbox) -> None:
        if failures[0]:
            failures[0] -= 1
            if error == "store":
                raise OperationalError("SELECT", {}, Exception("the database is starting up"))
            raise InfrastructureError("publish multinode-release: broker connection lost 6 times")
        real(self)

    monkeypatch.setattr(Outbox, "flush", flaky)
    lab.start()
    lab.wait_release()
    assert failures == [0]
    assert lab.service._thread is not None and lab.service._thread.is_alive()
    wait_for(
        lambda: lab.count(BarrierOutbox, BarrierOutbox.published.is_(False)) == 0,
        10,
        "the outbox row marked published",
    )


# --- a real PostgreSQL outage ---


@contextlib.contextmanager
def pg_outage(db_url: str) -> Iterator[None]:
    """The database refuses new connections and its open ones are cut, until the block ends."""
    import psycopg2

    import services

    name = db_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(services.PG_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        yield
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()


@pytest.fixture
def pg_lab(rabbit_url: str, pg_url: str) -> Iterator[tuple[Lab, str]]:
    lab = Lab(rabbit_url, pg_url)
    try:
        yield lab, pg_url
    finally:
        lab.close()


@pytest.mark.integration
def test_a_postgresql_outage_during_a_batch_loses_no_acknowledgement(
    pg_lab: tuple[Lab, str],
) -> None:
    """Both syncs arrive while the barrier's database refuses connections: the
    batch fails (OperationalError) and is handled again until the database is
    back, then the barrier releases; nothing is dead-lettered."""
    lab, pg_url = pg_lab
    lab.start()
    wait_for(lambda: lab.service.batches >= 1, 10, "group-open handled")
    with pg_outage(pg_url):
        lab.sync("a")
        lab.sync("b")
        wait_for(lambda: len(lab.failures) >= 2, 10, "the batch failing twice on the outage")
    assert all("store unavailable" in str(exc) for exc in lab.failures), lab.failures
    lab.wait_release()
    assert lab.service.consumer.dead_lettered == 0
    assert lab.count(BarrierRelease) == 1


@pytest.mark.integration
def test_a_postgresql_outage_at_start_does_not_kill_the_barrier(
    pg_lab: tuple[Lab, str],
) -> None:
    """The barrier starts (or reconnects) while its database refuses connections:
    the outbox flush fails in ``on_consume``; the barrier stays up and publishes
    the committed release once the database is back."""
    lab, pg_url = pg_lab
    _unpublished_release(lab.service, lab.group)
    with pg_outage(pg_url):
        lab.start()
        wait_for(lambda: lab.service.outbox.flush_pending, 10, "the flush failing on the outage")
    lab.wait_release()
    assert lab.service._thread is not None and lab.service._thread.is_alive()
    wait_for(lambda: not lab.service.outbox.flush_pending, 10, "the flush done")
    assert lab.count(BarrierOutbox, BarrierOutbox.published.is_(False)) == 0
