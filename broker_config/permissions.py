"""Broker users and permissions: each dispatcher host confined to what is its own.

RabbitMQ grants three regexes per user and vhost, matched against resource
names: ``configure`` (declare/delete), ``write`` (publish to an exchange,
bind to a queue) and ``read`` (consume a queue, bind from an exchange), plus
per topic exchange a ``write`` regex on routing keys.

A dispatcher host (``lavamq-host-<host>``, see ``identity.py``) gets:

- configure: nothing. Its device queues are declared by ``lavamq broker
  add-host`` (the admin), so a host never needs the right to declare or
  delete anything, and certainly not another host's queues;
- read: its own device queues ``lava.device.<device>`` and its own nodes'
  group queues ``lava.group.<group>.<device>``;
- write: only the named exchanges it publishes to (``lava.control``,
  ``lava.results``, ``lava.logs``, ``lava.events``, ``lava.barrier``,
  ``lava.dead``, ``lava.group.*``) — never the default exchange (the empty
  name, which reaches every queue) and never ``lava.device`` (sub-jobs) or
  ``lava.rpc``;
- topic write on ``lava.logs`` / ``lava.results``: routing keys
  ``<job>.<device>`` of its own devices only.

What write on ``lava.group.*`` and ``lava.barrier`` cannot restrict (which
node a message speaks for, who may release a barrier) is enforced by the
receivers with the validated ``user_id`` (``identity.check_sender``).

The coordinator and the barrier service have users of their own
(``lavamq-coordinator``, ``lavamq-barrier``).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from broker_config import identity, topology
from broker_config.declare import ManagementAPI
from broker_config.errors import NotFound

log = logging.getLogger(__name__)

NOTHING = "^$"
#: one group or job id (no dots, see ``topology.SEGMENT_PATTERN``)
SEGMENT = f"[{topology.SEGMENT_CHARS}]+"
#: a group's fanout exchange
GROUP = re.escape(topology.GROUP_PREFIX) + SEGMENT

#: exchanges a dispatcher host publishes to
HOST_WRITE_EXCHANGES = (
    topology.CONTROL_EXCHANGE_NAME,
    topology.RESULTS_EXCHANGE_NAME,
    topology.LOGS_EXCHANGE_NAME,
    topology.EVENTS_EXCHANGE_NAME,
    topology.BARRIER_EXCHANGE_NAME,
    topology.DEAD_EXCHANGE_NAME,
)


@dataclass(frozen=True)
class TopicPermission:
    """A RabbitMQ topic permission: the routing keys a user may write and read on an exchange."""

    exchange: str
    write: str
    read: str = ".*"


@dataclass(frozen=True)
class UserPermissions:
    """What one broker user may do in one vhost."""

    user: str
    configure: str
    write: str
    read: str
    topics: tuple[TopicPermission, ...] = field(default_factory=tuple)
    tags: str = ""

    def as_dict(self) -> dict[str, Any]:
        """As data, for ``--json`` and the management API."""
        return {
            "user": self.user,
            "configure": self.configure,
            "write": self.write,
            "read": self.read,
            "topic_permissions": [t.__dict__ for t in self.topics],
        }


def _alternatives(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(set(names)))


def host_permissions(host: str, devices: Iterable[str]) -> UserPermissions:
    """The permissions of dispatcher host ``host`` owning ``devices``."""
    topology.check_name("host", host)
    devices = [topology.check_name("device", d) for d in devices]
    writes = _alternatives(HOST_WRITE_EXCHANGES)
    write = f"^({writes}|{GROUP})$"
    if devices:
        own = _alternatives(devices)
        # the group and job ids hold no dot, so ``own`` is the whole rest of
        # the name: ``a-01`` does not match inside ``G.rack1.a-01``
        read = f"^({re.escape(topology.DEVICE_QUEUE_PREFIX)}({own})|{GROUP}\\.({own}))$"
        keys = f"^{SEGMENT}\\.({own})$"
    else:
        read = NOTHING
        keys = NOTHING
    return UserPermissions(
        user=identity.host_user(host),
        configure=NOTHING,
        write=write,
        read=read,
        topics=(
            TopicPermission(topology.LOGS_EXCHANGE_NAME, write=keys),
            TopicPermission(topology.RESULTS_EXCHANGE_NAME, write=keys),
        ),
    )


def coordinator_permissions(user: str = identity.COORDINATOR_USER) -> UserPermissions:
    """The coordinator declares group and device topology and publishes sub-jobs."""
    lava = r"^lava\.[A-Za-z0-9_.-]+$"
    return UserPermissions(user=user, configure=lava, write=lava, read=lava)


def barrier_permissions(user: str = identity.BARRIER_USER) -> UserPermissions:
    """The barrier service: its own queue in, releases to group exchanges out."""
    # lava.barrier, or its shards lava.barrier.<k>
    barrier = re.escape(topology.BARRIER_QUEUE_NAME) + r"(\.[0-9]+)?"
    dead = re.escape(topology.DEAD_EXCHANGE_NAME)
    return UserPermissions(
        user=user,
        configure=f"^({barrier})$",
        write=f"^({barrier}|{dead}|{GROUP})$",
        read=f"^({barrier})$",
    )


def generate_password() -> str:
    """A random broker password for a new host or service user given none (printed once)."""
    return secrets.token_urlsafe(24)


def apply_user(api: ManagementAPI, perms: UserPermissions, password: str) -> None:
    """Create or update the user, then set its permissions in ``api``'s vhost."""
    q = api.q
    api.call("PUT", f"/users/{q(perms.user)}", {"password": password, "tags": perms.tags})
    api.call(
        "PUT",
        f"/permissions/{q(api.vhost)}/{q(perms.user)}",
        {"configure": perms.configure, "write": perms.write, "read": perms.read},
    )
    for topic in perms.topics:
        api.call(
            "PUT",
            f"/topic-permissions/{q(api.vhost)}/{q(perms.user)}",
            {"exchange": topic.exchange, "write": topic.write, "read": topic.read},
        )
    log.info("broker user %s: permissions set in vhost %s", perms.user, api.vhost)


def remove_user(api: ManagementAPI, user: str) -> bool:
    """Delete a broker user (and with it every permission); False if there was none."""
    try:
        api.call("DELETE", f"/users/{api.q(user)}")
    except NotFound:
        return False
    return True
