"""Broker failures as types, mapped once where the client library raises them.

Callers catch ``NotFound`` or ``Unroutable``; nothing reads an error's text.
Every class is an ``InfrastructureError`` (the lab's fault), so code that only
cares that the broker failed keeps catching that.

AMQP channel errors carry a reply code (py-amqp's ``AMQPError.reply_code``,
pika's ``ChannelClosedByBroker.reply_code``, kombu's ``memory://`` channel
errors as a string): ``from_amqp`` maps it. The management HTTP API answers
with a status: ``from_http`` maps it the same way.
"""

from __future__ import annotations

from schemas.errors import InfrastructureError

#: AMQP reply codes (AMQP 0-9-1 §1.9) that lavamq tells apart
NOT_FOUND = 404
ACCESS_REFUSED = 403
PRECONDITION_FAILED = 406
#: the broker closed the connection because IT failed, not the client: 541
#: INTERNAL_ERROR is what RabbitMQ sends when a quorum queue's operation timed
#: out with the queue's majority away (a consume after two of three nodes
#: died: about 65 s). Clients reconnect, as after any lost connection.
INTERNAL_ERROR = 541


class BrokerError(InfrastructureError):
    """A broker operation failed; the subclass says how (``reply_code`` when the broker said)."""

    def __init__(self, message: str, *, reply_code: int | None = None) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class NotFound(BrokerError):
    """The queue, exchange, vhost or user named does not exist (AMQP 404, HTTP 404)."""


class AccessRefused(BrokerError):
    """The broker user may not do this (AMQP 403 ACCESS_REFUSED, HTTP 401/403)."""


class PreconditionFailed(BrokerError):
    """The broker refused a declare with other arguments, a forged ``user_id``... (AMQP 406)."""


class ConnectionLost(BrokerError):
    """The connection to the broker could not be (re)established within the retries."""


class Unroutable(BrokerError):
    """A mandatory publish was returned: no queue is bound for its exchange and key."""


class Nacked(BrokerError):
    """The broker nacked a confirmed publish: it did not take responsibility for it."""


_BY_CODE: dict[int, type[BrokerError]] = {
    NOT_FOUND: NotFound,
    ACCESS_REFUSED: AccessRefused,
    PRECONDITION_FAILED: PreconditionFailed,
}

_BY_HTTP_STATUS: dict[int, type[BrokerError]] = {
    404: NotFound,
    401: AccessRefused,
    403: AccessRefused,
}


def reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code an exception carries, whichever client raised it."""
    code = getattr(exc, "reply_code", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def from_amqp(exc: BaseException, what: str) -> BrokerError:
    """The typed error for an AMQP channel error raised while doing ``what``."""
    code = reply_code(exc)
    cls = _BY_CODE.get(code or 0, BrokerError)
    error = cls(f"{what}: broker refused: {exc}", reply_code=code)
    error.__cause__ = exc
    return error


def from_http(status: int, message: str) -> BrokerError:
    """The typed error for a management HTTP API answer with ``status``."""
    return _BY_HTTP_STATUS.get(status, BrokerError)(message, reply_code=status)


def is_broker_failure(exc: BaseException) -> bool:
    """True for a connection the broker closed on its own failure (541): reconnect."""
    return reply_code(exc) == INTERNAL_ERROR


def is_not_found(exc: BaseException) -> bool:
    """True for the broker's 404 NOT_FOUND, raw (a client library's) or typed."""
    return isinstance(exc, NotFound) or reply_code(exc) == NOT_FOUND
