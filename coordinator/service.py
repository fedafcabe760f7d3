"""The coordinator service: ``lavamq coordinator``.

One thread, one consumer of three queues:

* ``lava.rpc`` — CLI requests (submit, jobs, job-show, cancel, devices),
  answered on ``lava.reply`` with the request's ``correlation_id``;
* ``lava.control`` — dispatchers' ``host-register``, ``host-heartbeat`` and
  ``subjob-state``;
* ``lava.results`` — test results, stored once each by
  ``coordinator.aggregate.ResultsAggregator`` (the ``results`` RPC returns
  the job's aggregated bundle).

Between deliveries (and at least every ``schedule_interval`` seconds) it runs
a scheduling pass, fails groups whose nodes did not all join before the join
deadline, and takes silent hosts offline. For every group that starts it
calls ``create_group`` and then publishes one ``subjob-assignment`` per node
to ``lava.device`` (routing key = device). Every committed state change is
published on ``lava.events``.

Crash safety (the store is the truth, the broker side is redone):

* at start it resumes the groups it had started: a joining group's topology
  and its not yet accepted assignments are published again (the barrier and
  the dispatchers' journals take them once), and a group that failed but did
  not end is failed on the broker again;
* a redelivered ``subjob-state`` (killed before the ack) redoes the broker
  side of that state; a redelivered ``submit`` gets the job it made, not a
  second one; test results are stored once per message id;
* deadlines (heartbeats, joins) are judged only once the ``lava.control``
  backlog left while it was down (or disconnected) has been read, and after a
  lost broker connection every host then gets a full heartbeat period
  (``coordinator/deadlines.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from broker_config import topology
from broker_config.broker import Broker, is_amqp_url
from broker_config.consumer import Delivery, QueueConsumer, TransientError
from broker_config.identity import check_sender, delivery_user
from coordinator import groups
from coordinator.aggregate import ResultsAggregator
from coordinator.db import store_error_text, store_unavailable
from coordinator.deadlines import DeadlineHold
from coordinator.scheduler import (
    DEFAULT_STARVATION_SECONDS,
    SubJobRequest,
    check_fits,
    schedule,
)
from coordinator.senders import delivery_sender
from coordinator.store import GroupOutcome, StartedGroup, Store, SubmitReceipt
from coordinator.validation import SubmissionValidator
from schemas.errors import InfrastructureError, LavamqError, classify
from schemas.job import JobValidationError, load_job
from schemas.jobmodel import JobPlan
from schemas.messages.base import MessageSchema
from schemas.messages.console import TestResultSchema
from schemas.messages.jobs import (
    CONTROL_MESSAGES,
    RPC_REQUESTS,
    EventSchema,
    RpcReplySchema,
)

log = logging.getLogger(__name__)

READY_LINE = "lavamq coordinator ready"


@dataclass(frozen=True)
class CoordinatorSettings:
    """How a coordinator runs: its broker and store, and its deadlines."""

    broker_url: str
    db_url: str
    #: seconds for every node of a started group to be accepted by its dispatcher (LAVA: 90)
    join_timeout: float = 90.0
    #: seconds without a heartbeat before a host's devices go offline
    heartbeat_timeout: float = 30.0
    #: seconds between scheduling passes when nothing happens
    schedule_interval: float = 1.0
    #: seconds a group waits before it may hold back later groups (see docs/scheduler.md)
    starvation_seconds: float = DEFAULT_STARVATION_SECONDS
    #: one submission's job file is loaded in a worker, at most this long and this big
    #: (coordinator/validation.py); 0 s: in the coordinator's own thread
    validate_timeout: float = 10.0
    validate_memory_mb: int = 1024


class CoordinatorService:
    """Run with :meth:`run` (blocks); :meth:`stop` from a signal handler or another thread."""

    def __init__(
        self, settings: CoordinatorSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store: Store | None = None
        self.broker: Broker | None = None
        self.consumer: QueueConsumer | None = None
        self.aggregator: ResultsAggregator | None = None
        self.validator: SubmissionValidator | None = None
        self._dirty = True
        self._last_pass = 0.0
        self._last_checks = 0.0
        #: deadlines wait while it is away and until what was queued meanwhile is read
        self.deadlines = DeadlineHold(settings.heartbeat_timeout)

    # --- life cycle -------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Consume until stopped (blocks); resumes the groups a previous run started."""
        s = self.settings
        self.store = Store(s.db_url)
        self.broker = Broker(s.broker_url)
        if s.validate_timeout > 0:
            self.validator = SubmissionValidator(
                timeout=s.validate_timeout, memory_bytes=s.validate_memory_mb << 20
            )
            # its interpreter starts now, beside the rest of the start: the first
            # submission does not wait for it (one that cannot start is retried then)
            try:
                self.validator.start()
            except InfrastructureError as exc:
                log.warning("coordinator: %s", exc.message)
        try:
            self.broker.declare(*topology.static_exchanges(), *topology.static_queues())
            self.resume(self.clock())
            schemas: dict[str, MessageSchema] = {
                name: cls() for name, cls in {**RPC_REQUESTS, **CONTROL_MESSAGES}.items()
            }
            # test results (lava.results) are stored by the aggregator, once per message id
            self.aggregator = ResultsAggregator(self.store, clock=self.clock)
            schemas["test-result"] = TestResultSchema()
            self.consumer = QueueConsumer(
                s.broker_url,
                [topology.rpc_queue(), topology.control_queue(), topology.results_queue()],
                schemas,
                handler=self._handle,
                authorize=self._authorize,
                idle_callback=self._tick,
                on_consume=self.deadlines.consuming,
                poll_interval=min(0.25, s.schedule_interval),
                prefetch=20,
            )
            self.consumer.run(on_ready=on_ready)
        finally:
            if self.validator is not None:
                self.validator.close()
            self.broker.close()
            self.store.close()

    def stop(self) -> None:
        """Stop consuming (from a signal handler or another thread)."""
        if self.consumer is not None:
            self.consumer.stop()

    def resume(self, now: float) -> None:
        """Redo the broker side of the groups a previous run started (see the module doc)."""
        assert self.store is not None
        joining, failed = self.store.unfinished_groups()
        for outcome in failed:
            log.warning("group %s: failed before a restart; failing it again", outcome.group)
            self._apply(outcome)
        failed_groups = {o.group for o in failed}
        for group in joining:
            if group.group in failed_groups:
                continue
            pending = [s.device for s in group.subjobs if s.state == "assigned"]
            log.warning(
                "group %s (job %s) was joining: publishing again to %s",
                group.group,
                group.job_id,
                ", ".join(pending) or "nobody",
            )
            self._launch(group, now, only_assigned=True)

    # --- deliveries -------------------------------------------------------

    def _authorize(self, delivery: Delivery) -> None:
        """A host reports only for itself; RPC (submit, cancel...) is for operators."""
        host = delivery.body.get("host") if delivery.message_type in CONTROL_MESSAGES else None
        check_sender(
            delivery.message_type,
            delivery_user(delivery.properties),
            host=host,
            amqp=is_amqp_url(self.settings.broker_url),
        )

    def _handle(self, delivery: Delivery) -> None:
        try:
            self._handle_one(delivery)
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            # kept and handled again once the store answers: never dead-lettered
            what = delivery.message_type
            if "subjob_id" in delivery.body:
                what += f" of sub-job {delivery.body['subjob_id']}"
            raise TransientError(
                f"coordinator: store unavailable while handling {what}: {store_error_text(exc)}"
            ) from exc

    def _handle_one(self, delivery: Delivery) -> None:
        if delivery.message_type in RPC_REQUESTS:
            self._rpc(delivery)
        elif delivery.message_type == "host-register":
            body = delivery.body
            assert self.broker is not None and self.store is not None
            # the coordinator declares device queues so an assignment is never unroutable,
            # even before the dispatcher consumes
            for dev in body["devices"]:
                self.broker.declare(topology.device_queue(dev["name"]))
            self.store.register_host(body["host"], body["devices"], self.clock())
            self._dirty = True
        elif delivery.message_type == "host-heartbeat":
            assert self.store is not None
            if not self.store.heartbeat(delivery.body["host"], self.clock()):
                log.warning("heartbeat from unregistered host %s ignored", delivery.body["host"])
        elif delivery.message_type == "test-result":
            assert self.aggregator is not None
            sender = delivery_sender(delivery, self.settings.broker_url)
            self.aggregator.record(
                delivery.body, self.clock(), sender=sender.user, host=sender.host
            )
        elif delivery.message_type == "subjob-state":
            body = delivery.body
            assert self.store is not None
            sender = delivery_sender(delivery, self.settings.broker_url)
            if sender.host is not None:
                # whatever the body says (``host`` is optional): the sub-job's device
                # must belong to the host whose broker user sent the report
                self.store.check_subjob_owner(
                    body["subjob_id"], sender.host, "subjob-state", sender.user
                )
            outcome = self.store.subjob_state(
                body["subjob_id"],
                body["state"],
                self.clock(),
                error_type=body.get("error_type"),
                message=body.get("message"),
                replay=bool((delivery.message.delivery_info or {}).get("redelivered")),
            )
            if outcome is not None:
                self._apply(outcome)
            self._dirty = True
        self._publish_events()

    def _rpc(self, delivery: Delivery) -> None:
        method = delivery.message_type
        reply: dict[str, Any]
        try:
            if method == "submit":
                request_id = delivery.properties.get("message_id")
                result = self._rpc_submit(delivery.body, request_id=request_id)
            else:
                result = getattr(self, "_rpc_" + method.replace("-", "_"))(delivery.body)
            reply = {"ok": True, "method": method, "result": result}
        except Exception as exc:
            err = classify(exc)
            if err.error_type == "bug":
                log.exception("rpc %s failed", method)
            problems = list(getattr(exc, "problems", []) or [])
            reply = {
                "ok": False,
                "method": method,
                "error": {
                    "error_type": err.error_type,
                    "message": err.message,
                    "problems": problems,
                },
            }
        reply_to = delivery.properties.get("reply_to")
        correlation_id = delivery.properties.get("correlation_id")
        if not reply_to:
            log.warning("rpc %s without reply_to: answer dropped", method)
            return
        assert self.broker is not None
        try:
            self.broker.publish(
                topology.REPLY_EXCHANGE_NAME,
                reply_to,
                RpcReplySchema(),
                reply,
                correlation_id=correlation_id,
            )
        except InfrastructureError as exc:
            # the client gave up (its reply queue is gone); the request itself was handled
            log.warning("rpc %s: cannot reply to %s: %s", method, reply_to, exc)

    def _rpc_submit(self, body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
        assert self.store is not None
        source = body["source"]
        key = body.get("key")
        if key:
            # a retry of a submit whose answer was lost: its job, not a second one
            seen = self.store.keyed_job(body["submitter"], key, body["definition"])
            if seen is not None:
                return self._submitted(seen, self.store.job(seen.job_id)["name"], key, again=True)
        plan: JobPlan = (
            self.validator.load(body["definition"], source)
            if self.validator is not None
            else load_job(body["definition"], source)
        )
        requests = [
            SubJobRequest(i, s.device_type or "", frozenset(s.tags), s.device)
            for i, s in enumerate(plan.subjobs)
        ]
        problems = check_fits(self.store.lab_devices(), requests)
        if problems:
            raise JobValidationError(
                [f"lab: the lab cannot run this job: {p}" for p in problems], source
            )
        receipt = self.store.submit(
            plan.to_dict(),
            body["definition"],
            source,
            body["submitter"],
            self.clock(),
            request_id=str(request_id) if request_id else None,
            key=key,
        )
        self._dirty = True
        answer = self._submitted(receipt, plan.job_name, key)
        # what loading the file noticed (a duplicate key), for the submitter to see
        answer["warnings"] = list(plan.warnings)
        return answer

    def _submitted(
        self, receipt: SubmitReceipt, job_name: str, key: str | None, *, again: bool = False
    ) -> dict[str, Any]:
        """The submit RPC's answer: the job's ids (``again``: it was submitted before)."""
        assert self.store is not None
        subs = self.store.job(receipt.job_id)["subjobs"]
        return {
            "job_id": receipt.job_id,
            "group": receipt.group,
            "job_name": job_name,
            "key": key,
            "again": again,
            "subjobs": [{"id": s["id"], "role": s["role"], "index": s["index"]} for s in subs],
        }

    def _rpc_jobs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.store is not None
        return self.store.jobs(body.get("states") or (), body["limit"], key=body.get("key"))

    def _rpc_job_show(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        job = self.store.job(body["job_id"])
        job["events"] = self.store.events(job_id=body["job_id"], limit=100)
        return job

    def _rpc_cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        outcome = self.store.cancel(body["job_id"], body["reason"], self.clock())
        self._apply(outcome)
        self._dirty = True
        return self.store.job(body["job_id"])

    def _rpc_results(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.aggregator is not None
        return self.aggregator.bundle(body["job_id"], self.clock())

    def _rpc_devices(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.store is not None
        return self.store.devices()

    def _rpc_device_health(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Maintenance on or off (the lab server's admin action); the devices after it."""
        assert self.store is not None
        self.store.set_health(body["device"], body["health"], self.clock())
        self._dirty = True
        return self.store.devices()

    # --- periodic work ----------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        s = self.settings
        try:
            if now - self._last_checks >= min(1.0, s.schedule_interval):
                self._last_checks = now
                self._check_deadlines(now)
            if self._dirty or now - self._last_pass >= s.schedule_interval:
                self._dirty = False
                self._last_pass = now
                self.run_pass(now)
        except LavamqError as exc:
            log.error("coordinator pass failed: %s", exc)
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            self._dirty = True  # the next tick tries again
            log.warning("coordinator pass: store unavailable: %s", store_error_text(exc))
            return
        try:
            self._publish_events()
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            log.warning("coordinator events: store unavailable: %s", store_error_text(exc))

    def broker_link(self) -> Hashable:
        """The publishing connection now (a new one after it broke)."""
        assert self.broker is not None
        link: Hashable = self.broker.connection
        return link

    def _control_backlog(self) -> int | None:
        """Messages waiting in ``lava.control``; None when it cannot tell (the broker away)."""
        assert self.broker is not None
        try:
            ok = self.broker.channel().queue_declare(
                queue=topology.control_queue().name, passive=True
            )
            return int(getattr(ok, "message_count", 0) or 0)
        except Exception as exc:
            log.warning("cannot read the lava.control backlog (deadlines wait): %s", exc)
            self.broker._reset()
            return None

    def _check_deadlines(self, now: float) -> None:
        assert self.store is not None
        if self.deadlines.held(now, self._control_backlog, self.broker_link):
            return
        for host in self.store.silent_hosts(now, self.settings.heartbeat_timeout):
            cause = f"stopped heartbeating (no heartbeat for {self.settings.heartbeat_timeout:g} s)"
            for outcome in self.store.host_lost(host, now, cause):
                self._apply(outcome)
            self._dirty = True
        for job_id, late in self.store.expired_joins(now):
            cause = (
                f"sub-jobs not accepted by their dispatchers within the join deadline "
                f"({self.settings.join_timeout:g} s): " + ", ".join(late)
            )
            outcome = self.store.cancel(job_id, cause, now, error_type="infrastructure")
            self._apply(outcome)
            self._dirty = True

    def run_pass(self, now: float) -> list[StartedGroup]:
        """One scheduling pass: start what fits, record why the rest waits."""
        assert self.store is not None
        queue = self.store.queued_groups()
        if not queue:
            return []
        result = schedule(
            self.store.lab_devices(),
            queue,
            now,
            starvation_seconds=self.settings.starvation_seconds,
        )
        started = self.store.start_groups(result.allocations, now, self.settings.join_timeout)
        self.store.set_waiting_reasons(result.waiting_reasons)
        for group in started:
            self._launch(group, now)
        return started

    def _launch(self, group: StartedGroup, now: float, *, only_assigned: bool = False) -> None:
        assert self.broker is not None and self.store is not None
        try:
            groups.launch_group(self.broker, group, only_assigned=only_assigned)
        except LavamqError as exc:
            log.error("job %s: cannot start group %s: %s", group.job_id, group.group, exc)
            outcome = self.store.cancel(
                group.job_id,
                f"could not start the group on the broker: {exc.message}",
                now,
                error_type="infrastructure",
            )
            self._apply(outcome)

    # --- broker side of state changes ---------------------------------------

    def _apply(self, outcome: GroupOutcome) -> None:
        assert self.broker is not None
        groups.apply_outcome(self.broker, outcome)

    def _publish_events(self) -> None:
        if self.store is None or self.broker is None:
            return
        for event in self.store.drain_events():
            subject = {
                "job": event["job_id"],
                "subjob": event["subjob_id"],
                "device": event["device"],
                "host": event["host"],
            }[event["kind"]]
            try:
                key = topology.event_routing_key(event["kind"], str(subject))
                self.broker.publish(topology.EVENTS_EXCHANGE_NAME, key, EventSchema(), event)
            except LavamqError as exc:
                # nobody listening on lava.events is normal; the store keeps every event
                log.debug("event not published: %s", exc)


def run_coordinator(
    settings: CoordinatorSettings, *, on_ready: Callable[[], None] | None = None
) -> CoordinatorService:
    """Build and run a coordinator until it is stopped; returns it (for tests)."""
    service = CoordinatorService(settings)
    service.run(on_ready=on_ready)
    return service


__all__ = [
    "READY_LINE",
    "CoordinatorService",
    "CoordinatorSettings",
    "run_coordinator",
]
