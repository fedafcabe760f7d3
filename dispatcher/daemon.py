"""The per-host daemon: ``lavamq dispatcher --config HOST.toml``.

Threads (one kombu connection each, never shared):

- the **consumer** (the caller of :meth:`Dispatcher.run`): one queue per
  device (``lava.device.<device>``, prefetch 1). For each assignment it
  records the sub-job in the :class:`~dispatcher.journal.Journal` (fsync'd),
  hands it to the device's worker and returns — the message is acked then,
  not when the sub-job ends (RabbitMQ's delivery-acknowledgement timeout
  would requeue a long job). An id already in the journal is not run again.
  ``QueueConsumer`` reconnects and re-declares after a broker restart.
- the **control publisher**: ``host-register`` at start and again after its
  broker connection was re-established (a coordinator that lost its state or
  took the host offline meanwhile sees its devices again), ``host-heartbeat``
  every ``heartbeat_interval`` and every ``subjob-state`` on ``lava.control``.
- one **worker per device**: runs that device's sub-jobs one after the other
  (:class:`~dispatcher.runner.SubJobRunner`; each sub-job has its own
  publisher thread and console reader).

SIGTERM (:meth:`Dispatcher.stop`): stop consuming, cancel running sub-jobs
(they finalize: power off), power off every device, exit.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from broker_config import identity, topology
from broker_config.broker import Broker, is_amqp_url
from broker_config.consumer import Delivery, QueueConsumer
from dispatcher import claim
from dispatcher.assignment import Assignment, load_assignment
from dispatcher.journal import FINAL, Journal
from dispatcher.runner import SubJobRunner
from schemas.errors import InfrastructureError, LavamqError
from schemas.messages.base import MessageSchema
from schemas.messages.jobs import (
    HostHeartbeatSchema,
    HostRegisterSchema,
    SubJobAssignmentSchema,
    SubJobStateSchema,
)

log = logging.getLogger(__name__)

_STOP = object()


class ControlPublisher:
    """Publishes on ``lava.control`` from its own thread; heartbeats on a timer."""

    def __init__(
        self,
        broker_url: str,
        host: str,
        interval: float,
        *,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.host = host
        self.interval = interval
        #: called (on this publisher's thread) after a publish on a re-established connection
        self.on_reconnect = on_reconnect
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"control-{host}", daemon=True)
        self.sent = 0
        self.reconnects = 0

    def start(self) -> None:
        """Start publishing (in a thread of its own)."""
        self._thread.start()

    def put(
        self,
        schema: MessageSchema,
        body: dict[str, Any],
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Publish ``body``; ``on_sent`` (on this publisher's thread) once it is confirmed."""
        self._queue.put((schema, body, on_sent))

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        broker = Broker(self.broker_url, max_retries=1_000_000)
        # idempotent: where this host's user may configure them, make sure the
        # queues it publishes towards exist (control, results, the log store)
        for q in (topology.control_queue(), topology.results_queue(), topology.logs_store_queue()):
            try:
                broker.declare(q)
            except LavamqError as exc:
                log.warning("cannot declare %s (%s); relying on `lavamq broker setup`", q.name, exc)
        next_beat = time.monotonic() + self.interval
        # the Broker opens a new connection object whenever it reconnects
        connection: Any = None
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    return
                if item is None:
                    next_beat = time.monotonic() + self.interval
                    item = (
                        HostHeartbeatSchema(),
                        {"kind": "host-heartbeat", "host": self.host, "time": time.time()},
                        None,
                    )
                schema, body, on_sent = item
                try:
                    broker.publish(
                        topology.CONTROL_EXCHANGE_NAME, topology.CONTROL_ROUTING_KEY, schema, body
                    )
                    self.sent += 1
                except LavamqError as exc:
                    log.error("control message %s not published: %s", body.get("kind"), exc)
                    continue
                if on_sent is not None:
                    try:
                        on_sent()
                    except Exception:
                        log.exception("control message %s: on_sent failed", body.get("kind"))
                if connection is not None and broker.connection is not connection:
                    self.reconnects += 1
                    log.warning(
                        "control connection re-established: registering %s again", self.host
                    )
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                connection = broker.connection
        finally:
            broker.close()


class DeviceWorker:
    """Runs one device's sub-jobs in order, on its own thread."""

    def __init__(self, dispatcher: Dispatcher, device: Any) -> None:
        self.dispatcher = dispatcher
        self.device = device
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.current: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"device-{device.name}", daemon=True)

    def start(self) -> None:
        """Start taking the device's sub-jobs (in a thread of its own)."""
        self._thread.start()

    def submit(self, assignment: dict[str, Any]) -> None:
        """Queue a sub-job for this device."""
        self.jobs.put(assignment)

    def close(self, timeout: float) -> None:
        """Stop after the sub-job in hand."""
        self.jobs.put(_STOP)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self.jobs.get()
            if item is _STOP:
                return
            if self.dispatcher.stopping.is_set():
                self.dispatcher.report(
                    item, "canceled", "infrastructure", "the dispatcher stopped before it ran"
                )
                continue
            self.current = int(item["subjob_id"])
            try:
                self.dispatcher.run_subjob(self.device, item)
            except Exception:
                log.exception(
                    "sub-job %s on %s: runner failed", item["subjob_id"], self.device.name
                )
                self.dispatcher.report(
                    item, "incomplete", "bug", "the sub-job runner failed; see the host's log"
                )
            finally:
                self.current = None


