"""Who sent a delivery, as the coordinator's ownership checks need it.

``check_sender`` (broker_config/identity.py) decides what a broker user's
role may send; the coordinator also checks that what a host's message names
(a sub-job, a result's sub-job) runs on a device of that very host, looked up
in the store. On ``memory://`` there is no identity and nothing to check.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker_config.broker import is_amqp_url
from broker_config.consumer import Delivery
from broker_config.identity import HOST, delivery_user, sender_of


@dataclass(frozen=True)
class DeliverySender:
    """The validated broker user of a delivery, and its host if it is a host's user."""

    user: str | None
    host: str | None


def delivery_sender(delivery: Delivery, broker_url: str) -> DeliverySender:
    """The sender of ``delivery`` (no user and no host on ``memory://``)."""
    if not is_amqp_url(broker_url):
        return DeliverySender(None, None)
    user = delivery_user(delivery.properties)
    sender = sender_of(user) if user else None
    host = sender.host if sender is not None and sender.role == HOST else None
    return DeliverySender(user, host)
