"""Group lifecycle: the broker side of a MultiNode group's life.

``create_group`` runs before any node of the group starts: it declares the
group's fanout exchange and one durable classic queue per node bound to it
(so a message sent before a peer listens waits in that peer's queue), then
tells the barrier service the membership with a ``group-open`` message. The
barrier queue is FIFO, so the membership is known before any node's
acknowledgement. ``end_group`` tells the barrier to forget the group and
deletes the queues and the exchange; left-overs of a crash expire by the
``lava-group-expiry`` policy (queues) and the stale-exchange sweep of
``lavamq broker setup`` (exchanges, which cannot expire).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from broker_config import topology
from broker_config.messaging import Broker
from schemas.errors import ConfigurationError
from schemas.messages.multinode import GroupCloseSchema, GroupFailedSchema, GroupOpenSchema

log = logging.getLogger(__name__)


def create_group(
    broker: Broker,
    group: str,
    members: dict[str, str],
    *,
    timeout: float,
    owners: dict[str, str] | None = None,
) -> None:
    """Declare the group's exchange and every node's queue, then open it at the barrier.

    ``owners`` (node → broker user of its host): the barrier then accepts a
    node's acknowledgements only from that user (broker_config/identity.py).
    """
    topology.check_name("group", group)
    if not members:
        raise ConfigurationError(f"group {group}: a MultiNode group needs at least one node")
    for node, role in members.items():
        topology.check_name("node", node)
        if not role:
            raise ConfigurationError(f"group {group}: node {node} has no role")
    broker.declare(topology.group_exchange(group))
    for node in members:
        broker.declare(topology.group_queue(group, node))
    broker.publish(
        topology.BARRIER_EXCHANGE_NAME,
        topology.BARRIER_ROUTING_KEY,
        GroupOpenSchema(),
        {
            "group": group,
            "members": dict(members),
            "timeout": float(timeout),
            "owners": dict(owners or {}),
        },
    )
    log.info("group %s created: %d nodes", group, len(members))


def end_group(broker: Broker, group: str, nodes: Iterable[str]) -> None:
    """Forget the group at the barrier and delete its queues and exchange."""
    topology.check_name("group", group)
    broker.publish(
        topology.BARRIER_EXCHANGE_NAME,
        topology.BARRIER_ROUTING_KEY,
        GroupCloseSchema(),
        {"group": group},
    )
    for node in nodes:
        broker.delete_queue(topology.group_queue_name(group, node))
    broker.delete_exchange(topology.group_exchange_name(group))
    log.info("group %s ended", group)


def fail_group(broker: Broker, group: str, reason: str, *, node: str | None = None) -> None:
    """Fail the group: every node's waiters (now and later) get GroupFailed(reason)."""
    body = {"group": group, "reason": reason, "node": node, "cause": "failed"}
    broker.publish(topology.group_exchange_name(group), "", GroupFailedSchema(), body)
    broker.publish(
        topology.BARRIER_EXCHANGE_NAME, topology.BARRIER_ROUTING_KEY, GroupFailedSchema(), body
    )
    log.warning("group %s failed%s: %s", group, f" by {node}" if node else "", reason)
