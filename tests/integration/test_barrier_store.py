"""The barrier's counting on both stores: idempotent arrivals, one release per barrier."""

from __future__ import annotations

from typing import Any

import pytest
from barrier_lab import BarrierLab
from kombu.transport import memory
from sqlalchemy import func, select

from broker_config.consumer import Delivery
from coordinator.barrier_models import BarrierArrival, BarrierOutbox, BarrierRelease

pytestmark = pytest.mark.integration


class FakeMessage:
    """Stands in for a kombu message: the handler only reads the decoded body."""

    properties: dict[str, Any] = {}
    headers: dict[str, Any] = {}


def test_redelivered_acks_count_once_and_release_once(db_url: str) -> None:
    memory.Transport.global_state.clear()
    memory.Channel.queues.clear()
    lab = BarrierLab("memory://", db_url)
    service = lab.service
    try:
        group = lab.create_group({"a": "x", "b": "y"}, timeout=10)
        open_body = {"group": group, "members": {"a": "x", "b": "y"}, "timeout": 10.0}

        def sync(node: str, gen: int = 1) -> Delivery:
            body = {"group": group, "node": node, "message_id": "ready", "generation": gen}
            return Delivery("multinode-sync", body, FakeMessage())  # type: ignore[arg-type]

        service.handle_batch([Delivery("group-open", open_body, FakeMessage())])  # type: ignore[arg-type]
        # a, a again (redelivery), then b twice in one batch, then b again later
        service.handle_batch([sync("a"), sync("a")])
        service.handle_batch([sync("b"), sync("b")])
        service.handle_batch([sync("b")])
        with service.sessions() as s:
            arrivals = s.scalar(select(func.count()).select_from(BarrierArrival))
            releases = s.scalar(select(func.count()).select_from(BarrierRelease))
            unpublished = s.scalar(
                select(func.count())
                .select_from(BarrierOutbox)
                .where(BarrierOutbox.published.is_(False))
            )
        assert (arrivals, releases, unpublished) == (2, 1, 0)
    finally:
        lab.close()
