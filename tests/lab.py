"""Scaffolding of the tests that run real lab pieces: processes, host files, git repos.

``ServiceProcess`` runs a ``lavamq`` sub-command as a real process, waits for
its readiness line, and can SIGKILL, restart and stop it; ``coordinator``,
``barrier`` and ``dispatcher`` build the usual ones. ``host_config`` writes a
dispatcher host's TOML file, ``GitRepo`` a throw-away git repository,
``FakeHost`` plays a dispatcher host on ``lava.control``. ``wait_for`` polls a
condition against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import memory

import services
from broker_config import topology
from broker_config.broker import Broker
from broker_config.consumer import QueueConsumer, run_in_thread
from schemas.messages.base import decode
from schemas.messages.jobs import (
    HostHeartbeatSchema,
    HostRegisterSchema,
    SubJobAssignmentSchema,
    SubJobStateSchema,
)

ROOT = Path(__file__).resolve().parents[1]
#: the ``lavamq`` command line of this checkout (argv prefix)
LAVAMQ = [sys.executable, "-c", "from lavamq.cli import main; main()"]
IMAGES = Path(os.environ.get("LAVAMQ_TEST_IMAGES", ROOT / "images"))


def lavamq_in(tmp_path: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """``lavamq ARGS`` run in ``tmp_path``, its temporary files there too (TMPDIR)."""
    return subprocess.run(
        [*LAVAMQ, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )


# the seed job of the issue and the boards it needs
SEED = ROOT / "examples" / "seed-simple-multinode.json"
PANDAS = [
    {"name": "panda01", "device_type": "panda", "tags": ["usb-flash"]},
    {"name": "panda02", "device_type": "panda", "tags": ["usb-flash"]},
]
BEAGLE = {"name": "beagle01", "device_type": "beaglexm", "tags": ["audio-loopback"]}


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Poll ``condition`` until it is true (returned) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- transports

#: fixture params: the same test on kombu's memory transport and on the real RabbitMQ
MEMORY_AND_RABBIT = ["memory", pytest.param("rabbit", marks=pytest.mark.integration)]


def broker_url_for(request: pytest.FixtureRequest) -> str:
    """The broker URL of a fixture parametrised with ``MEMORY_AND_RABBIT``: a
    cleared ``memory://``, or the test's fresh vhost on RabbitMQ."""
    if request.param == "memory":
        memory.Transport.global_state.clear()
        memory.Channel.queues.clear()
        return "memory://"
    return str(request.getfixturevalue("rabbit_url"))


# ----------------------------------------------------------------------------- processes


