"""A broker given as several node URLs: a RabbitMQ cluster.

Every lavamq process takes its broker as one string; a cluster is the node
URLs joined by ``,`` or ``;`` (``amqp://u:p@n1:5672/lab,amqp://u:p@n2:5672/lab``).
``connection_urls`` hands kombu the list for failover, starting each new
connection at the next node (round-robin), so a process's connections spread
over the nodes and a reconnect after a node died goes to another.

On a cluster the durable queues that outlive a job are quorum queues
(replicated: they survive a node). Every process must declare a queue with
the same type, or RabbitMQ refuses it (406), so the choice is one rule of
the URL, ``quorum_queues(url)``: on when there are several URLs, unless
``$LAVAMQ_QUORUM_QUEUES`` says otherwise (``1``/``0``; set it to ``1`` when
one URL reaches a cluster through a load balancer). Group queues are quorum
queues too there, although they live for one job: a classic queue lives on
one node, and a group whose queues were on a node that died could not go on
(RabbitMQ answers 404 for a classic queue whose node is down). Reply queues
(exclusive) stay classic.
"""

from __future__ import annotations

import itertools
import os
import re

from kombu import Queue

from schemas.errors import ConfigurationError

QUORUM_ENV = "LAVAMQ_QUORUM_QUEUES"

_next_start = itertools.count()


def broker_urls(url: str) -> list[str]:
    """The node URLs of a broker string (one for a single node)."""
    urls = [part.strip() for part in re.split(r"[,;]", url) if part.strip()]
    if not urls:
        raise ConfigurationError(f"no broker URL in {url!r}")
    return urls


def first_url(url: str) -> str:
    """The first node's URL: the one whose user, vhost and host name the lab."""
    return broker_urls(url)[0]


def is_cluster(url: str) -> bool:
    """Whether ``url`` lists several broker nodes (then queues must be quorum queues)."""
    return len(broker_urls(url)) > 1


def connection_urls(url: str) -> list[str]:
    """The node URLs for one new connection, starting at the next node in turn."""
    urls = broker_urls(url)
    start = next(_next_start) % len(urls)
    return urls[start:] + urls[:start]


def quorum_queues(url: str) -> bool:
    """Whether durable queues are declared as quorum queues for this broker."""
    setting = os.environ.get(QUORUM_ENV, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    if setting:
        raise ConfigurationError(f"${QUORUM_ENV}={setting!r}: use 1 or 0")
    return is_cluster(url)


def for_broker(queue: Queue, quorum: bool) -> Queue:
    """``queue`` as this broker declares it: a quorum queue when ``quorum`` and it
    is durable and shared (not an exclusive reply queue nor one already typed)."""
    # kombu sets these attributes dynamically; as_dict() is its typed view of them
    args = dict(queue.as_dict().get("queue_arguments") or {})
    if (
        not quorum
        or not queue.durable
        or queue.exclusive
        or queue.auto_delete
        or "x-queue-type" in args
    ):
        return queue
    return Queue(
        queue.name,
        exchange=queue.exchange,
        routing_key=queue.routing_key,
        durable=True,
        queue_arguments={**args, "x-queue-type": "quorum"},
        bindings=queue.bindings,
    )
