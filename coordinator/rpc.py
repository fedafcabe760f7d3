"""Client side of the coordinator's RPC (``lava.rpc``), used by the CLI.

Each call is one request on ``lava.rpc`` through ``broker_config.rpc.RpcClient``
(reply queue, correlation id, a TTL equal to the timeout); the reply is an
``rpc-reply`` whose error is rebuilt as the kind the coordinator sent.
"""

from __future__ import annotations

from typing import Any

from broker_config import topology
from broker_config.errors import ConnectionLost
from broker_config.rpc import NobodyListens, NoReply, NotConnected, RpcClient
from schemas.errors import InfrastructureError, InvalidMessage, error_from_dict
from schemas.job import JobValidationError
from schemas.messages.base import MessageSchema, decode
from schemas.messages.jobs import (
    CancelRequestSchema,
    DeviceHealthRequestSchema,
    DevicesRequestSchema,
    JobShowRequestSchema,
    JobsRequestSchema,
    ResultsRequestSchema,
    RpcReplySchema,
    SubmitRequestSchema,
)

DEFAULT_TIMEOUT = 10.0


class NoAnswer(InfrastructureError):
    """No reply from the coordinator within the timeout (it may still act on the request)."""


def outcome_unknown(why: str, key: str | None) -> InfrastructureError:
    """The error of a submit that got no answer: the job may exist; how to find out."""
    if not key:
        return InfrastructureError(
            f"outcome unknown: {why}; the job may or may not have been created "
            "(`lavamq jobs` lists the newest)"
        )
    return InfrastructureError(
        f"outcome unknown: {why}; the job may or may not have been created: "
        f"`lavamq jobs --key {key}` tells, and `lavamq submit --key {key} FILE` again "
        "never makes a second job"
    )


class CoordinatorClient:
    """Calls the coordinator over the broker. Use as a context manager or call ``close()``."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.rpc = RpcClient(
            url, topology.RPC_EXCHANGE_NAME, topology.RPC_ROUTING_KEY, timeout=timeout
        )

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the RPC connection and its reply queue."""
        self.rpc.close()

    def call(self, schema: MessageSchema, body: dict[str, Any]) -> Any:
        """Send one request; return the reply's ``result`` or raise the error it carries."""
        method = str(body.get("method"))
        try:
            message = self.rpc.request(schema, body)
        except NobodyListens:
            # unroutable: delivered to nobody, so nothing happened
            raise InfrastructureError(str(self._no_answer())) from None
        except NoReply:
            raise self._no_answer() from None
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
        return NoAnswer(
            f"no coordinator answered on {topology.RPC_QUEUE_NAME} within {self.timeout:g} s; "
            "is `lavamq coordinator` running?"
        )

    # --- the methods ---

    def submit(
        self, definition: str, source: str, submitter: str, key: str | None = None
    ) -> dict[str, Any]:
        """Submit a job file's text; the new job's ids, or JobValidationError with every problem.

        ``key``: the submission's idempotency key; the submitter's job with that key if
        there is one (a retry), never a second job. When no answer comes (a timeout, a
        lost connection), the job may or may not exist: the error says so and how to
        find out (``outcome_unknown``), never that the submit failed.
        """
        body = {"method": "submit", "definition": definition, "source": source}
        body["submitter"] = submitter
        if key:
            body["key"] = key
        try:
            result: dict[str, Any] = self.call(SubmitRequestSchema(), body)
        except NotConnected:
            raise  # nothing was sent
        except (NoAnswer, ConnectionLost) as exc:
            raise outcome_unknown(str(exc), key) from None
        return result

    def jobs(
        self, states: list[str] | None = None, limit: int = 50, key: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest jobs (``Store.jobs``), optionally only some states, or one key's."""
        body: dict[str, Any] = {"method": "jobs", "states": list(states or []), "limit": limit}
        if key:
            body["key"] = key
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

    def device_health(self, device: str, health: str) -> list[dict[str, Any]]:
        """Put ``device`` in maintenance (``health="maintenance"``) or take it out (``good``)."""
        body = {"method": "device-health", "device": device, "health": health}
        result: list[dict[str, Any]] = self.call(DeviceHealthRequestSchema(), body)
        return result

    def devices(self) -> list[dict[str, Any]]:
        """Every device of the lab (``Store.devices``)."""
        result: list[dict[str, Any]] = self.call(DevicesRequestSchema(), {"method": "devices"})
        return result