class ServiceProcess:
    """A lavamq service as a real process: start, wait for its readiness line, kill, restart."""

    def __init__(
        self,
        args: Sequence[str],
        ready_line: str,
        *,
        env: dict[str, str] | None = None,
        name: str = "",
        cwd: Path = ROOT,
    ) -> None:
        self.args = [*LAVAMQ, *args]
        self.ready_line = ready_line
        self.env = {**os.environ, **(env or {})}
        self.name = name or args[0]
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.starts = 0
        self.kills = 0

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start the process and return once it printed its readiness line."""
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.starts += 1
        out = self.proc.stdout
        assert out is not None
        lines = self._lines = queue.Queue()

        def read() -> None:
            for line in out:
                self.output.append(line)
                lines.put(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        self.wait_line(self.ready_line, timeout)
        return self

    def wait_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no line containing {text!r} after {timeout:g} s; "
                    f"output:\n{''.join(self.output[-40:])}"
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None and self._lines.empty():
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before {text!r}:\n"
                        + "".join(self.output[-40:])
                    ) from None
                continue
            if text in line:
                return line

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, exactly like a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def restart(self, timeout: float = 30.0) -> None:
        self.kill()
        self.start(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._drain()
        return self.proc.returncode

    def _drain(self) -> None:
        """Wait until everything the ended process printed is in ``output``."""
        if self._reader is not None:
            self._reader.join(5)

    def text(self) -> str:
        return "".join(self.output)


def coordinator_process(
    broker_url: str, db_url: str, *extra: str, cwd: Path = ROOT
) -> ServiceProcess:
    """``lavamq coordinator`` scheduling every 0.2 s (not started)."""
    return ServiceProcess(
        ["coordinator", "--broker", broker_url, "--db", db_url, "--schedule-interval", "0.2",
         *extra],
        "lavamq coordinator ready",
        cwd=cwd,
    )  # fmt: skip


def barrier_process(broker_url: str, db_url: str, *, cwd: Path = ROOT) -> ServiceProcess:
    """``lavamq barrier`` (not started)."""
    return ServiceProcess(
        ["barrier", "--broker", broker_url, "--db", db_url], "lavamq barrier ready", cwd=cwd
    )


def dispatcher_process(
    config: Path, host: str, *, verbose: bool = False, cwd: Path = ROOT
) -> ServiceProcess:
    """``lavamq dispatcher --config`` for ``host`` (not started)."""
    args = ["-v"] if verbose else []
    return ServiceProcess(
        [*args, "dispatcher", "--config", str(config)],
        f"lavamq dispatcher {host} ready",
        name=f"dispatcher {host}",
        cwd=cwd,
    )


def stop_all(services_: Sequence[ServiceProcess], timeout: float = 60.0) -> None:
    """Stop services in the reverse order of their start."""
    for service in reversed(services_):
        service.stop(timeout)


# ----------------------------------------------------------------------------- host files


@dataclass(frozen=True)
class Device:
    """One ``[[device]]`` of a host file."""

    name: str
    device_type: str
    tags: Sequence[str] = ()
    settings: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


def host_config(
    tmp_path: Path,
    broker_url: str,
    host: str,
    devices: Sequence[Device],
    *,
    heartbeat_interval: float = 1.0,
) -> Path:
    """Write ``<tmp_path>/<host>.toml`` (work dir ``<tmp_path>/<host>``); its path."""
    lines = [
        "[host]",
        f"name = {json.dumps(host)}",
        f"broker_url = {json.dumps(broker_url)}",
        f"workdir = {json.dumps(str(tmp_path / host))}",
        f"heartbeat_interval = {heartbeat_interval}",
    ]
    for device in devices:
        lines += [
            "",
            "[[device]]",
            f"name = {json.dumps(device.name)}",
            f"device_type = {json.dumps(device.device_type)}",
        ]
        if device.tags:
            lines.append(f"tags = {json.dumps(list(device.tags))}")
        lines.append("[device.settings]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in device.settings.items()]
        if device.env:
            lines.append("[device.settings.env]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in device.env.items()]
    path = tmp_path / f"{host}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- git


class GitRepo:
    """A throw-away local git repository (created empty)."""

    ENV = {
        "GIT_AUTHOR_NAME": "lab",
        "GIT_AUTHOR_EMAIL": "lab@example.org",
        "GIT_COMMITTER_NAME": "lab",
        "GIT_COMMITTER_EMAIL": "lab@example.org",
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q")

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=self.path,
            env={**os.environ, **self.ENV},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit(self, message: str, files: Mapping[str, str] | None = None) -> str:
        """Write ``files`` (path in the repository -> text), commit everything; the revision."""
        for name, text in (files or {}).items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.git("add", ".")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


# ----------------------------------------------------------------------------- QEMU


def require_qemu(what: str, *, vde: bool = True) -> None:
    """Skip (fail under CI) unless QEMU, vde_switch (if ``vde``) and the test image exist."""
    tools = [("qemu-system-x86_64", "qemu-system-x86")]
    if vde:
        tools.append(("vde_switch", "vde2"))
    missing = [
        f"{tool} (apt-get install {package})"
        for tool, package in tools
        if shutil.which(tool) is None
    ]
    for name in ("vmlinuz", "initramfs.cpio.gz"):
        if not (IMAGES / name).is_file():
            missing.append(f"{IMAGES / name} (run `make test-image`)")
    if missing:
        services.missing_service(f"{what} setup: " + ", ".join(missing))


# ----------------------------------------------------------------------------- a fake host


class FakeHost:
    """What a dispatcher host says on ``lava.control``, and what it takes from device queues."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.broker = Broker(url)

    def register(self, devices: list[dict[str, Any]]) -> None:
        self.broker.publish(
            topology.CONTROL_EXCHANGE_NAME,
            topology.CONTROL_ROUTING_KEY,
            HostRegisterSchema(),
            {"kind": "host-register", "host": self.name, "devices": devices, "time": time.time()},
        )

    def heartbeat(self) -> None:
        self.broker.publish(
            topology.CONTROL_EXCHANGE_NAME,
            topology.CONTROL_ROUTING_KEY,
            HostHeartbeatSchema(),
            {"kind": "host-heartbeat", "host": self.name, "time": time.time()},
        )

    def report(self, subjob_id: int, state: str, **extra: Any) -> None:
        self.broker.publish(
            topology.CONTROL_EXCHANGE_NAME,
            topology.CONTROL_ROUTING_KEY,
            SubJobStateSchema(),
            {"kind": "subjob-state", "subjob_id": subjob_id, "state": state,
             "host": self.name, "time": time.time(), **extra},
        )  # fmt: skip

    def take(self, device: str, timeout: float = 20) -> dict[str, Any]:
        """The next assignment on ``lava.device.<device>`` (acked)."""
        deadline = time.monotonic() + timeout
        with Connection(self.url) as conn:
            q = topology.device_queue(device)(conn.default_channel)
            while time.monotonic() < deadline:
                msg = q.get(no_ack=False)
                if msg is not None:
                    assert msg.properties.get("type") == "subjob-assignment"
                    body = decode(SubJobAssignmentSchema(), msg.body)
                    msg.ack()
                    return body
                time.sleep(0.02)
        raise AssertionError(f"no assignment for {device} within {timeout} s")

    def queue_depth(self, device: str) -> int:
        with Connection(self.url) as conn:
            q = topology.device_queue(device)(conn.default_channel)
            _, count, _ = q.queue_declare(passive=True)
            return int(count)

    def close(self) -> None:
        self.broker.close()


