"""Every exchange, queue and routing-key name of lavamq, in one place.

Nothing else in lavamq spells a broker name: callers ask this module for a
name (``group_exchange_name``) or for the kombu object to declare or consume
(``group_exchange``, ``group_queue``...). Names built from group, node, device
or job ids are validated here so that a stray ``#``, ``*`` or space can never
turn into a wildcard or a broken routing key.

Layout (see docs/multinode.md for the conversations on top of it):

========================  =======  ==========================================
exchange                  type     queues / routing keys
========================  =======  ==========================================
``lava.group.<group>``    fanout   ``lava.group.<group>.<node>`` per node
``lava.barrier``          direct   quorum queue ``lava.barrier`` (key
                                   ``barrier``; single active consumer)
``lava.rpc``              direct   ``lava.rpc`` (key ``rpc``)
``lava.reply``            direct   per-client reply queues, key = queue name
``lava.device``           direct   ``lava.device.<device>`` (key = device)
``lava.control``          direct   ``lava.control`` (key ``control``)
``lava.results``          topic    ``lava.results`` (bound with ``#``;
                                   key ``<job>.<node>``)
``lava.logs``             topic    key ``<job>.<node>``; listeners bind their
                                   own queues
``lava.events``           topic    key ``<kind>.<name>``, e.g. ``job.12``
``lava.dead``             fanout   ``lava.dead`` (dead letters)
========================  =======  ==========================================
"""

from __future__ import annotations

import os
import re
import zlib

from kombu import Exchange, Queue

from schemas.errors import ConfigurationError

#: what a group, node, device or job id may contain: safe in every routing
#: key, queue name and URL path segment, and never an AMQP topic wildcard
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")
#: what a group or job id may contain: a name without dots. It stands before
#: a dotted device name (``lava.group.<group>.<node>``, ``<job>.<node>``),
#: so a permission regex can tell where the device name starts
SEGMENT_CHARS = "A-Za-z0-9_-"
SEGMENT_PATTERN = re.compile(rf"^[{SEGMENT_CHARS}]{{1,120}}$")

GROUP_PREFIX = "lava.group."

BARRIER_EXCHANGE_NAME = "lava.barrier"
BARRIER_QUEUE_NAME = "lava.barrier"
BARRIER_ROUTING_KEY = "barrier"
#: how many barrier shards (``barrier_shards``); the same for every process of a lab
BARRIER_SHARDS_ENV = "LAVAMQ_BARRIER_SHARDS"
MAX_BARRIER_SHARDS = 64

RPC_EXCHANGE_NAME = "lava.rpc"
RPC_QUEUE_NAME = "lava.rpc"
RPC_ROUTING_KEY = "rpc"

REPLY_EXCHANGE_NAME = "lava.reply"

DEVICE_EXCHANGE_NAME = "lava.device"
DEVICE_QUEUE_PREFIX = "lava.device."

CONTROL_EXCHANGE_NAME = "lava.control"
CONTROL_QUEUE_NAME = "lava.control"
CONTROL_ROUTING_KEY = "control"

RESULTS_EXCHANGE_NAME = "lava.results"
RESULTS_QUEUE_NAME = "lava.results"

LOGS_EXCHANGE_NAME = "lava.logs"
#: durable queue of every job log batch, consumed by the log store
#: (dispatcher/logstore.py); declared by ``lavamq broker setup``
LOGS_STORE_QUEUE_NAME = "lava.logs.store"
EVENTS_EXCHANGE_NAME = "lava.events"

DEAD_EXCHANGE_NAME = "lava.dead"
DEAD_QUEUE_NAME = "lava.dead"

#: header carried by every message lavamq dead-letters itself
REJECT_REASON_HEADER = "x-lavamq-reject-reason"
ORIGINAL_EXCHANGE_HEADER = "x-lavamq-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-lavamq-original-routing-key"
ORIGINAL_QUEUE_HEADER = "x-lavamq-original-queue"

#: queue arguments: every queue lavamq declares dead-letters to lava.dead
DEAD_LETTER_ARGUMENTS = {"x-dead-letter-exchange": DEAD_EXCHANGE_NAME}

#: policy names and patterns applied by ``lavamq broker setup``
GROUP_QUEUE_POLICY = "lava-group-expiry"
GROUP_QUEUE_POLICY_PATTERN = r"^lava\.group\."
DEFAULT_GROUP_EXPIRY_MS = 24 * 3600 * 1000


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is safe in broker names; raise ConfigurationError if not."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use 1 to 120 characters from "
            "A-Z a-z 0-9 '_' '.' '-' (no spaces, '#', '*' or '/')"
        )
    return name


