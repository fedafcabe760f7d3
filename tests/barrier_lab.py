"""The barrier test harness: what every MultiNode test starts from.

A broker with lavamq's topology declared, a running barrier service on its own
store, and the groups and MultiNode clients a test makes on it; ``close`` undoes
them all. ``conftest.barrier_lab`` gives one on ``memory://`` and on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from lab import wait_for

from broker_config import topology
from broker_config.broker import Broker
from broker_config.declare import declare_topology
from coordinator.barrier import BarrierService
from coordinator.groups import create_group, end_group
from device_agent.multinode import MultinodeClient


class BarrierLab:
    """The coordinator's side of ``lava-sync`` for a test: topology, barrier, groups.

    ``url`` is what the barrier service and the clients connect with; groups are
    made and the topology declared with ``admin_url`` (default: ``url``).
    ``db_url=None`` runs no barrier service (``lava-send``/``lava-wait`` need none).
    """

    def __init__(
        self,
        url: str,
        db_url: str | None,
        *,
        admin_url: str | None = None,
        declare: bool = True,
        start: bool = True,
    ) -> None:
        self.url = url
        self.broker = Broker(admin_url or url)
        if declare:
            declare_topology(self.broker)
        self._service = BarrierService(url, db_url) if db_url is not None else None
        #: the first group made here (most tests make one)
        self.group = ""
        self.groups: list[tuple[str, dict[str, str]]] = []
        self.clients: list[MultinodeClient] = []
        if start and self._service is not None:
            self._service.start()

    @property
    def service(self) -> BarrierService:
        assert self._service is not None, "this BarrierLab runs no barrier service"
        return self._service

    @service.setter
    def service(self, service: BarrierService) -> None:
        self._service = service

    def create_group(
        self,
        members: dict[str, str],
        *,
        timeout: float = 30.0,
        owners: dict[str, str] | None = None,
        prefix: str = "g",
    ) -> str:
        """A new group (a fresh name) of ``members``, ended when the lab closes."""
        name = f"{prefix}{uuid.uuid4().hex[:8]}"
        create_group(self.broker, name, members, timeout=timeout, owners=owners)
        self.groups.append((name, members))
        self.group = self.group or name
        return name

    def client(
        self,
        group: str,
        node: str,
        members: dict[str, str],
        *,
        timeout: float = 20.0,
        cls: type[MultinodeClient] = MultinodeClient,
        url: str = "",
        **kwargs: Any,
    ) -> MultinodeClient:
        """``node``'s MultiNode client in ``group`` (on ``url``, default the lab's),
        closed when the lab closes."""
        client = cls(url or self.url, group, node, members, timeout=timeout, **kwargs)
        self.clients.append(client)
        return client

    def group_with_clients(
        self, members: dict[str, str], timeout: float = 20.0
    ) -> tuple[str, dict[str, MultinodeClient]]:
        """A new group and a client for each of its nodes."""
        name = self.create_group(members, timeout=timeout)
        return name, {n: self.client(name, n, members, timeout=timeout) for n in members}

    def to_barrier(self, schema: Any, body: dict[str, Any]) -> None:
        """Publish ``body`` to the barrier as a node would (``group`` defaults to the lab's)."""
        self.broker.publish(
            topology.BARRIER_EXCHANGE_NAME,
            topology.BARRIER_ROUTING_KEY,
            schema,
            {"group": self.group, **body},
        )

    def take(self, node: str, timeout: float = 10.0, group: str = "") -> Any:
        """The next message of ``node``'s group queue (read directly: no client runs)."""
        queue = topology.group_queue_name(group or self.group, node)

        def get() -> Any:
            return self.broker.channel().basic_get(queue, no_ack=True)

        return wait_for(get, timeout, f"a message in {queue}")

    def ready(self, node: str, group: str = "") -> int:
        """Messages waiting in ``node``'s queue of ``group`` (default: the lab's)."""
        channel = self.broker.channel()
        queue = topology.group_queue_name(group or self.group, node)
        return int(channel.queue_declare(queue, passive=True).message_count)

    def close(self) -> None:
        """Close the clients, stop the barrier, end the groups, close the broker."""
        for client in self.clients:
            client.close()
        if self._service is not None:
            self._service.stop()
        for name, members in self.groups:
            with contextlib.suppress(Exception):
                end_group(self.broker, name, members)
        self.broker.close()