def broker_ports(pid: int, broker_port: int = 5672) -> set[int]:
    """Local ports of ``pid``'s established TCP connections to the broker.

    The management API names a connection by its peer port: this is how a
    test finds exactly one process's connections among everyone's in a vhost.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if (
                    state == "01"
                    and inode in inodes
                    and int(remote.split(":")[1], 16) == broker_port
                ):
                    ports.add(int(local.split(":")[1], 16))
    return ports


def control_consumer(url: str, handler: Callable[[Any], None], name: str) -> QueueConsumer:
    """A running consumer of ``lava.control`` (what dispatchers tell the coordinator)."""
    consumer = QueueConsumer(
        url,
        [topology.control_queue()],
        {
            "subjob-state": SubJobStateSchema(),
            "host-register": HostRegisterSchema(),
            "host-heartbeat": HostHeartbeatSchema(),
        },
        handler=handler,
        prefetch=50,
        poll_interval=0.1,
    )
    run_in_thread(consumer, name)
    return consumer


@contextlib.contextmanager
def memory_coordinator(tmp_path: Path, **settings: Any) -> Iterator[Any]:
    """A ``CoordinatorService`` on a cleared ``memory://`` with a SQLite store, in a thread."""
    from coordinator.service import CoordinatorService, CoordinatorSettings

    memory.Transport.global_state.clear()
    memory.Channel.queues.clear()
    service = CoordinatorService(
        CoordinatorSettings("memory://", f"sqlite:///{tmp_path / 'lab.sqlite'}", **settings)
    )
    ready = threading.Event()
    thread = threading.Thread(target=service.run, args=(ready.set,), daemon=True)
    thread.start()
    assert ready.wait(30), "the coordinator did not start"
    try:
        yield service
    finally:
        service.stop()
        thread.join(10)
