"""The old home of ``Broker`` and ``QueueConsumer``, kept so existing imports work.

New code imports from ``broker_config.broker`` (connection and confirmed
publishing), ``broker_config.consumer`` (validating consumers),
``broker_config.rpc`` (request/reply) and ``broker_config.errors``.
"""

from broker_config.broker import JSON, Broker, connection_for, is_amqp_url
from broker_config.consumer import (
    TRANSIENT_BACKOFF_MAX,
    BatchHandler,
    Delivery,
    Handler,
    QueueConsumer,
    QueueNotFound,
    TransientError,
    classify_thread_error,
    run_in_thread,
)
from broker_config.errors import is_not_found

__all__ = [
    "JSON",
    "TRANSIENT_BACKOFF_MAX",
    "BatchHandler",
    "Broker",
    "Delivery",
    "Handler",
    "QueueConsumer",
    "QueueNotFound",
    "TransientError",
    "classify_thread_error",
    "connection_for",
    "is_amqp_url",
    "is_not_found",
    "run_in_thread",
]
