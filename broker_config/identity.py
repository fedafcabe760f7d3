"""Who may send which message: broker identities and the check consumers make.

Every message lavamq publishes on RabbitMQ carries the AMQP ``user_id``
property set to the broker user of the connection (``Broker`` stamps it).
RabbitMQ refuses a publish whose ``user_id`` is not the connection's user
(``PRECONDITION_FAILED``), so a consumer that reads ``user_id`` knows who
really sent the message. ``check_sender`` is the one rule book consumers call
before acting on a delivery.

Users follow the names ``lavamq broker add-host`` / ``add-service`` create:

=======================  ==========  =========================================
broker user              role        may send
=======================  ==========  =========================================
``lavamq-coordinator``   coordinator sub-jobs, group open/close/failed, RPC
                                     replies, events
``lavamq-barrier``       barrier     releases, group failures
``lavamq-host-<host>``   host        for ITS OWN devices only: MultiNode
                                     sends/syncs/timeouts, logs, results,
                                     host register/heartbeat, sub-job states
anything else            operator    everything (an admin account made outside
                                     lavamq's templates, e.g. for ``submit``)
=======================  ==========  =========================================

A message without ``user_id`` on RabbitMQ is refused outright: a host could
otherwise skip the stamp and be trusted. On ``memory://`` (one process,
nothing to forge) there is no identity and nothing is checked.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker_config import cluster
from schemas.errors import Unauthorized

log = logging.getLogger(__name__)

COORDINATOR_USER = "lavamq-coordinator"
BARRIER_USER = "lavamq-barrier"
HOST_USER_PREFIX = "lavamq-host-"

COORDINATOR = "coordinator"
BARRIER = "barrier"
HOST = "host"
OPERATOR = "operator"

#: message type → roles allowed to send it (operators may send anything)
ALLOWED_SENDERS: dict[str, frozenset[str]] = {
    # MultiNode (node-bound: a host only for its own nodes)
    "multinode-send": frozenset({HOST}),
    "multinode-sync": frozenset({HOST}),
    "multinode-timeout": frozenset({HOST}),
    "multinode-query": frozenset({HOST}),
    "multinode-release": frozenset({BARRIER}),
    "group-failed": frozenset({BARRIER, COORDINATOR, HOST}),
    "group-open": frozenset({COORDINATOR}),
    "group-close": frozenset({COORDINATOR}),
    # jobs and devices
    "subjob-assignment": frozenset({COORDINATOR}),
    "host-register": frozenset({HOST}),
    "host-heartbeat": frozenset({HOST}),
    "subjob-state": frozenset({HOST}),
    "control": frozenset({HOST}),
    "event": frozenset({COORDINATOR, HOST}),
    "rpc-reply": frozenset({COORDINATOR}),
    # job output (node-bound)
    "log-batch": frozenset({HOST}),
    "test-result": frozenset({HOST}),
}


@dataclass(frozen=True)
class Sender:
    """A broker user and the role its name gives it."""

    user: str
    role: str
    host: str | None = None

    def __str__(self) -> str:
        return f"{self.role} {self.host}" if self.host else f"{self.role} ({self.user})"


def host_user(host: str) -> str:
    """The broker user of dispatcher host ``host``."""
    return HOST_USER_PREFIX + host


def sender_of(user_id: str) -> Sender:
    """Classify a broker user by its name."""
    if user_id.startswith(HOST_USER_PREFIX) and len(user_id) > len(HOST_USER_PREFIX):
        return Sender(user_id, HOST, user_id[len(HOST_USER_PREFIX) :])
    if user_id == COORDINATOR_USER or user_id.startswith(COORDINATOR_USER + "-"):
        return Sender(user_id, COORDINATOR)
    if user_id == BARRIER_USER or user_id.startswith(BARRIER_USER + "-"):
        return Sender(user_id, BARRIER)
    return Sender(user_id, OPERATOR)


def user_of_url(url: str) -> str | None:
    """The broker user an AMQP URL logs in as (kombu's default ``guest``); None otherwise."""
    scheme = url.split("://", 1)[0]
    if scheme not in ("amqp", "amqps", "pyamqp"):
        return None
    # a cluster's node URLs share the user: the first names it
    parts = urllib.parse.urlsplit(cluster.first_url(url))
    return urllib.parse.unquote(parts.username) if parts.username else "guest"


def is_host_url(url: str) -> bool:
    """True when ``url`` logs in as a confined dispatcher host user."""
    user = user_of_url(url)
    return user is not None and sender_of(user).role == HOST


def check_sender(
    message_type: str,
    user_id: str | None,
    *,
    node: str | None = None,
    owners: Mapping[str, str] | None = None,
    host: str | None = None,
    amqp: bool = True,
) -> Sender | None:
    """Raise ``Unauthorized`` unless ``user_id`` may send ``message_type``.

    ``node``: the node (device) the message speaks for; with ``owners``
    (node → broker user of the host that runs it) a host may speak only for
    its own nodes. ``host``: the host a control message names; a host user may
    only speak for itself. ``amqp=False`` (memory://): nothing to check.
    """
    if not amqp:
        return None
    if not user_id:
        raise Unauthorized(
            f"{message_type or 'message'} without a user_id: every lavamq publisher stamps "
            "its broker user, so this one bypassed lavamq"
        )
    sender = sender_of(str(user_id))
    if sender.role == OPERATOR:
        return sender
    allowed = ALLOWED_SENDERS.get(message_type)
    if allowed is None or sender.role not in allowed:
        raise Unauthorized(
            f"{message_type or 'message'} from broker user {sender.user!r} ({sender.role}): "
            f"only {', '.join(sorted(allowed or ())) or 'operators'} may send it"
        )
    if sender.role == HOST:
        if host is not None and host != sender.host:
            raise Unauthorized(
                f"{message_type} for host {host!r} sent by broker user {sender.user!r}: "
                "a host speaks only for itself"
            )
        if node is not None and owners:
            owner = owners.get(node)
            if owner != sender.user:
                raise Unauthorized(
                    f"{message_type} as node {node!r} sent by broker user {sender.user!r}: "
                    f"that node runs on {owner or 'no host of this group'!r}"
                )
    return sender


def delivery_user(properties: Mapping[str, Any]) -> str | None:
    """The validated ``user_id`` of a delivery's AMQP properties, if any."""
    value = properties.get("user_id")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) if value else None
