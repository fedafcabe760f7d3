"""The MultiNode API on behalf of one node: lava-send/wait/wait-all/sync/network.

A ``MultinodeClient`` receives its group's messages through the process's
``GroupReceiver`` (``device_agent/group_receiver.py``: one connection and one
thread per process, one queue read per group however many of its nodes run
here), which owns the group's one ``GroupState`` (``device_agent/group_state.py``:
every send, every release, the group's failure). Every local node of the
group reads that state; a client adds only what is its own node's: its sync
generations.

The calling thread publishes on a connection of its own. ``wait`` is answered
from the local cache (only other nodes' sends count); ``wait_all`` and
``sync`` wait for the barrier's release. Each sync of an id by this node
has a generation (1, 2, ...) so the same id can be synced again later.

On a deadline the client tells the barrier (``multinode-timeout``); the
barrier knows who arrived, fails the group with a message naming the
missing nodes and roles, and every client releases its waiters with it.
This client raises ``MultinodeTimeout``; the others ``GroupFailed``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from broker_config import topology
from broker_config.broker import Broker
from broker_config.consumer import Delivery
from device_agent import group_receiver
from device_agent.group_state import ReleaseKey
from schemas.errors import GroupFailed, InfrastructureError, JobError, MultinodeTimeout
from schemas.messages.multinode import (
    MultinodeQuerySchema,
    MultinodeSendSchema,
    MultinodeSyncSchema,
    MultinodeTimeoutSchema,
    check_message_id,
    check_payload,
)

log = logging.getLogger(__name__)

#: the message id ``lava-network broadcast`` sends under
NETWORK_MESSAGE_ID = "lava_network_info"
#: the keys ``lava-network broadcast`` reports
NETWORK_KEYS = (
    "ipv4",
    "netmask",
    "broadcast",
    "ipv6",
    "mac",
    "hostname",
    "hostname-full",
    "default-gateway",
    "dns_1",
    "dns_2",
    "dns_3",
)


class MultinodeClient:
    """One node's view of its MultiNode group. Close it when the node is done."""

    def __init__(
        self,
        broker_or_url: Broker | str,
        group: str,
        node: str,
        members: dict[str, str],
        *,
        timeout: float,
        failure_grace: float = 5.0,
        owners: dict[str, str] | None = None,
    ) -> None:
        topology.check_name("group", group)
        topology.check_name("node", node)
        if node not in members:
            raise JobError(f"node {node!r} is not a member of group {group} ({sorted(members)})")
        self.group = group
        self.self_name = node
        self.members = dict(members)
        self.role = members[node]
        self.timeout = timeout
        self.failure_grace = failure_grace
        #: node → broker user of the host running it: a send is believed only
        #: from that user (RabbitMQ validated its user_id); None: role checks only
        self.owners = dict(owners) if owners else None
        if isinstance(broker_or_url, Broker):
            self._broker, self._own_broker = broker_or_url, False
        else:
            self._broker, self._own_broker = Broker(broker_or_url), True
        self._sync_generation: dict[str, int] = {}
        self._publish_lock = threading.Lock()
        self.broker_url = self._broker.url
        #: releases this node waits for now
        self._waiting: set[ReleaseKey] = set()
        try:
            self._receiver, self._state = group_receiver.attach(
                self.broker_url, group, node, self.owners
            )
            #: the receiver's connection count when this node joined
            self._joined_connects = self._receiver.connects
        except BaseException:
            group_receiver.detach(self.broker_url, group, node)
            if self._own_broker:
                self._broker.close()
            raise
        self._cond = self._state.cond
        self._state.add_hook(self._on_message)

    # --- identity ---

    def group_members(self) -> dict[str, str]:
        """node → role for the whole group (``lava-group``)."""
        return dict(self.members)

    def roles(self) -> list[str]:
        """Every role in the group, sorted, once each (``lava-role list``)."""
        return sorted(set(self.members.values()))

    def nodes_with_role(self, role: str) -> list[str]:
        """``lava-group <role>``; an unknown role gives an empty list."""
        return sorted(n for n, r in self.members.items() if r == role)

    # --- receiving (the process's receiver thread) ---

    @property
    def duplicates(self) -> int:
        """Redelivered messages the group's state dropped (counted once per group)."""
        return self._state.duplicates

    def _on_message(self, delivery: Delivery) -> None:
        """Each new message of the group, once the group's state has it (a hook for
        observers; the state itself needs nothing from the node)."""

    # --- publishing (caller's thread) ---

    def _publish_group(self, schema: Any, body: dict[str, Any]) -> None:
        with self._publish_lock:
            self._broker.publish(topology.group_exchange_name(self.group), "", schema, body)

    def _publish_barrier(self, schema: Any, body: dict[str, Any]) -> None:
        with self._publish_lock:
            self._broker.publish(
                topology.BARRIER_EXCHANGE_NAME,
                topology.barrier_routing_key(self.group),
                schema,
                body,
            )

    @property
    def canceled(self) -> str | None:
        """Why the group's job was canceled, once it was (the node must stop at once)."""
        canceled = self._state.canceled
        return None if canceled is None else str(canceled["reason"])

    def _check_failed(self) -> None:
        failure = self._state.failure
        if failure is not None:
            raise GroupFailed(f"MultiNode group {self.group} failed: {failure['reason']}")

    # --- the API ---

    def send(self, message_id: str, data: dict[str, str] | None = None) -> None:
        """``lava-send``: non-blocking; every node's queue and the barrier get it."""
        check_message_id("lava-send", message_id)
        payload = check_payload("lava-send", message_id, data)
        with self._cond:
            self._check_failed()
        body = {
            "group": self.group,
            "node": self.self_name,
            "message_id": message_id,
            "data": payload,
        }
        # group first: the barrier's release (caused by the second publish)
        # is then queued after this send in every node's FIFO queue
        self._publish_group(MultinodeSendSchema(), body)
        self._publish_barrier(MultinodeSendSchema(), body)
        with self._cond:
            self._state.record_send(self.self_name, message_id, payload)

    def wait(self, message_id: str, timeout: float | None = None) -> dict[str, dict[str, str]]:
        """``lava-wait``: until some OTHER node has sent ``message_id``; sender → data."""
        check_message_id("lava-wait", message_id)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                self._check_failed()
                others = self._state.data_from(message_id, lambda n: n != self.self_name)
                if others:
                    return others
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        self._timed_out("lava-wait", message_id, limit, 0, "")
        # the barrier saw a send after all: it is in our queue too
        with self._cond:
            return self._state.data_from(message_id, lambda n: n != self.self_name)

    def wait_all(
        self, message_id: str, role: str | None = None, timeout: float | None = None
    ) -> dict[str, dict[str, str]]:
        """``lava-wait-all``: until every node (of ``role``) has sent; sender → data."""
        check_message_id("lava-wait-all", message_id)
        role = role or ""
        if role and role not in self.members.values():
            raise JobError(
                f"lava-wait-all '{message_id}': no role {role!r} in group {self.group} "
                f"(roles: {', '.join(self.roles())})"
            )
        limit = self.timeout if timeout is None else timeout
        # the release may predate this call: lost if the receiver reconnected since joining
        key = ReleaseKey("wait-all", message_id, 0, role)
        self._wait_release("lava-wait-all", key, limit, self._joined_connects)
        with self._cond:
            return self._state.data_from(
                message_id, lambda n: not role or self.members.get(n) == role
            )

    def sync(self, message_id: str, timeout: float | None = None) -> None:
        """``lava-sync``: a global barrier; the n-th sync of an id is its generation n.

        As LAVA documents it, ``lava-sync ID`` is ``lava-send ID`` then
        ``lava-wait-all ID``: the first sync of an id also sends it (no data), so
        a ``lava-wait ID`` or ``lava-wait-all ID`` after it returns (on LAVA the
        latter crashes the dispatcher).
        """
        check_message_id("lava-sync", message_id)
        with self._cond:
            self._check_failed()
            generation = self._sync_generation.get(message_id, 0) + 1
            self._sync_generation[message_id] = generation
        if generation == 1:
            self.send(message_id, {})
        connects = self._receiver.connects
        self._publish_barrier(
            MultinodeSyncSchema(),
            {
                "group": self.group,
                "node": self.self_name,
                "message_id": message_id,
                "generation": generation,
            },
        )
        limit = self.timeout if timeout is None else timeout
        self._wait_release("lava-sync", ReleaseKey("sync", message_id, generation), limit, connects)

    # --- lava-network ---

    def broadcast(self, iface_data: dict[str, str]) -> None:
        """``lava-network broadcast``: this node's interface data to the group."""
        self.send(NETWORK_MESSAGE_ID, {k: str(v) for k, v in iface_data.items()})

    def collect(
        self, role: str | None = None, timeout: float | None = None
    ) -> dict[str, dict[str, str]]:
        """``lava-network collect``: every node's (of ``role``) broadcast data."""
        return self.wait_all(NETWORK_MESSAGE_ID, role, timeout)

    # --- internals ---

    def _wait_release(self, operation: str, key: ReleaseKey, limit: float, since: int) -> None:
        """Wait for a release; ``since``: the receiver's connection count it could come after."""
        deadline = time.monotonic() + limit
        with self._cond:
            self._waiting.add(key)
            self._state.waiting[key] = self.self_name
        waiting = True
        try:
            if self._receiver.connects != since and key not in self._state.releases:
                # reconnected meanwhile: a transient release may have died with the broker
                self.query(key)
            with self._cond:
                while True:
                    self._check_failed()
                    if key in self._state.releases:
                        # done while still holding the condition: a release wakes
                        # every node of the group at once, and each taking the
                        # lock once more to clean up was a second queue of them
                        self._stop_waiting(key)
                        waiting = False
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            _, message_id, generation, role = key
            self._timed_out(operation, message_id, limit, generation, role)
        finally:
            if waiting:
                with self._cond:
                    self._stop_waiting(key)

    def _stop_waiting(self, key: ReleaseKey) -> None:
        """Forget that this node waits for ``key`` (the caller holds ``_cond``)."""
        self._waiting.discard(key)
        if self._state.waiting.get(key) == self.self_name:
            del self._state.waiting[key]

    def waiting_for(self) -> list[ReleaseKey]:
        """Releases a caller of this node waits for now."""
        with self._cond:
            return sorted(self._waiting)

    def query(self, key: ReleaseKey) -> None:
        """Ask the barrier to publish a decided release again (see ``MultinodeQuerySchema``)."""
        self._publish_barrier(
            MultinodeQuerySchema(), group_receiver.query_body(self.group, self.self_name, key)
        )

    def _timed_out(
        self, operation: str, message_id: str, limit: float, generation: int, role: str
    ) -> None:
        """Tell the barrier; raise its verdict (or return if it says we were released)."""
        try:
            self._publish_barrier(
                MultinodeTimeoutSchema(),
                {
                    "group": self.group,
                    "node": self.self_name,
                    "operation": operation,
                    "message_id": message_id,
                    "generation": generation,
                    "role": role,
                    "timeout": limit,
                },
            )
        except InfrastructureError as exc:
            log.warning("cannot report the timeout to the barrier: %s", exc)
        kind = "sync" if operation == "lava-sync" else "wait-all"
        deadline = time.monotonic() + self.failure_grace
        with self._cond:
            while True:
                failure = self._state.failure
                if failure is not None:
                    raise MultinodeTimeout(
                        f"MultiNode group {self.group}: {failure['reason']}"
                        if failure.get("node") != self.self_name
                        else failure["reason"]
                    )
                if operation != "lava-wait" and (
                    ReleaseKey(kind, message_id, generation, role) in self._state.releases
                ):
                    return  # released while we reported: the barrier had it complete
                if operation == "lava-wait" and self._state.data_from(
                    message_id, lambda n: n != self.self_name
                ):
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        label = f"{operation} '{message_id}'" + (f" (role {role})" if role else "")
        raise MultinodeTimeout(
            f"{label}: timed out after {limit:g} s in group {self.group} "
            "(the barrier service did not answer with the missing nodes)"
        )

    def close(self) -> None:
        """Leave the group's receiver; closes the node's own broker connection."""
        self._state.remove_hook(self._on_message)
        group_receiver.detach(self.broker_url, self.group, self.self_name, self._receiver)
        if self._own_broker:
            self._broker.close()

    def __enter__(self) -> MultinodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- lava-network query / hosts -------------------------------------------


def network_query(collected: dict[str, dict[str, str]], node: str, key: str) -> str | None:
    """``lava-network query <node> <key>``: one value of the collected data, or None."""
    return collected.get(node, {}).get(key)


def network_hosts(
    collected: dict[str, dict[str, str]],
    members: dict[str, str] | None = None,
    *,
    aliases: bool = False,
) -> list[str]:
    """``lava-network hosts`` / ``alias-hosts``: ``ip<TAB>hostname[<TAB>alias]`` lines.

    The alias is ``<role><NN>``, numbered from 01 within each role in node order.
    """
    lines: list[str] = []
    counters: dict[str, int] = {}
    for node in sorted(collected):
        data = collected[node]
        ip = data.get("ipv4") or data.get("ipv6")
        name = data.get("hostname") or node
        if not ip:
            continue
        fields = [ip, name]
        if data.get("hostname-full") and data["hostname-full"] != name:
            fields.append(data["hostname-full"])
        if aliases and members is not None and node in members:
            role = members[node]
            counters[role] = counters.get(role, 0) + 1
            fields.append(f"{role}{counters[role]:02d}")
        lines.append("\t".join(fields))
    return lines
