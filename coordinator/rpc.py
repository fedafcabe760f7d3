"""Client side of the coordinator's RPC (``lava.rpc``), used by the CLI.

Each call publishes a request to ``lava.rpc`` with a fresh ``correlation_id``
and ``reply_to`` naming an exclusive, auto-deleted reply queue bound to
``lava.reply``, then waits for the matching reply. The request carries a
per-message TTL equal to the timeout: a request nobody took in time is dropped
by RabbitMQ instead of being run later by a coordinator that starts after the
client gave up.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from kombu import Consumer
from kombu.message import Message

from broker_config import topology
from broker_config.messaging import Broker, connection_for
from schemas.errors import InfrastructureError, error_from_dict
from schemas.job import JobValidationError
from schemas.messages.base import InvalidMessage, MessageSchema, decode
from schemas.messages.jobs import (
    CancelRequestSchema,
    DevicesRequestSchema,
    JobShowRequestSchema,
    JobsRequestSchema,
    ResultsRequestSchema,
    RpcReplySchema,
    SubmitRequestSchema,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0


class CoordinatorClient:
    """Calls the coordinator over the broker. Use as a context manager or call ``close()``."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.broker = Broker(url)
        self.connection = connection_for(url)
        self._channel: Any = None
        self._reply_name = f"lava.reply.{uuid.uuid4().hex}"
        self._replies: dict[str, Message] = {}
        self._consumer: Consumer | None = None

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception:  # closing anyway
                log.debug("reply consumer cancel failed", exc_info=True)
        self.connection.release()
        self.broker.close()

    def _listen(self) -> None:
        if self._consumer is not None:
            return
        try:
            self.connection.ensure_connection(max_retries=2)
        except self.connection.connection_errors as exc:
            raise InfrastructureError(
                f"cannot connect to the broker at {self.broker.safe_url()}: {exc}"
            ) from exc
        self._channel = self.connection.channel()
        queue = topology.reply_queue(self._reply_name).bind(self._channel)
        queue.declare()
        self._consumer = Consumer(
            self._channel, queues=[queue], on_message=self._on_reply, no_ack=True
        )
        self._consumer.consume()

    def _on_reply(self, message: Message) -> None:
        cid = str((message.properties or {}).get("correlation_id") or "")
        self._replies[cid] = message

    def call(self, schema: MessageSchema, body: dict[str, Any]) -> Any:
        """Send one request; return the reply's ``result`` or raise the error it carries."""
        self._listen()
        cid = uuid.uuid4().hex
        method = str(body.get("method"))
        try:
            self.broker.publish(
                topology.RPC_EXCHANGE_NAME,
                topology.RPC_ROUTING_KEY,
                schema,
                body,
                correlation_id=cid,
                reply_to=self._reply_name,
                expiration=self.timeout,
            )
        except InfrastructureError as exc:
            # no lava.rpc exchange or queue: no coordinator ever ran on this vhost
            if "unroutable" in exc.message or "NOT_FOUND" in exc.message:
                raise self._no_answer() from None
            raise
        deadline = time.monotonic() + self.timeout
        while cid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._no_answer()
            try:
                self.connection.drain_events(timeout=min(left, 0.5))
            except TimeoutError:
                continue
        message = self._replies.pop(cid)
        try:
            reply = decode(RpcReplySchema(), message.body)
        except InvalidMessage as exc:
            raise InfrastructureError(
                f"the coordinator sent a reply we cannot read: {exc}"
            ) from None
        if reply["ok"]:
            return reply["result"]
        error = reply.get("error") or {}
        if error.get("problems"):
            raise JobValidationError(error["problems"], str(body.get("source") or method))
        raise error_from_dict(error)

    def _no_answer(self) -> InfrastructureError:
        return InfrastructureError(
            f"no coordinator answered on {topology.RPC_QUEUE_NAME} within {self.timeout:g} s; "
            "is `lavamq coordinator` running?"
        )

    # --- the methods ---

    def submit(self, definition: str, source: str, submitter: str) -> dict[str, Any]:
        """Submit a job file's text; the new job's ids, or JobValidationError with every problem."""
        body = {"method": "submit", "definition": definition, "source": source}
        body["submitter"] = submitter
        result: dict[str, Any] = self.call(SubmitRequestSchema(), body)
        return result

    def jobs(self, states: list[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs (``Store.jobs``), optionally only some states."""
        body = {"method": "jobs", "states": list(states or []), "limit": limit}
        result: list[dict[str, Any]] = self.call(JobsRequestSchema(), body)
        return result

    def job(self, job_id: int) -> dict[str, Any]:
        """One job with its sub-jobs and events (``Store.job``)."""
        result: dict[str, Any] = self.call(
            JobShowRequestSchema(), {"method": "job-show", "job_id": job_id}
        )
        return result

    def cancel(self, job_id: int, reason: str = "canceled by user") -> dict[str, Any]:
        """Cancel a job; the job as it is after the cancel."""
        result: dict[str, Any] = self.call(
            CancelRequestSchema(), {"method": "cancel", "job_id": job_id, "reason": reason}
        )
        return result

    def results(self, job_id: int) -> dict[str, Any]:
        """The job's result bundle (coordinator/aggregate.py), as it is now."""
        result: dict[str, Any] = self.call(
            ResultsRequestSchema(), {"method": "results", "job_id": job_id}
        )
        return result

    def devices(self) -> list[dict[str, Any]]:
        """Every device of the lab (``Store.devices``)."""
        result: list[dict[str, Any]] = self.call(DevicesRequestSchema(), {"method": "devices"})
        return result