def check_segment(kind: str, name: str) -> str:
    """Return ``name`` if it is a safe name without dots (a group or job id)."""
    if not isinstance(name, str) or not SEGMENT_PATTERN.match(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use 1 to 120 characters from "
            "A-Z a-z 0-9 '_' '-' (no dots: device names follow it after a dot)"
        )
    return name


# --- static exchanges -----------------------------------------------------


def barrier_exchange() -> Exchange:
    """Where nodes send their lava-sync / lava-wait-all arrivals for the barrier service."""
    return Exchange(BARRIER_EXCHANGE_NAME, type="direct", durable=True)


def rpc_exchange() -> Exchange:
    """Where clients send requests to the coordinator (submit, cancel, job show ...)."""
    return Exchange(RPC_EXCHANGE_NAME, type="direct", durable=True)


def reply_exchange() -> Exchange:
    """Where the coordinator sends each RPC answer, routed to the caller's reply queue."""
    return Exchange(REPLY_EXCHANGE_NAME, type="direct", durable=True)


def device_exchange() -> Exchange:
    """Where the coordinator sends sub-job assignments, routed to one device's queue."""
    return Exchange(DEVICE_EXCHANGE_NAME, type="direct", durable=True)


def control_exchange() -> Exchange:
    """Where dispatchers report host registration, heartbeats and sub-job states."""
    return Exchange(CONTROL_EXCHANGE_NAME, type="direct", durable=True)


def results_exchange() -> Exchange:
    """Where dispatchers publish test results, keyed ``job.node`` for the results consumer."""
    return Exchange(RESULTS_EXCHANGE_NAME, type="topic", durable=True)


def logs_exchange() -> Exchange:
    """Where dispatchers publish job log batches (``job.node``) for the store and live readers."""
    return Exchange(LOGS_EXCHANGE_NAME, type="topic", durable=True)


def events_exchange() -> Exchange:
    """Where the coordinator announces job and device events for the web UI and watchers."""
    return Exchange(EVENTS_EXCHANGE_NAME, type="topic", durable=True)


def dead_exchange() -> Exchange:
    """Where every refused message goes (with its reason), so none is lost silently."""
    return Exchange(DEAD_EXCHANGE_NAME, type="fanout", durable=True)


def static_exchanges() -> list[Exchange]:
    """Every exchange that outlives a job: ``lavamq broker setup`` declares them all."""
    return [
        dead_exchange(),
        barrier_exchange(),
        rpc_exchange(),
        reply_exchange(),
        device_exchange(),
        control_exchange(),
        results_exchange(),
        logs_exchange(),
        events_exchange(),
    ]


# --- static queues --------------------------------------------------------


def barrier_shards() -> int:
    """How many shards the barrier's work is split into (``$LAVAMQ_BARRIER_SHARDS``, 1).

    Every process of a lab must see the same number: publishers route each
    group's messages to its shard, barrier processes consume the shards.
    """
    raw = os.environ.get(BARRIER_SHARDS_ENV, "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BARRIER_SHARDS:
        raise ConfigurationError(
            f"${BARRIER_SHARDS_ENV}={raw!r}: use a number from 1 to {MAX_BARRIER_SHARDS}"
        )
    return int(raw)


def barrier_shard_of(group: str, shards: int | None = None) -> int:
    """The shard that counts ``group``: the same on every host (crc32, not ``hash``)."""
    return zlib.crc32(check_segment("group", group).encode()) % (shards or barrier_shards())


def barrier_routing_key(group: str) -> str:
    """Where a group's barrier messages go on ``lava.barrier``: its shard's queue."""
    shards = barrier_shards()
    return (
        BARRIER_ROUTING_KEY
        if shards == 1
        else f"{BARRIER_ROUTING_KEY}.{barrier_shard_of(group, shards)}"
    )


def barrier_queues(shards: int | None = None) -> list[Queue]:
    """One queue per shard: ``lava.barrier`` alone, or ``lava.barrier.<k>`` for k < shards.

    Each is a single-active-consumer quorum queue, so each group (of one
    shard) is counted by exactly one ``lavamq barrier`` at a time, and a
    standby takes over the shards of one that dies.
    """
    shards = shards or barrier_shards()
    if shards == 1:
        return [barrier_queue()]
    return [
        barrier_queue(f"{BARRIER_QUEUE_NAME}.{k}", f"{BARRIER_ROUTING_KEY}.{k}")
        for k in range(shards)
    ]


def barrier_queue(name: str = BARRIER_QUEUE_NAME, routing_key: str = BARRIER_ROUTING_KEY) -> Queue:
    """A barrier queue: quorum (replicated, survives a node) and single active
    consumer (a second ``lavamq barrier`` is a hot standby)."""
    return Queue(
        name,
        exchange=barrier_exchange(),
        routing_key=routing_key,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            **DEAD_LETTER_ARGUMENTS,
        },
    )


