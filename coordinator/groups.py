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
from broker_config.broker import Broker
from broker_config.identity import host_user
from coordinator.store import GroupOutcome, StartedGroup
from schemas.errors import ConfigurationError, LavamqError
from schemas.jobmodel import JobPlan
from schemas.messages.jobs import SubJobAssignmentSchema
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
        topology.barrier_routing_key(group),
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
        topology.barrier_routing_key(group),
        GroupCloseSchema(),
        {"group": group},
    )
    for node in nodes:
        broker.delete_queue(topology.group_queue_name(group, node))
    broker.delete_exchange(topology.group_exchange_name(group))
    log.info("group %s ended", group)


def fail_group(
    broker: Broker, group: str, reason: str, *, node: str | None = None, cause: str = "failed"
) -> None:
    """Fail the group: every node's waiters (now and later) get GroupFailed(reason);
    ``cause`` "canceled" also stops each running node's current step (its job was canceled)."""
    body = {"group": group, "reason": reason, "node": node, "cause": cause}
    broker.publish(topology.group_exchange_name(group), "", GroupFailedSchema(), body)
    broker.publish(
        topology.BARRIER_EXCHANGE_NAME,
        topology.barrier_routing_key(group),
        GroupFailedSchema(),
        body,
    )
    log.warning("group %s failed%s: %s", group, f" by {node}" if node else "", reason)


def launch_group(broker: Broker, group: StartedGroup, *, only_assigned: bool = False) -> None:
    """Create a started group on the broker and publish one assignment per node.

    ``only_assigned``: publish only to sub-jobs no dispatcher accepted yet (a
    restarted coordinator resuming a joining group). Raises ``LavamqError``.
    """
    plan = JobPlan.from_dict(group.plan)
    timeouts = plan.timeouts.to_dict()
    # each node may speak only through the broker user of the host running it
    hosts = group.hosts
    owners = (
        {node: host_user(host) for node, host in hosts.items()}
        if set(hosts) == set(group.members)
        else {}
    )
    create_group(broker, group.group, group.members, timeout=plan.timeouts.multinode, owners=owners)
    for sub in group.subjobs:
        if only_assigned and sub.state != "assigned":
            continue
        broker.publish(
            topology.DEVICE_EXCHANGE_NAME,
            topology.device_routing_key(sub.device),
            SubJobAssignmentSchema(),
            {
                "job_id": group.job_id,
                "subjob_id": sub.subjob_id,
                "group": group.group,
                "job_name": group.job_name,
                "node": sub.device,
                "role": sub.role,
                "device": sub.device,
                "device_type": sub.device_type,
                "members": group.members,
                "owners": owners,
                "plan": plan.subjob_dict(sub.role, sub.role_index),
                "timeouts": timeouts,
                "is_slave": sub.is_slave,
                "essential": sub.essential,
                "join_deadline": group.join_deadline,
            },
        )


def apply_outcome(broker: Broker, outcome: GroupOutcome) -> None:
    """Do the broker side of a committed state change: fail the group, clean it up."""
    if not outcome.created:
        return
    if outcome.fail_reason:
        try:
            fail_group(
                broker,
                outcome.group,
                outcome.fail_reason,
                node=outcome.fail_node,
                cause=outcome.fail_cause,
            )
        except LavamqError as exc:
            log.warning("group %s: cannot publish its failure: %s", outcome.group, exc)
    if outcome.ended:
        try:
            end_group(broker, outcome.group, outcome.nodes)
        except LavamqError as exc:
            log.warning("group %s: cannot clean up: %s", outcome.group, exc)
