"""The all-in-one lab behind ``lavamq run``: every service in threads of one process.

:class:`EmbeddedLab` runs the barrier service, the coordinator (with its
result aggregator) and one dispatcher on kombu's ``memory://`` transport with
a short polling interval, and the store in SQLite in a workspace directory.
They are the same classes a real lab runs as separate processes; only the
URLs differ. The dispatcher owns one board per sub-job of the job, made on
the fly (lavamq/boards.py): a QEMU VM for a ``qemu`` role when QEMU is
installed, else a ``local`` board, which *emulates* a device type lavamq does
not know (``panda``, ``beaglexm`` ...: it registers, is scheduled and boots
under that name, see ``settings.emulates`` in device_agent/devices/local.py).
``--device-config`` replaces the boards by a real host configuration
(schemas/device.py).

``memory://`` is global to a process: one embedded lab runs at a time, and
starting one empties the in-memory broker first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_config import topology
from broker_config.broker import Broker, is_amqp_url
from coordinator.barrier import BarrierService
from coordinator.rpc import CoordinatorClient
from coordinator.service import CoordinatorService, CoordinatorSettings
from lavamq.boards import Board, boards_for_plan, describe_boards, plan_boards
from lavamq.run_ending import end_early
from schemas.errors import InfrastructureError, JobError, LavamqError, MultinodeTimeout
from schemas.jobmodel import JobPlan

log = logging.getLogger(__name__)

MEMORY_URL = "memory://"
HOST_NAME = "embedded"


def reset_memory_broker() -> None:
    """Forget every queue, exchange and binding of the process-wide ``memory://`` broker."""
    from kombu.transport import memory

    memory.Channel.queues.clear()
    memory.Transport.global_state.clear()


def host_config_for(
    plan: JobPlan,
    workspace: Path,
    broker_url: str,
    *,
    network: str = "none",
    boards: list[Board] | None = None,
) -> dict[str, Any]:
    """The embedded dispatcher's host configuration (the shape of schemas/device.py);
    local boards unless ``boards`` (lavamq/boards.py) are given."""
    if boards is None:
        boards = plan_boards(plan, network=network)
    return {
        "host": {
            "name": HOST_NAME,
            "broker_url": broker_url,
            "workdir": str(workspace / "dispatcher"),
            "heartbeat_interval": 5.0,
        },
        "device": [b.config for b in boards],
    }


@dataclass
class _ServiceThread:
    name: str
    thread: threading.Thread
    ready: threading.Event
    errors: list[BaseException]


def _start_thread(
    name: str, run: Callable[[Callable[[], None]], None], timeout: float
) -> _ServiceThread:
    ready = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(ready.set)
        except BaseException as exc:
            errors.append(exc)
            log.exception("embedded %s died", name)
            ready.set()

    thread = threading.Thread(target=target, name=f"embedded-{name}", daemon=True)
    thread.start()
    if not ready.wait(timeout) or errors:
        cause = errors[0] if errors else f"not ready after {timeout:g} s"
        if isinstance(cause, LavamqError):
            raise cause
        raise InfrastructureError(f"embedded lab: the {name} did not start: {cause}")
    return _ServiceThread(name, thread, ready, errors)


