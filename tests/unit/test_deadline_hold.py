"""When the coordinator may judge deadlines (coordinator/deadlines.py), as a pure state machine."""

from __future__ import annotations

from coordinator.deadlines import DeadlineHold


def test_at_start_deadlines_wait_only_for_the_backlog() -> None:
    hold = DeadlineHold(heartbeat_timeout=6)
    hold.consuming()
    assert hold.held(100.0, lambda: 12)
    assert hold.held(101.0, lambda: None)  # cannot tell: the broker is away
    assert not hold.held(102.0, lambda: 0)
    assert not hold.held(103.0, lambda: 5)  # read once: later traffic is not a backlog


def test_after_a_reconnect_every_host_gets_a_full_period_once_the_backlog_is_read() -> None:
    hold = DeadlineHold(heartbeat_timeout=6)
    hold.consuming()
    assert not hold.held(100.0, lambda: 0)
    hold.consuming()  # the coordinator's broker connection came back
    assert hold.held(110.0, lambda: 3)
    assert hold.held(111.0, lambda: 0)  # read at 111: held until 117
    assert hold.held(116.9, lambda: 0)
    assert not hold.held(117.0, lambda: 0)


def test_a_publishing_connection_opened_again_holds_deadlines_too() -> None:
    """A handler stuck in a publish through the whole outage: the consumer has not
    noticed yet, but the publisher's new connection says the link broke."""
    hold = DeadlineHold(heartbeat_timeout=6)
    hold.consuming()
    first, second = object(), object()
    assert not hold.held(100.0, lambda: 0, lambda: first)
    assert not hold.held(101.0, lambda: 0, lambda: first)
    assert hold.held(108.0, lambda: 0, lambda: second)  # read now: held until 114
    hold.consuming()  # the consumer notices too: still one period from its backlog read
    assert hold.held(109.0, lambda: 0, lambda: second)
    assert not hold.held(115.1, lambda: 0, lambda: second)
