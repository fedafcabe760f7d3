"""One consumer per process for the MultiNode groups of every local node.

Every node of a group has its own durable queue ``lava.group.<group>.<node>``,
bound to the group's fan-out exchange before any node runs, so each queue
holds the group's whole stream of sends, releases and failures. A dispatcher
host often runs several nodes of one group; reading every one of their queues
would make it receive, decode and acknowledge the same message once per node
(a 64-board host read 64 copies of each ``lava-sync`` release, which was most
of the release latency).

So the process has one ``GroupReceiver`` per broker URL: one connection and
one thread, consuming ONE queue per group — the queue of the group's first
local node, its *lead* — and handing each delivery to every local node of
that group. The other local nodes' queues are not read: their copies stay
until the group ends (``end_group`` deletes the queues; the expiry policy
covers a crash). The lead's queue is read until the group's LAST local node
leaves, even after the lead node itself has left: it carries the group's
whole stream, and only ``end_group`` deletes it. (Handing over to the next
node's queue would mean reading that queue from its start, and relying on a
queue nobody consumed, which the expiry policy may have deleted in a long
job.) A node whose group has no other local node reads its own queue.

A node that attaches to a group already read here starts with what the
group's first attached client has (sends, releases, failure, the message ids
applied), copied while no delivery is being handed out: its own queue holds
those messages too, but it is not read.

Releases are transient (``coordinator/barrier.py``): after every reconnect
the receiver asks the barrier again for each release a local node still
waits for (``multinode-query``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from broker_config import topology
from broker_config.broker import is_amqp_url
from broker_config.consumer import Delivery, QueueConsumer, QueueNotFound, run_in_thread
from broker_config.identity import check_sender, delivery_user
from schemas.errors import InfrastructureError
from schemas.messages.multinode import GROUP_QUEUE_SCHEMAS

if TYPE_CHECKING:
    from device_agent.multinode import MultinodeClient

log = logging.getLogger(__name__)

#: how long a new group's first node may wait for its queue to be consumed
ATTACH_TIMEOUT = 30.0


class GroupReceiver:
    """Consumes one queue per group for every ``MultinodeClient`` of this process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.amqp = is_amqp_url(url)
        self._lock = threading.Lock()
        #: held while a delivery is handed to a group's clients, and while a new
        #: client copies an attached one's state: it misses nothing in between
        self._delivering = threading.Lock()
        #: serialises attach/detach decisions with their queue changes, so a
        #: queue added and removed by two threads is applied in decision order
        self.changes = threading.Lock()
        self.stopped = False
        #: group → its attached clients, in attach order (the first is the lead)
        self._clients: dict[str, list[MultinodeClient]] = {}
        #: group → node whose queue is consumed
        self._lead: dict[str, str] = {}
        #: how many times consuming has (re)started; a node compares it across a wait
        self.connects = 0
        self.consumer = QueueConsumer(
            url,
            [],
            GROUP_QUEUE_SCHEMAS,
            handler=self._dispatch,
            authorize=self._authorize,
            prefetch=100,
            declare=False,  # the coordinator declared them; a host user may not configure
            # short: a new group's queue is consumed within this much of attach()
            poll_interval=0.05,
            # a lead queue read from its start repeats what other queues gave:
            # each client de-duplicates, the consumer must not drop them for it
            remember=0,
            on_consume=self._on_consume,
        )
        self._thread = run_in_thread(self.consumer, "multinode-receiver")

    @property
    def attached(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._clients.values())

    def lead_node(self, group: str) -> str | None:
        """The local node whose queue carries ``group`` (for the docs and tests)."""
        with self._lock:
            return self._lead.get(group)

    # --- attach / detach (the caller holds ``changes``) ---

    def _add(self, client: MultinodeClient) -> bool:
        """Register ``client``; True when it became its group's lead (its queue to read)."""
        with self._delivering, self._lock:
            clients = self._clients.setdefault(client.group, [])
            if clients:
                client._adopt(clients[0])
            clients.append(client)
            if client.group in self._lead:
                return False
            self._lead[client.group] = client.self_name
            return True

    def _remove(self, client: MultinodeClient) -> str | None:
        """Unregister ``client``; the node whose queue to stop reading, if any."""
        with self._lock:
            clients = self._clients.get(client.group, [])
            if client in clients:
                clients.remove(client)
            if clients or client.group not in self._lead:
                return None  # the group's stream still has local readers
            self._clients.pop(client.group, None)
            return self._lead.pop(client.group)

    def stop(self) -> None:
        self.stopped = True
        self.consumer.stop()
        if self._thread is not threading.current_thread():
            self._thread.join(10)

    # --- receiving (the consumer thread) ---

    def _on_consume(self) -> None:
        """Each (re)connect: ask again for every release a local node waits for."""
        self.connects += 1
        if self.connects == 1:
            return
        with self._lock:
            clients = [c for group in self._clients.values() for c in group]
        publisher = self.consumer.publisher
        asked: set[tuple[str, tuple[str, str, int, str]]] = set()
        for client in clients:
            for key in client.waiting_for():
                if (client.group, key) in asked:
                    continue  # the answer reaches every local node of the group
                asked.add((client.group, key))
                log.info("group %s: asking again for release %r", client.group, key)
                try:
                    client.query(key, publisher)
                except InfrastructureError as exc:
                    # the node's timeout still ends the wait: the barrier then
                    # sends a release it had decided instead of failing the group
                    log.warning("group %s: cannot ask again for %r: %s", client.group, key, exc)

    def _owners(self, group: str) -> dict[str, str] | None:
        with self._lock:
            for client in self._clients.get(group, ()):
                if client.owners is not None:
                    return client.owners
        return None

    def _authorize(self, delivery: Delivery) -> None:
        """Only the barrier releases; a node speaks only through its own host's user."""
        node = None
        if delivery.message_type == "multinode-send":
            node = delivery.body["node"]
        elif delivery.message_type == "group-failed":
            node = delivery.body.get("node") or ""
        check_sender(
            delivery.message_type,
            delivery_user(delivery.properties),
            node=node,
            owners=self._owners(str(delivery.body.get("group"))),
            amqp=self.amqp,
        )

    def _dispatch(self, delivery: Delivery) -> None:
        exchange = str((delivery.message.delivery_info or {}).get("exchange") or "")
        group = delivery.body["group"]
        if exchange and exchange != topology.group_exchange_name(group):
            # a body naming another group than the exchange it came through
            log.warning("ignoring %s for group %s from %s", delivery.message_type, group, exchange)
            return
        with self._delivering:
            with self._lock:
                clients = list(self._clients.get(group, ()))
            if not clients:
                log.debug("no local node of group %s left for %s", group, delivery.message_type)
            for client in clients:
                client._deliver(delivery)