class EmbeddedLab:
    """Barrier, coordinator and one dispatcher in threads; see the module docstring."""

    def __init__(
        self,
        workspace: str | Path,
        host_config: dict[str, Any],
        *,
        broker_url: str = MEMORY_URL,
        db_url: str | None = None,
        join_timeout: float = 60.0,
        rpc_timeout: float = 30.0,
    ) -> None:
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url
        self.db_url = db_url or f"sqlite:///{self.workspace / 'lavamq.sqlite'}"
        self.host_config = host_config
        self.host_config["host"]["broker_url"] = broker_url
        self.host_config["host"].setdefault("workdir", str(self.workspace / "dispatcher"))
        self.join_timeout = join_timeout
        self.rpc_timeout = rpc_timeout
        self.barrier: BarrierService | None = None
        self.coordinator: CoordinatorService | None = None
        self.dispatcher: Any = None
        self._threads: list[_ServiceThread] = []
        self._client: CoordinatorClient | None = None

    # --- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 60.0) -> EmbeddedLab:
        """Start the lab's services and wait until each is ready."""
        from dispatcher.daemon import Dispatcher

        if not is_amqp_url(self.broker_url):
            reset_memory_broker()
        with Broker(self.broker_url) as broker:
            broker.declare(*topology.static_exchanges(), *topology.static_queues())
            broker.declare(topology.logs_store_queue())
        self.barrier = BarrierService(self.broker_url, self.db_url)
        self.barrier.start(timeout)
        self.coordinator = CoordinatorService(
            CoordinatorSettings(
                broker_url=self.broker_url,
                db_url=self.db_url,
                join_timeout=self.join_timeout,
                heartbeat_timeout=3600.0,
                schedule_interval=0.2,
            )
        )
        coordinator = self.coordinator
        self._threads.append(
            _start_thread("coordinator", lambda ready: coordinator.run(on_ready=ready), timeout)
        )
        self.dispatcher = Dispatcher(self.host_config, broker_url=self.broker_url)
        daemon = self.dispatcher
        self._threads.append(
            _start_thread("dispatcher", lambda ready: daemon.run(on_ready=ready), timeout)
        )
        expected = {str(d["name"]) for d in self.host_config.get("device", [])}
        self._wait(
            lambda: expected <= {d["name"] for d in self.client().devices()},
            timeout,
            f"the coordinator to know the boards {sorted(expected)}",
        )
        return self

    def stop(self) -> None:
        """Stop the dispatcher (it powers its boards off), the coordinator, the barrier."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
        for service in reversed(self._threads):
            service.thread.join(60)
            if service.thread.is_alive():
                log.warning("embedded %s did not stop within 60 s", service.name)
        self._threads = []
        if self.barrier is not None:
            self.barrier.stop()
            self.barrier = None

    def __enter__(self) -> EmbeddedLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- using it -----------------------------------------------------------

    def client(self) -> CoordinatorClient:
        """The lab's coordinator client (one, made on first use)."""
        if self._client is None:
            self._client = CoordinatorClient(self.broker_url, timeout=self.rpc_timeout)
        return self._client

    def _check_alive(self) -> None:
        for service in self._threads:
            if service.errors:
                raise InfrastructureError(
                    f"embedded lab: the {service.name} died: {service.errors[0]}"
                )
            if not service.thread.is_alive():
                raise InfrastructureError(f"embedded lab: the {service.name} stopped")

    def _wait(self, cond: Callable[[], Any], timeout: float | None, what: str) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_alive()
            value = cond()
            if value:
                return value
            if deadline is not None and time.monotonic() > deadline:
                raise InfrastructureError(f"embedded lab: waited {timeout:g} s for {what}")
            time.sleep(0.1)

    def submit(self, definition: str, source: str) -> dict[str, Any]:
        """Submit a job file's text as the current user."""
        return self.client().submit(definition, source, os.environ.get("USER") or "lavamq-run")

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ended and its results are in; returns the result bundle."""
        bundle: dict[str, Any] = {}

        def done() -> bool:
            nonlocal bundle
            bundle = self.client().results(job_id)
            return bool(bundle["job"]["results_complete"])

        try:
            self._wait(done, timeout, f"job {job_id} to end")
        except InfrastructureError as exc:
            if "waited" in exc.message:
                raise MultinodeTimeout(exc.message) from None
            raise
        return bundle


@dataclass
class RunOutcome:
    """What a ``lavamq run`` ended with: job, bundle, workspace, and why it stopped early."""

    job_id: int | None
    bundle: dict[str, Any]
    workspace: Path
    kept: bool
    #: why the run ended before the job did (its --timeout, Ctrl-C, the lab failing)
    error: LavamqError | None = None
    #: ended by Ctrl-C
    interrupted: bool = False


def default_timeout(plan: JobPlan) -> float | None:
    """How long ``lavamq run`` waits for the job: its job timeout and a margin, if it has one."""
    return None if plan.timeouts.job is None else plan.timeouts.job + 120.0


def run_job(
    job_path: str | Path,
    *,
    keep: bool = False,
    device_config: str | Path | None = None,
    workspace: str | Path | None = None,
    emit: Callable[[str], None] | None = None,
    network: str = "none",
    timeout: float | None = None,
    boards: str = "auto",
    mount_namespace: str = "auto",
) -> RunOutcome:
    """Run one job file end to end in an embedded lab; returns its result bundle.

    ``emit`` receives live progress lines. ``boards`` (auto, local, qemu) picks
    the kind of board of each sub-job (lavamq/boards.py); ``network`` and
    ``mount_namespace`` are the local boards' settings. The workspace (a
    temporary directory unless given) is removed afterwards unless ``keep``.
    """
    from lavamq.progress import ProgressWatcher
    from lavamq.qemu_image import ensure_images
    from schemas.device import load_host_config
    from schemas.job import load_job_file

    path = Path(job_path).absolute()
    plan = load_job_file(path)
    text = path.read_text(encoding="utf-8")
    say = emit or (lambda line: None)
    for warning in plan.warnings:
        say(f"{path.name}: warning: {warning}")
    ensure_images(plan, say)
    ws = Path(workspace) if workspace else Path(tempfile.mkdtemp(prefix="lavamq-run-"))
    watcher: ProgressWatcher | None = None
    lab: EmbeddedLab | None = None
    job_id: int | None = None
    error: LavamqError | None = None
    interrupted = False
    bundle: dict[str, Any] = {}
    try:
        ws.mkdir(parents=True, exist_ok=True)
        if device_config is not None:
            config = load_host_config(device_config)
            config["host"]["workdir"] = str(ws / "dispatcher")
            devices = config["device"]
            header = [f"  {d['name']}  {d['device_type']}: {device_config}" for d in devices]
        else:
            chosen = plan_boards(
                plan, boards=boards, network=network, mount_namespace=mount_namespace, runtime=ws
            )
            config = host_config_for(plan, ws, MEMORY_URL, boards=chosen)
            header = describe_boards(chosen)
        lab = EmbeddedLab(ws, config)
        lab.start()
        say(f"embedded lab in {ws}, boards:")
        for line in header:
            say(line)
        watcher = ProgressWatcher(lab.broker_url, None, say).start()
        # the absolute path: relative locations in the job resolve against its directory
        receipt = lab.submit(text, str(path))
        job_id = int(receipt["job_id"])
        watcher.printer.set_job(job_id)
        say(f"job {job_id} ({receipt.get('job_name')}): {len(receipt['subjobs'])} sub-jobs")
        bundle = lab.wait(job_id, timeout if timeout is not None else default_timeout(plan))
    except (LavamqError, KeyboardInterrupt) as exc:
        if isinstance(exc, JobError) and not isinstance(exc, MultinodeTimeout):
            raise  # the job file's fault: nothing ran
        # the job did not end by itself: end it, and still give its bundle
        interrupted = isinstance(exc, KeyboardInterrupt)
        error, bundle = end_early(exc, plan, lab, job_id, say)
    finally:
        if watcher is not None:
            watcher.stop()
        if lab is not None:
            lab.stop()
        if not keep:
            shutil.rmtree(ws, ignore_errors=True)
    return RunOutcome(job_id, bundle, ws, keep, error, interrupted)


__all__ = [
    "EmbeddedLab",
    "RunOutcome",
    "boards_for_plan",
    "host_config_for",
    "reset_memory_broker",
    "run_job",
]