def rpc_queue() -> Queue:
    """The coordinator's queue of RPC requests (dead-lettered when refused)."""
    return Queue(
        RPC_QUEUE_NAME,
        exchange=rpc_exchange(),
        routing_key=RPC_ROUTING_KEY,
        durable=True,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


def control_queue() -> Queue:
    """The coordinator's queue of dispatcher reports (dead-lettered when refused)."""
    return Queue(
        CONTROL_QUEUE_NAME,
        exchange=control_exchange(),
        routing_key=CONTROL_ROUTING_KEY,
        durable=True,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


def results_queue() -> Queue:
    """Every test result of every job (bound with ``#``) for the results consumer."""
    return Queue(
        RESULTS_QUEUE_NAME,
        exchange=results_exchange(),
        routing_key="#",
        durable=True,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


def logs_store_queue() -> Queue:
    """Every ``log-batch`` (bound with ``#``) for the log store; live readers bind their own."""
    return Queue(
        LOGS_STORE_QUEUE_NAME,
        exchange=logs_exchange(),
        routing_key="#",
        durable=True,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


def dead_queue() -> Queue:
    """Keeps the dead-lettered messages, each with its reason, for an operator to read."""
    return Queue(DEAD_QUEUE_NAME, exchange=dead_exchange(), routing_key="", durable=True)


def static_queues() -> list[Queue]:
    """Every queue that outlives a job: ``lavamq broker setup`` declares them all, so
    nothing a lab publishes is unroutable because its consumer has not run yet."""
    return [
        dead_queue(),
        *barrier_queues(),
        rpc_queue(),
        control_queue(),
        results_queue(),
        logs_store_queue(),
    ]


# --- per group ------------------------------------------------------------


def group_exchange_name(group: str) -> str:
    """The fanout exchange name of a MultiNode group, its name checked to be one segment."""
    return GROUP_PREFIX + check_segment("group", group)


def group_exchange(group: str) -> Exchange:
    """The fanout exchange of one MultiNode group (deleted when the group ends)."""
    return Exchange(group_exchange_name(group), type="fanout", durable=True)


def group_queue_name(group: str, node: str) -> str:
    """The name of one node's queue in its group, both names checked."""
    return f"{group_exchange_name(group)}.{check_name('node', node)}"


def group_queue(group: str, node: str) -> Queue:
    """One node's durable queue, bound to its group's fanout exchange.

    Classic on one node (group queues are short-lived); a quorum queue on a
    cluster (``cluster.for_broker``: it must outlive any one node).
    Left-overs of a crash expire by the ``lava-group-expiry`` policy.
    """
    return Queue(
        group_queue_name(group, node),
        exchange=group_exchange(group),
        routing_key="",
        durable=True,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


def is_group_name(name: str) -> bool:
    """True for a ``lava.group.*`` exchange or queue name."""
    return name.startswith(GROUP_PREFIX)


# --- per device -----------------------------------------------------------


def device_queue_name(device: str) -> str:
    """The queue a device's dispatcher reads its assignments from."""
    return DEVICE_QUEUE_PREFIX + check_name("device", device)


def device_routing_key(device: str) -> str:
    """The routing key of one device's queue: the device's name, checked."""
    return check_name("device", device)


def device_queue(device: str) -> Queue:
    """The queue a dispatcher consumes for one of its devices (key = device name)."""
    return Queue(
        device_queue_name(device),
        exchange=device_exchange(),
        routing_key=device_routing_key(device),
        durable=True,
        queue_arguments=dict(DEAD_LETTER_ARGUMENTS),
    )


# --- RPC replies ----------------------------------------------------------


def reply_queue(name: str) -> Queue:
    """An exclusive, auto-deleted reply queue bound to ``lava.reply`` under its own name.

    Replies go through the named ``lava.reply`` exchange, never the default one.
    """
    check_name("reply queue", name)
    return Queue(
        name,
        exchange=reply_exchange(),
        routing_key=name,
        durable=False,
        exclusive=True,
        auto_delete=True,
    )


# --- routing keys ---------------------------------------------------------


def log_routing_key(job: str | int, node: str) -> str:
    """``<job>.<node>`` on ``lava.logs``; bind ``<job>.#`` for one job's logs."""
    return f"{check_segment('job', str(job))}.{check_name('node', node)}"


def result_routing_key(job: str | int, node: str) -> str:
    """``<job>.<node>`` on ``lava.results``."""
    return f"{check_segment('job', str(job))}.{check_name('node', node)}"


def event_routing_key(kind: str, name: str | int) -> str:
    """``<kind>.<name>`` on ``lava.events``, e.g. ``job.12`` or ``device.qemu-01``."""
    return f"{check_name('event kind', kind)}.{check_name('event subject', str(name))}"
