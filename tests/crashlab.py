"""A small lab of real processes for the crash and ownership tests.

``lavamq coordinator``, ``lavamq barrier`` and one ``lavamq dispatcher`` per
host (local boards), each a ``faults.ServiceProcess`` that can be SIGKILLed
and restarted, in the caller's vhost, with the store in the caller's
database. The store is read directly (``Store``) to count what was recorded.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from faults import ServiceProcess, wait_for
from sqlalchemy import select

import services
from broker_config import identity, permissions
from broker_config.broker import Broker
from broker_config.declare import ManagementAPI, declare_topology
from coordinator.rpc import CoordinatorClient
from coordinator.store import FINAL_SUBJOB_STATES, Event, Result, Store, SubJob

#: host → [(device, tag)]
DEFAULT_HOSTS: dict[str, list[tuple[str, str]]] = {
    "crash-a": [("crash-a-01", "side-a")],
    "crash-b": [("crash-b-01", "side-b")],
}


ROUND_STEP = "lava-test-case case-$i --result pass; lava-sync step-$i"


def rounds_job(rounds: int, *, name: str = "crash rounds", multinode_timeout: int = 60) -> str:
    """Two nodes on two hosts: ``rounds`` times a test case then a lava-sync."""
    return f"""
job_name: {name}
timeouts:
  job: {{minutes: 3}}
  action: {{minutes: 2}}
protocols:
  lava-multinode:
    roles:
      left: {{device_type: local, count: 1, tags: [side-a]}}
      right: {{device_type: local, count: 1, tags: [side-b]}}
    timeout: {{seconds: {multinode_timeout}}}
actions:
- boot:
    role: [left, right]
- test:
    definitions:
    - from: inline
      name: crash-rounds
      path: inline/crash-rounds.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: crash-rounds}}
        run:
          steps:
          - for i in $(seq 1 {rounds}); do {ROUND_STEP}; done
