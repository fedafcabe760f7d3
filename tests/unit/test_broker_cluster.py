"""broker_config.cluster: node URL lists, round-robin starts, the quorum-queue rule."""

from __future__ import annotations

import pytest
from kombu import Queue

from broker_config import cluster, topology
from broker_config.broker import connection_for
from broker_config.identity import user_of_url
from schemas.errors import ConfigurationError

NODES = "amqp://u:p@127.0.0.1:5781/lab, amqp://u:p@127.0.0.1:5782/lab;amqp://u:p@127.0.0.1:5783/lab"


def test_node_urls_split_on_commas_and_semicolons() -> None:
    assert cluster.broker_urls(NODES) == [
        "amqp://u:p@127.0.0.1:5781/lab",
        "amqp://u:p@127.0.0.1:5782/lab",
        "amqp://u:p@127.0.0.1:5783/lab",
    ]
    assert cluster.is_cluster(NODES)
    assert not cluster.is_cluster("amqp://u:p@127.0.0.1:5672/lab")
    assert user_of_url(NODES) == "u"
    with pytest.raises(ConfigurationError):
        cluster.broker_urls(" , ")


def test_each_new_connection_starts_at_the_next_node() -> None:
    starts = {cluster.connection_urls(NODES)[0] for _ in range(3)}
    assert starts == set(cluster.broker_urls(NODES))
    # every node is still there to fail over to
    assert sorted(cluster.connection_urls(NODES)) == sorted(cluster.broker_urls(NODES))
    conn = connection_for(NODES)
    assert len(conn.alt) == 3
    assert conn.failover_strategy is not None


def test_quorum_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cluster.QUORUM_ENV, raising=False)
    assert cluster.quorum_queues(NODES)
    assert not cluster.quorum_queues("amqp://u:p@127.0.0.1:5672/lab")
    monkeypatch.setenv(cluster.QUORUM_ENV, "0")
    assert not cluster.quorum_queues(NODES)
    monkeypatch.setenv(cluster.QUORUM_ENV, "1")
    assert cluster.quorum_queues("amqp://u:p@127.0.0.1:5672/lab")
    monkeypatch.setenv(cluster.QUORUM_ENV, "maybe")
    with pytest.raises(ConfigurationError, match="LAVAMQ_QUORUM_QUEUES"):
        cluster.quorum_queues(NODES)


def _type(queue: Queue) -> object:
    return queue.as_dict().get("queue_arguments", {}).get("x-queue-type")


def test_which_queues_become_quorum_queues() -> None:
    durable = [
        topology.control_queue(),
        topology.rpc_queue(),
        topology.results_queue(),
        topology.logs_store_queue(),
        topology.dead_queue(),
        topology.device_queue("rack1.a-01"),
        # a classic queue lives on one node: a group must outlive any node
        topology.group_queue("7-abc", "rack1.a-01"),
    ]
    for queue in durable:
        quorum = cluster.for_broker(queue, True)
        assert _type(quorum) == "quorum", queue.name
        assert (quorum.name, quorum.routing_key, quorum.exchange) == (
            queue.name,
            queue.routing_key,
            queue.exchange,
        )
        assert cluster.for_broker(queue, False) is queue
    # reply queues are exclusive; the barrier is typed already
    for queue in (
        topology.reply_queue("lava.reply.0123"),
        topology.barrier_queue(),
    ):
        assert cluster.for_broker(queue, True) is queue