class Dispatcher:
    """The per-host daemon: owns the host's devices and runs each sub-job handed to one of them."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        broker_url: str | None = None,
        workdir: str | Path | None = None,
        heartbeat_interval: float | None = None,
        multinode: bool = True,
    ) -> None:
        from device_agent.devices import create_device

        host = config["host"]
        self.host: str = host["name"]
        self.broker_url: str = broker_url or host["broker_url"]
        self.workdir = Path(workdir or host["workdir"])
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_interval = float(heartbeat_interval or host.get("heartbeat_interval", 10.0))
        self.use_multinode = multinode
        self.journal = Journal(self.workdir / "journal.sqlite")
        self.devices = {
            d["name"]: create_device(d, self.workdir / "devices" / d["name"])
            for d in config.get("device", [])
        }
        self.stopping = threading.Event()
        #: held while :meth:`run` runs (the process's claim on its workdir)
        self.workdir_lock: TextIO | None = None
        self.control = ControlPublisher(
            self.broker_url, self.host, self.heartbeat_interval, on_reconnect=self.register
        )
        self.workers = {name: DeviceWorker(self, dev) for name, dev in self.devices.items()}
        self.consumer = QueueConsumer(
            self.broker_url,
            [topology.device_queue(name) for name in self.devices],
            SubJobAssignmentSchema(),
            handler=self._on_assignment,
            authorize=self._authorize,
            prefetch=1,
            poll_interval=0.2,
            # a confined host user (lavamq broker add-host) may not declare:
            # its device queues were declared for it
            declare=not identity.is_host_url(self.broker_url),
        )

    # --- state reporting ---------------------------------------------------
    def report(
        self,
        assignment: dict[str, Any],
        state: str,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        """Record a sub-job's state in the journal and report it to the coordinator."""
        subjob_id = int(assignment["subjob_id"])
        self.journal.set_state(subjob_id, state, error_type=error_type, message=message)
        log.info("sub-job %s: %s%s", subjob_id, state, f" ({message})" if message else "")
        self._publish_state(assignment, state, error_type, message)

    def _publish_state(
        self,
        assignment: dict[str, Any],
        state: str,
        error_type: str | None,
        message: str | None,
    ) -> None:
        """Put the ``subjob-state`` on lava.control; a final state is marked published in
        the journal once the broker confirmed it (:meth:`recover` publishes the others)."""
        subjob_id = int(assignment["subjob_id"])
        on_sent = None
        if state in FINAL:

            def on_sent() -> None:
                self.journal.mark_published(subjob_id, state)

        self.control.put(
            SubJobStateSchema(),
            {
                "kind": "subjob-state",
                "subjob_id": subjob_id,
                "job_id": int(assignment["job_id"]),
                "host": self.host,
                "state": state,
                "error_type": error_type,
                "message": message,
                "time": time.time(),
            },
            on_sent,
        )

    # --- consuming -----------------------------------------------------------
    def _authorize(self, delivery: Delivery) -> None:
        """Only the coordinator (or an operator) hands out sub-jobs."""
        identity.check_sender(
            delivery.message_type,
            identity.delivery_user(delivery.properties),
            amqp=is_amqp_url(self.broker_url),
        )

    def _on_assignment(self, delivery: Delivery) -> None:
        a = delivery.body
        device = a["device"]
        subjob_id = int(a["subjob_id"])
        if device not in self.workers:
            # routed here by mistake: the broker must not redeliver it forever
            raise InfrastructureError(f"host {self.host} has no device {device!r}")
        if not self.journal.accept(a):
            previous = self.journal.get(subjob_id) or {}
            log.warning(
                "sub-job %s was already accepted (state %s): not running it again",
                subjob_id,
                previous.get("state"),
            )
            if previous.get("state") in FINAL:
                self.report(
                    a, previous["state"], previous.get("error_type"), previous.get("message")
                )
            return
        if self.stopping.is_set():
            self.report(a, "canceled", "infrastructure", f"dispatcher {self.host} is stopping")
            return
        if a.get("join_deadline") and time.time() > float(a["join_deadline"]):
            self.report(
                a, "canceled", "infrastructure", "the assignment arrived after the join deadline"
            )
            return
        self.report(a, "accepted")
        self.workers[device].submit(a)

    def run_subjob(self, device: Any, a: dict[str, Any]) -> None:
        """Run one accepted sub-job on ``device`` and report how it ended."""
        workdir = self.workdir / "jobs" / f"{a['job_id']}.{a['node']}.{a['subjob_id']}"
        factory: Callable[[Assignment], Any] | None = None
        if self.use_multinode:
            factory = self._multinode_client
        runner = SubJobRunner(
            load_assignment(a),
            device,
            workdir=workdir,
            report_state=lambda state, et, msg: self.report(a, state, et, msg),
            broker_url=self.broker_url,
            multinode_factory=factory,
            cancelled=self.stopping.is_set,
        )
        runner.run()

    def _multinode_client(self, a: Assignment) -> Any:
        from device_agent.multinode import MultinodeClient

        assert a.group is not None
        return MultinodeClient(
            self.broker_url,
            a.group,
            a.node,
            dict(a.members),
            timeout=a.timeouts.multinode,
            # the coordinator names each node's host user: no host speaks for another's node
            owners=dict(a.owners) or None,
        )

    # --- life cycle ----------------------------------------------------------
    def recover(self) -> None:
        """Publish the final states a previous run of this dispatcher could not get out
        (the broker was away when it stopped or was killed), then report sub-jobs it left
        unfinished as ``incomplete``; never rerun them."""
        for entry in self.journal.unpublished():
            log.warning(
                "sub-job %s: publishing its final state %s again (not confirmed before)",
                entry["subjob_id"],
                entry["state"],
            )
            self._publish_state(
                entry["assignment"], entry["state"], entry["error_type"], entry["message"]
            )
        for entry in self.journal.unfinished():
            a = entry["assignment"]
            self.report(
                a,
                "incomplete",
                "infrastructure",
                f"dispatcher {self.host} restarted while sub-job {entry['subjob_id']} was "
                f"{entry['state']}; it is not run again",
            )

    def register(self) -> None:
        """Tell the coordinator this host and its complete device list."""
        self.control.put(
            HostRegisterSchema(),
            {
                "kind": "host-register",
                "host": self.host,
                "devices": [
                    {"name": d.name, "device_type": d.device_type, "tags": list(d.tags)}
                    for d in self.devices.values()
                ],
                "time": time.time(),
            },
        )

    def reap_leftovers(self) -> list[int]:
        """Kill what a dispatcher that died (SIGKILL) left running: local boards' shells
        (their ``board.pid``) and, if this host has QEMU devices, their VMs (each one's
        ``-pidfile`` in its runtime directory). Returns the pids killed."""
        from device_agent.devices.qemu import QemuDevice, reap_leftover_vms

        killed: list[int] = []
        vms: dict[Path, set[str]] = {}
        for device in self.devices.values():
            if isinstance(device, QemuDevice):
                vms.setdefault(Path(device.runtime_dir), set()).add(device.name)
            reap = getattr(device, "reap_leftover", None)
            if reap is not None:
                try:
                    killed += reap()
                except Exception as exc:
                    log.warning("device %s: reaping leftovers failed: %s", device.name, exc)
        for runtime_dir, names in sorted(vms.items()):
            killed += reap_leftover_vms(runtime_dir, names)
        return killed

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`stop`; ``on_ready`` once the device queues are consumed."""
        # before touching a device: the workdir and the devices are this process's
        # alone (several dispatchers on one machine, dispatcher/claim.py)
        self.workdir_lock = claim.lock_workdir(self.workdir, self.host)
        try:
            if is_amqp_url(self.broker_url):
                with Broker(self.broker_url) as broker:
                    claim.check_devices_unserved(broker, self.host, self.devices)
            self._serve(on_ready)
        finally:
            self.workdir_lock.close()

    def _serve(self, on_ready: Callable[[], None] | None) -> None:
        self.reap_leftovers()
        for device in self.devices.values():
            with contextlib.suppress(Exception):
                device.power_off()
        self.control.start()
        self.recover()
        self.register()
        for worker in self.workers.values():
            worker.start()
        try:
            self.consumer.run(on_ready=on_ready)
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self.stopping.set()
        self.consumer.stop()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking work, wait for the sub-jobs in hand by ``timeout``, shut the devices."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.close(max(0.1, deadline - time.monotonic()))
        # a sub-job in an action that does not look at the cancel (a long
        # command) may outlive the wait: it still finalizes and records its
        # state, so its journal stays open (the next start publishes it)
        busy = sorted(name for name, worker in self.workers.items() if worker.alive)
        if busy:
            log.warning(
                "dispatcher %s: sub-jobs still running on %s after %g s; their final "
                "state is journalled when they end and published by the next start",
                self.host, ", ".join(busy), timeout,
            )  # fmt: skip
        for device in self.devices.values():
            try:
                device.shutdown()
            except Exception:
                log.exception("device %s: shutdown failed", device.name)
        # with their boards shut down, busy sub-jobs fail fast: let them finalize
        for name in busy:
            self.workers[name].close(10.0)
        if any(self.workers[name].alive for name in busy):
            log.warning("dispatcher %s: a sub-job did not end; its journal stays open", self.host)
        else:
            self.control.close()
            self.journal.close()
            return
        self.control.close()