"""


def host_toml(
    tmp: Path,
    host: str,
    url: str,
    devices: list[tuple[str, str]],
    heartbeat_interval: float,
    env: Mapping[str, str] | None = None,
) -> Path:
    path_env = ":".join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    lines = [
        "[host]",
        f'name = "{host}"',
        f'broker_url = "{url}"',
        f'workdir = "{tmp / host}"',
        f"heartbeat_interval = {heartbeat_interval}",
    ]
    for name, tag in devices:
        lines += [
            "",
            "[[device]]",
            f'name = "{name}"',
            'device_type = "local"',
            f"tags = {json.dumps([tag])}",
            "[device.settings]",
            'network = "none"',
            "[device.settings.env]",
            f'PATH = "{path_env}"',
            *(f"{key} = {json.dumps(value)}" for key, value in (env or {}).items()),
        ]
    path = tmp / f"{host}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(*args: str) -> None:
    from lavamq.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


@contextlib.contextmanager
def lab_users(
    rabbit_vhost: services.RabbitVhost, hosts: Mapping[str, list[tuple[str, str]]]
) -> Iterator[dict[str, Any]]:
    """Each host, the coordinator and the barrier as its own confined broker user,
    made with ``lavamq broker add-host`` / ``add-service`` (removed at the end).

    Yields ``admin`` (the vhost's admin URL), ``hosts``, ``host_urls`` (host →
    URL), ``coordinator`` and ``barrier`` (URLs) and ``password``.
    """
    admin = rabbit_vhost.url()
    with Broker(admin) as b:
        declare_topology(b)
    tag = uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    made: list[str] = []
    try:
        for host, devices in hosts.items():
            made.append(identity.host_user(host))
            _cli("broker", "add-host", host, *(a for d in devices for a in ("--device", d[0])),
                 "--password", password, "--broker", admin)  # fmt: skip
        service_urls = {}
        for service, base in (
            ("coordinator", identity.COORDINATOR_USER),
            ("barrier", identity.BARRIER_USER),
        ):
            user = f"{base}-{tag}"
            made.append(user)
            service_urls[service] = rabbit_vhost.url(user, password)
            _cli("broker", "add-service", service, "--user", user, "--password", password,
                 "--broker", admin)  # fmt: skip
        yield {
            "admin": admin,
            "hosts": dict(hosts),
            "host_urls": {h: rabbit_vhost.url(identity.host_user(h), password) for h in hosts},
            "password": password,
            **service_urls,
        }
    finally:
        api = ManagementAPI.from_broker_url(admin)
        for user in made:
            permissions.remove_user(api, user)


class CrashLab:
    """Coordinator, barrier and dispatchers as killable processes."""

    def __init__(
        self,
        tmp: Path,
        url: str,
        db_url: str,
        *,
        hosts: Mapping[str, list[tuple[str, str]]] | None = None,
        heartbeat_timeout: float = 3.0,
        heartbeat_interval: float = 0.5,
        coordinator_url: str | None = None,
        barrier_url: str | None = None,
        host_urls: Mapping[str, str] | None = None,
        device_env: Mapping[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.url = url
        self.db_url = db_url
        self.hosts = dict(hosts or DEFAULT_HOSTS)
        self.heartbeat_timeout = heartbeat_timeout
        self.coordinator = ServiceProcess(
            [
                "coordinator", "--broker", coordinator_url or url, "--db", db_url,
                "--schedule-interval", "0.2", "--heartbeat-timeout", str(heartbeat_timeout),
            ],
            "lavamq coordinator ready",
            name="coordinator",
        )  # fmt: skip
        self.barrier = ServiceProcess(
            ["barrier", "--broker", barrier_url or url, "--db", db_url],
            "lavamq barrier ready",
            name="barrier",
        )
        self.dispatchers: dict[str, ServiceProcess] = {}
        for host, devices in self.hosts.items():
            host_url = (host_urls or {}).get(host, url)
            cfg = host_toml(tmp, host, host_url, devices, heartbeat_interval, device_env)
            self.dispatchers[host] = ServiceProcess(
                ["dispatcher", "--config", str(cfg)],
                f"lavamq dispatcher {host} ready",
                name=f"dispatcher {host}",
            )
        self.store: Store | None = None

    # --- life cycle ---

    def start(self) -> CrashLab:
        # the coordinator first: it migrates the store and declares the topology
        self.coordinator.start(60)
        self.store = Store(self.db_url, run_migrations=False)
        errors: list[BaseException] = []

        def start(proc: ServiceProcess) -> None:
            try:
                proc.start(60)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=start, args=(p,), daemon=True)
            for p in (self.barrier, *self.dispatchers.values())
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        if errors:
            raise errors[0]
        names = {name for devices in self.hosts.values() for name, _ in devices}
        wait_for(
            lambda: names <= {d["name"] for d in self.devices() if d["state"] == "idle"},
            30,
            f"devices {sorted(names)} registered and idle",
        )
        return self

    def stop(self) -> None:
        for proc in (*self.dispatchers.values(), self.barrier, self.coordinator):
            proc.stop()
        if self.store is not None:
            self.store.close()

    def output(self) -> str:
        return "".join(
            f"--- {p.name}\n" + "".join(p.output[-60:])
            for p in (self.coordinator, self.barrier, *self.dispatchers.values())
        )

    # --- jobs ---

    def submit(self, definition: str, url: str | None = None) -> int:
        with CoordinatorClient(url or self.url, timeout=30) as client:
            return int(client.submit(definition, "crash-test.yaml", "crash-test")["job_id"])

    def devices(self) -> list[dict[str, Any]]:
        assert self.store is not None
        return self.store.devices()

    def job(self, job_id: int) -> dict[str, Any]:
        assert self.store is not None
        return self.store.job(job_id)

    def wait_job_end(self, job_id: int, timeout: float) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["state"] in ("complete", "incomplete", "canceled") and all(
                s["state"] in FINAL_SUBJOB_STATES for s in job["subjobs"]
            ):
                return job
            return None

        try:
            result: dict[str, Any] = wait_for(ended, timeout, f"job {job_id} to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.job(job_id)}\n{self.output()}") from None
        return result

    def wait_last_results(self, job_id: int, timeout: float) -> None:
        """Every sub-job's last result (``lava``/``job``, the runner's last) is stored."""
        subjobs = {s["id"] for s in self.job(job_id)["subjobs"]}

        def done() -> bool:
            last = {
                sid for sid, run, case in self.result_rows(job_id) if (run, case) == ("lava", "job")
            }
            return subjobs <= last

        wait_for(done, timeout, f"the last result of every sub-job of job {job_id}")

    # --- counting what the store recorded ---

    def result_rows(self, job_id: int) -> list[tuple[int, str, str]]:
        assert self.store is not None
        with self.store.session() as s:
            rows = s.execute(
                select(Result.subjob_id, Result.test_run, Result.test_case)
                .join(SubJob, Result.subjob_id == SubJob.id)
                .where(SubJob.job_id == job_id)
            ).all()
            return [(int(a), str(b), str(c)) for a, b, c in rows]

    def subjob_transitions(self, job_id: int) -> Counter[tuple[int, str]]:
        """(sub-job, state) → how many times the store recorded that transition."""
        assert self.store is not None
        with self.store.session() as s:
            rows = s.execute(
                select(Event.subjob_id, Event.state).where(
                    Event.kind == "subjob", Event.job_id == job_id
                )
            ).all()
            return Counter((int(a), str(b)) for a, b in rows if a is not None)

    def subjob_events(self, job_id: int) -> list[dict[str, Any]]:
        assert self.store is not None
        with self.store.session() as s:
            rows = s.scalars(
                select(Event)
                .where(Event.kind == "subjob", Event.job_id == job_id)
                .order_by(Event.id)
            ).all()
            return [
                {"subjob_id": e.subjob_id, "state": e.state, "time": e.time, "text": e.text}
                for e in rows
            ]

    # --- the dispatchers' job logs ---

    def job_log(self, host: str, job_id: int, node: str) -> list[dict[str, Any]]:
        logs = list((self.tmp / host / "jobs").glob(f"{job_id}.{node}.*/job.log"))
        if not logs:
            return []
        (path,) = logs
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a SIGKILL
        return out

    def sync_completions(self, host: str, job_id: int, node: str) -> int:
        return sum(
            1
            for r in self.job_log(host, job_id, node)
            if r.get("level") == "input" and "<LAVA_SYNC_COMPLETE" in str(r.get("message"))
        )

    def runner_starts(self, host: str, job_id: int, node: str) -> int:
        return sum(
            1
            for r in self.job_log(host, job_id, node)
            if r.get("level") == "event"
            and str(r.get("message", "")).startswith("sub-job ")
            and f" of job {job_id} " in str(r.get("message"))
        )