_receivers: dict[str, GroupReceiver] = {}
_registry_lock = threading.Lock()


def _receiver_for(url: str) -> GroupReceiver:
    """The process's running receiver for ``url`` (a new one if none, or if it died)."""
    with _registry_lock:
        receiver = _receivers.get(url)
        if receiver is not None and not receiver._thread.is_alive():
            log.error("MultiNode receiver for %s had stopped: starting a new one", url)
            receiver = None
        if receiver is None:
            receiver = _receivers[url] = GroupReceiver(url)
        return receiver


def attach(client: MultinodeClient) -> GroupReceiver:
    """Attach ``client`` to its process's receiver for its broker URL (started on demand)."""
    while True:
        receiver = _receiver_for(client.broker_url)
        with receiver.changes:
            if receiver.stopped:
                continue  # its last client left meanwhile: take the next one
            lead = receiver._add(client)
            if lead:
                queue = topology.group_queue(client.group, client.self_name)
                # on failure the client detaches itself (MultinodeClient.__init__)
                try:
                    receiver.consumer.add_queue(queue, ATTACH_TIMEOUT)
                except QueueNotFound as exc:
                    # end_group deleted it: the job was canceled or failed (or its
                    # launch failed) while this node's assignment was still queued
                    raise InfrastructureError(
                        f"MultiNode group {client.group} has ended: the queue of node "
                        f"{client.self_name} ({queue.name}) is gone, so its job was "
                        "canceled or failed before this node started"
                    ) from exc
                log.debug("group %s: this process reads %s", client.group, queue.name)
            return receiver


def detach(client: MultinodeClient) -> None:
    """Detach ``client``; the receiver stops when its last client has left."""
    receiver: GroupReceiver | None = getattr(client, "_receiver", None)
    if receiver is None:  # attach() failed half-way
        with _registry_lock:
            receiver = _receivers.get(client.broker_url)
    if receiver is None:
        return
    with receiver.changes:
        _detach_locked(receiver, client)


def _detach_locked(receiver: GroupReceiver, client: MultinodeClient) -> None:
    lead = receiver._remove(client)
    with _registry_lock:
        empty = receiver.attached == 0
        if empty and _receivers.get(receiver.url) is receiver:
            del _receivers[receiver.url]
    if empty:
        receiver.stop()
        return
    if lead is not None:
        try:
            receiver.consumer.remove_queue(topology.group_queue_name(client.group, lead))
        except InfrastructureError as exc:
            # applied after the reconnect all the same; the node has left anyway
            log.warning("group %s: %s", client.group, exc)
