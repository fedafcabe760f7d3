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

The receiver owns one :class:`~device_agent.group_state.GroupState` per
group read here; every local node of the group reads that one object, so a
node that attaches late starts with what the group has (its own queue holds
those messages too, but it is not read).

Releases are transient (``coordinator/barrier.py``): after every reconnect
the receiver asks the barrier again for each release a local node still
waits for (``multinode-query``).
"""

from __future__ import annotations

import logging
import threading

from broker_config import topology
from broker_config.broker import is_amqp_url
from broker_config.consumer import Delivery, QueueConsumer, QueueNotFound, run_in_thread
from broker_config.identity import check_sender, delivery_user
from device_agent.group_state import GroupState, ReleaseKey
from schemas.errors import InfrastructureError
from schemas.messages.multinode import GROUP_QUEUE_SCHEMAS, MultinodeQuerySchema

log = logging.getLogger(__name__)

#: how long a new group's first node may wait for its queue to be consumed
ATTACH_TIMEOUT = 30.0


def query_body(group: str, node: str, key: ReleaseKey) -> dict[str, object]:
    """A ``multinode-query`` asking the barrier to publish a decided release again."""
    return {
        "group": group,
        "node": node,
        "kind": key.kind,
        "message_id": key.message_id,
        "generation": key.generation,
        "role": key.role,
    }


class GroupReceiver:
    """Consumes one queue per group for every local node of this process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.amqp = is_amqp_url(url)
        self._lock = threading.Lock()
        #: serialises attach/detach decisions with their queue changes, so a
        #: queue added and removed by two threads is applied in decision order
        self.changes = threading.Lock()
        self.stopped = False
        #: group → its attached local nodes, in attach order
        self._nodes: dict[str, list[str]] = {}
        #: group → its live state, shared by those nodes
        self._states: dict[str, GroupState] = {}
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
        """How many local nodes read through this receiver."""
        with self._lock:
            return sum(len(n) for n in self._nodes.values())

    def lead_node(self, group: str) -> str | None:
        """The local node whose queue carries ``group`` (for the docs and tests)."""
        with self._lock:
            return self._lead.get(group)

    # --- attach / detach (the caller holds ``changes``) ---

    def _add(self, group: str, node: str, owners: dict[str, str] | None) -> tuple[GroupState, bool]:
        """Register ``node``; its group's state, and True when its queue is to be read."""
        with self._lock:
            nodes = self._nodes.setdefault(group, [])
            state = self._states.get(group)
            if state is None:
                state = self._states[group] = GroupState(group, owners)
            elif state.owners is None and owners:
                state.owners = dict(owners)
            nodes.append(node)
            if group in self._lead:
                return state, False
            self._lead[group] = node
            return state, True

    def _remove(self, group: str, node: str) -> str | None:
        """Unregister ``node``; the node whose queue to stop reading, if any."""
        with self._lock:
            nodes = self._nodes.get(group, [])
            if node in nodes:
                nodes.remove(node)
            if nodes or group not in self._lead:
                return None  # the group's stream still has local readers
            self._nodes.pop(group, None)
            self._states.pop(group, None)
            return self._lead.pop(group)

    def stop(self) -> None:
        """Stop reading (when the last node left) and wait for the thread."""
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
            states = list(self._states.values())
        publisher = self.consumer.publisher
        if publisher is None:  # consuming restarted without a connection to publish on
            log.warning("MultiNode receiver: no connection to ask the barrier again")
            return
        for state in states:
            with state.cond:
                waiting = sorted(state.waiting.items())
            for key, node in waiting:
                # once per group: the answer reaches every local node of the group
                log.info("group %s: asking again for release %r", state.group, key)
                try:
                    publisher.publish(
                        topology.BARRIER_EXCHANGE_NAME,
                        topology.barrier_routing_key(state.group),
                        MultinodeQuerySchema(),
                        query_body(state.group, node, key),
                    )
                except InfrastructureError as exc:
                    # the node's timeout still ends the wait: the barrier then
                    # sends a release it had decided instead of failing the group
                    log.warning("group %s: cannot ask again for %r: %s", state.group, key, exc)

    def _owners(self, group: str) -> dict[str, str] | None:
        with self._lock:
            state = self._states.get(group)
        return state.owners if state is not None else None

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
        with self._lock:
            state = self._states.get(group)
        if state is None:
            log.debug("no local node of group %s left for %s", group, delivery.message_type)
            return
        state.deliver(delivery)


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


def attach(
    url: str, group: str, node: str, owners: dict[str, str] | None = None
) -> tuple[GroupReceiver, GroupState]:
    """Attach ``node`` to its process's receiver for ``url`` (started on demand).

    Returns the receiver and the group's state. On failure the caller detaches.
    """
    while True:
        receiver = _receiver_for(url)
        with receiver.changes:
            if receiver.stopped:
                continue  # its last node left meanwhile: take the next one
            state, lead = receiver._add(group, node, owners)
            if lead:
                queue = topology.group_queue(group, node)
                try:
                    receiver.consumer.add_queue(queue, ATTACH_TIMEOUT)
                except QueueNotFound as exc:
                    # end_group deleted it: the job was canceled or failed (or its
                    # launch failed) while this node's assignment was still queued
                    raise InfrastructureError(
                        f"MultiNode group {group} has ended: the queue of node "
                        f"{node} ({queue.name}) is gone, so its job was "
                        "canceled or failed before this node started"
                    ) from exc
                log.debug("group %s: this process reads %s", group, queue.name)
            return receiver, state


def detach(url: str, group: str, node: str, receiver: GroupReceiver | None = None) -> None:
    """Detach ``node`` (from ``receiver``, the one it attached to, when known).

    The receiver stops when its last node has left.
    """
    if receiver is None:  # attach() failed half-way
        with _registry_lock:
            receiver = _receivers.get(url)
    if receiver is None:
        return
    with receiver.changes:
        lead = receiver._remove(group, node)
        with _registry_lock:
            empty = receiver.attached == 0
            if empty and _receivers.get(receiver.url) is receiver:
                del _receivers[receiver.url]
        if empty:
            receiver.stop()
            return
        if lead is not None:
            try:
                receiver.consumer.remove_queue(topology.group_queue_name(group, lead))
            except InfrastructureError as exc:
                # applied after the reconnect all the same; the node has left anyway
                log.warning("group %s: %s", group, exc)
