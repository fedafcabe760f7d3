"""The real lavacli against ``lavamq server``: embedded, and in a lab on RabbitMQ + PostgreSQL.

Every lavacli command of the server's contract (docs/server.md) runs
unmodified as a subprocess against a real uvicorn on 127.0.0.1: a MultiNode
job submitted with lavacli runs to Complete, and its logs and results are
read with lavacli; a running job's log is followed live, a job is canceled,
and who may do what is LAVA's.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from lab import (
    LAVAMQ,
    ROOT,
    Device,
    ServiceProcess,
    barrier_process,
    coordinator_process,
    dispatcher_process,
    host_config,
    stop_all,
    wait_for,
)
from lavacli_lab import Lavacli, make_user, server_process, server_url

import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "seed-multinode-local.yaml"

#: a two-node job whose nodes wait for a file (the gate), then run ``then``
GATED = """\
job_name: gated {name}
visibility: public
timeouts:
  job: {{minutes: 5}}
  action: {{minutes: 4}}
protocols:
  lava-multinode:
    roles:
      server: {{device_type: local, count: 1}}
      client: {{device_type: local, count: 1}}
    timeout: {{minutes: 4}}
actions:
- boot: {{role: [server, client]}}
- test:
    definitions:
    - from: inline
      name: gate
      path: inline/gate.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: gate}}
        run:
          steps:
          - echo waiting-for-the-gate
          - while [ ! -e {gate} ]; do sleep 0.1; done
          - {then}
          - lava-test-case gate-opened --shell true
"""


@pytest.fixture(scope="module", params=["embedded", "rabbitmq"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A running server with users alice, bob and admin (tokens in the dict)."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    procs: list[ServiceProcess] = []
    cleanup: list[Any] = []
    try:
        if request.param == "embedded":
            db_url = f"sqlite:///{tmp / 'lavamq.sqlite'}"
            tokens = _users(db_url, tmp)
            procs.append(
                server_process(
                    "--embedded", "--db", db_url, "--log-dir", str(tmp / "logs"),
                    "--board", "local:4", "--board", "panda:2:usb-flash",
                    "--board", "beaglexm:1:audio-loopback", cwd=tmp,
                ).start(120)
            )  # fmt: skip
        else:
            if not services.rabbit_available():
                services.missing_service("RabbitMQ (127.0.0.1:5672 with the management plugin)")
            if not services.pg_available():
                services.missing_service("PostgreSQL (127.0.0.1:5432)")
            vhost = services.RabbitVhost()
            cleanup.append(vhost.delete)
            db_url, db_name = services.new_pg_database()
            cleanup.append(lambda: services.drop_pg_database(db_name))
            url = vhost.url()
            procs.append(coordinator_process(url, db_url, cwd=tmp).start(60))
            procs.append(barrier_process(url, db_url, cwd=tmp).start(60))
            log_dir = str(tmp / "logs")
            procs.append(
                ServiceProcess(
                    ["log-store", "--broker", url, "--dir", log_dir],
                    "lavamq log-store ready",
                    cwd=tmp,
                ).start(60)
            )
            procs.append(dispatcher_process(_host(tmp, url), "lab-a", cwd=tmp).start(60))
            tokens = _users(db_url, tmp)
            # two server processes behind one socket (--workers)
            procs.append(
                server_process(
                    "--broker",
                    url,
                    "--db",
                    db_url,
                    "--log-dir",
                    log_dir,
                    "--workers",
                    "2",
                    cwd=tmp,
                ).start(60)
            )
        base = server_url(procs[-1])
        broker = url if request.param == "rabbitmq" else None
        yield {
            "url": base,
            "tokens": tokens,
            "tmp": tmp,
            "mode": request.param,
            "procs": procs,
            "broker": broker,
        }
    finally:
        stop_all(procs)
        for undo in reversed(cleanup):
            undo()


def _users(db_url: str, cwd: Path) -> dict[str, str]:
    return {
        "alice": make_user(db_url, "alice", cwd=cwd),
        "bob": make_user(db_url, "bob", cwd=cwd),
        "admin": make_user(db_url, "admin", admin=True, cwd=cwd),
    }


def _host(tmp: Path, url: str) -> Path:
    path_env = ":".join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    boards = [
        ("panda-01", "panda", ["usb-flash"]),
        ("panda-02", "panda", ["usb-flash"]),
        ("beaglexm-01", "beaglexm", ["audio-loopback"]),
        *[(f"local-0{i}", "local", []) for i in range(1, 5)],
    ]
    devices = [
        Device(
            name,
            "local",
            tags,
            {"network": "none", **({"emulates": kind} if kind != "local" else {})},
            {"PATH": path_env},
        )
        for name, kind, tags in boards
    ]
    return host_config(tmp, url, "lab-a", devices, heartbeat_interval=2.0)


@pytest.fixture
def cli(server: dict[str, Any], tmp_path: Path) -> Lavacli:
    """lavacli with identities ``default`` (alice), ``bob``, ``admin`` and ``anon``."""
    lavacli = Lavacli(tmp_path / "config")
    for name in ("alice", "bob", "admin"):
        identity = "default" if name == "alice" else name
        lavacli.add_identity(identity, server["url"], name, server["tokens"][name])
    lavacli.add_identity("anon", server["url"], None, None)
    return lavacli


def _ids(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_readme_example_with_lavacli(cli: Lavacli, server: dict[str, Any]) -> None:
    assert cli("system", "version").stdout.strip() == "2026.07"
    assert cli("system", "whoami").stdout.strip() == "alice"
    assert cli("-i", "anon", "system", "whoami").stdout.strip() == "<AnonymousUser>"
    ids = _ids(cli("jobs", "submit", str(EXAMPLE)).stdout)
    assert len(ids) == 3 and ids[0].endswith(".0") and ids[2].endswith(".2"), ids
    job = ids[0].split(".")[0]
    assert ids == [f"{job}.{i}" for i in range(3)]
    for node in ids:
        cli("jobs", "wait", node, "--polling", "1", timeout=300)
    shown = cli("jobs", "show", ids[1]).stdout
    assert f"id          : {ids[1]}" in shown
    assert "state       : Finished" in shown and "Health      : Complete" in shown
    assert "device-type : panda" in shown and "submitter   : alice" in shown
    as_yaml = yaml.safe_load(cli("jobs", "show", ids[2], "--yaml").stdout)
    assert as_yaml["device_type"] == "beaglexm" and as_yaml["end_time"]
    assert cli("jobs", "definition", ids[0]).stdout.rstrip("\n") == EXAMPLE.read_text().rstrip("\n")
    listed = cli("jobs", "list").stdout
    name = "simple multinode job (local boards)"
    for node in ids:
        assert f"* {node}: Finished,Complete [alice] ({name})" in listed
    finished = yaml.safe_load(cli("jobs", "list", "--state", "FINISHED", "--yaml").stdout)
    assert {str(j["id"]) for j in finished} >= set(ids)
    with pytest.raises(xmlrpc.client.Fault) as bad:  # lavacli itself refuses bad states
        xmlrpc.client.ServerProxy(f"{server['url']}/RPC2").scheduler.jobs.list("WAITING")
    assert bad.value.faultCode == 400

    # logs: the whole log, then a range, as LAVA's YAML with --raw
    logs = cli("jobs", "logs", ids[0]).stdout
    assert "group-has-three-nodes" in logs and "smoke-done" in logs
    raw = yaml.safe_load(cli("jobs", "logs", ids[0], "--raw").stdout)
    assert len(raw) > 10 and {"dt", "lvl", "msg"} <= set(raw[0])
    part = yaml.safe_load(cli("jobs", "logs", ids[0], "--raw", "--start", "3", "--end", "8").stdout)
    assert part == raw[3:8]
    assert any(r["lvl"] == "results" and isinstance(r["msg"], dict) for r in raw)

    # results of a node, of one suite, of one case
    results = cli("results", ids[0]).stdout
    assert "* lava.job [pass]" in results
    suite = next(
        line.split("* ")[1].split(".")[0] for line in results.splitlines() if "linux-pwd" in line
    )
    in_suite = cli("results", ids[0], suite).stdout
    assert f"* {suite}.linux-pwd [pass]" in in_suite and "lava.job" not in in_suite
    assert cli("results", ids[0], suite, "linux-pwd").stdout.strip() == "pass"
    missing = cli("results", ids[0], "no-such-suite", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr
    anonymous = cli("-i", "anon", "results", ids[0], check=False)
    assert anonymous.returncode == 1 and "401" in anonymous.stderr

    # devices, device types, workers
    devices = cli("devices", "list").stdout
    assert "* panda-01 (panda): Idle,Good" in devices
    assert "* beaglexm-01 (beaglexm): Idle,Good" in devices
    device = cli("devices", "show", "panda-01").stdout
    assert "device-type : panda" in device and "tags        : ['usb-flash']" in device
    worker = device.split("worker      : ")[1].split()[0]
    nope = cli("devices", "show", "no-such-board", check=False)
    assert nope.returncode == 1 and "404" in nope.stderr
    types = cli("device-types", "list").stdout
    assert "* panda (2)" in types and "* local (4)" in types
    workers = cli("workers", "list").stdout
    assert f"* {worker}" in workers
    shown_worker = cli("workers", "show", worker).stdout
    assert "state       : Online" in shown_worker and "panda-01" in shown_worker


def _gated(
    cli: Lavacli, tmp: Path, name: str, identity: str = "default", *, then: str = "echo gate-passed"
) -> tuple[list[str], Path]:
    gate = tmp / f"gate-{name}"
    job = tmp / f"gated-{name}.yaml"
    job.write_text(GATED.format(name=name, gate=gate, then=then))
    ids = _ids(cli("-i", identity, "jobs", "submit", str(job)).stdout)
    assert len(ids) == 2, ids
    return ids, gate


def _state(cli: Lavacli, node: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(cli("jobs", "show", node, "--yaml").stdout)
    return data


def _wait_running(cli: Lavacli, node: str) -> None:
    """Until the node runs; fails at once, with its error, if it finished without running."""

    def running() -> bool:
        shown = _state(cli, node)
        assert shown["state"] != "Finished", f"{node} ended before running: {shown}"
        return shown["state"] == "Running"

    wait_for(running, 120, f"{node} running")


def test_follow_a_running_job_and_cancel_another(
    cli: Lavacli, server: dict[str, Any], board_shared: Path
) -> None:
    ids, gate = _gated(cli, board_shared, "follow")
    _wait_running(cli, ids[0])
    follower = cli.popen("jobs", "logs", ids[0], "--polling", "1")
    try:
        assert follower.stdout is not None
        seen: list[str] = []
        for line in follower.stdout:  # the log arrives while the job runs
            seen.append(line)
            if "waiting-for-the-gate" in line and "echo" not in line:
                break
        assert follower.poll() is None, "".join(seen)
        running = cli("jobs", "list", "--state", "RUNNING").stdout
        assert f"* {ids[0]}: Running,Unknown" in running
        gate.touch()
        rest, _ = follower.communicate(timeout=180)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0
    assert "gate-opened" in rest and "'result': 'pass'" in rest
    assert _state(cli, ids[0])["health"] == "Complete"

    # cancel: bob may not cancel alice's job, anonymous must log in, alice may. The
    # nodes wait in lava-wait, where a canceled group reaches them at once
    never = "lava-wait never-sent"
    ids, gate = _gated(cli, board_shared, "cancel", then=never)
    gate.touch()
    _wait_running(cli, ids[1])
    denied = cli("-i", "bob", "jobs", "cancel", ids[1], check=False)
    assert denied.returncode == 1 and "403" in denied.stderr
    anonymous = cli("-i", "anon", "jobs", "cancel", ids[1], check=False)
    assert anonymous.returncode == 1 and "401" in anonymous.stderr
    cli("jobs", "cancel", ids[1])
    for node in ids:
        cli("jobs", "wait", node, "--polling", "1", timeout=180)
        assert _state(cli, node)["health"] == "Canceled"
    # an admin cancels anyone's job
    ids, gate = _gated(cli, board_shared, "admin", identity="bob", then=never)
    gate.touch()
    cli("-i", "admin", "jobs", "cancel", ids[0])
    cli("jobs", "wait", ids[0], "--polling", "1", timeout=180)
    assert _state(cli, ids[0])["health"] == "Canceled"


#: a two-node job whose nodes sleep ten minutes in one shell step (no MultiNode call)
SLEEPER = """\
job_name: sleeper {name}
visibility: public
timeouts:
  job: {{minutes: 20}}
  action: {{minutes: 15}}
protocols:
  lava-multinode:
    roles:
      server: {{device_type: local, count: 1}}
      client: {{device_type: local, count: 1}}
    timeout: {{minutes: 15}}
actions:
- boot: {{role: [server, client]}}
- test:
    definitions:
    - from: inline
      name: sleeper
      path: inline/sleeper.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: sleeper}}
        run:
          steps:
          - echo "sleeping-$((6 * 100))"
          - sleep 600
          - lava-test-case after-the-sleep --shell true
"""


def _asleep(cli: Lavacli, node: str) -> bool:
    """The node's shell is in its ``sleep 600`` (the echo's output, not its command line)."""
    return "sleeping-600" in cli("jobs", "logs", node, "--no-follow").stdout


@pytest.mark.parametrize("how", ["lavacli", "other"])
def test_a_cancel_stops_nodes_busy_in_a_long_shell_step(
    cli: Lavacli, server: dict[str, Any], tmp_path: Path, how: str
) -> None:
    """Canceling a job whose nodes sleep in a shell step ends every node Canceled, each
    finalized (powered off), without waiting for the step: LAVA ends such a job at once.
    Canceled with lavacli, else with ``lavamq cancel`` (RabbitMQ) or REST (embedded: its
    broker lives in the server's process)."""
    if how == "other":
        how = "rest" if server["broker"] is None else "lavamq"
    job = tmp_path / "sleeper.yaml"
    job.write_text(SLEEPER.format(name=how))
    ids = _ids(cli("jobs", "submit", str(job)).stdout)
    assert len(ids) == 2, ids
    for node in ids:
        wait_for(functools.partial(_asleep, cli, node), 120, f"{node} in its sleep 600")
    job_id = ids[0].split(".")[0]
    if how == "lavacli":
        cli("jobs", "cancel", ids[1])
    elif how == "rest":
        answer = httpx.post(
            f"{server['url']}/api/v1/jobs/{job_id}/cancel",
            headers={"Authorization": f"Bearer {server['tokens']['alice']}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    else:
        subprocess.run(
            [*LAVAMQ, "cancel", job_id, "--broker", server["broker"]],
            check=True,
            capture_output=True,
            timeout=60,
        )
    # far less than the sleep: a node left in it would make this wait fail
    for node in ids:
        cli("jobs", "wait", node, "--polling", "1", timeout=120)
    for node in ids:
        shown = _state(cli, node)
        assert (shown["state"], shown["health"]) == ("Finished", "Canceled"), shown
        assert f"job {job_id} canceled" in shown["error_msg"], shown
        logs = cli("jobs", "logs", node, "--no-follow").stdout
        assert "powered off" in logs and "after-the-sleep" not in logs, logs[-2000:]


def test_who_may_call(cli: Lavacli, server: dict[str, Any], tmp_path: Path) -> None:
    url = server["url"]
    # a wrong token: HTTP 401 (lavacli cannot even ask for the version)
    bad = Lavacli(tmp_path / "bad")
    bad.add_identity("default", url, "alice", "not-the-token")
    out = bad("system", "version", check=False)
    assert out.returncode == 1 and "401" in out.stderr
    # anonymous may read but not submit
    anon = cli("-i", "anon", "jobs", "submit", str(EXAMPLE), check=False)
    assert anon.returncode == 1 and "401" in anon.stderr
    assert cli("-i", "anon", "devices", "list").returncode == 0
    # a job file with problems: Fault 400 naming each with its place
    broken = tmp_path / "broken.yaml"
    broken.write_text(EXAMPLE.read_text().replace("count: 2", "count: 0"))
    refused = cli("jobs", "submit", str(broken), check=False)
    assert refused.returncode == 1 and "400" in refused.stderr
    assert "count: must be at least 1" in refused.stderr, refused.stderr
    # a method lavamq does not have: LAVA's "method not found" fault, in HTTP 200
    proxy = xmlrpc.client.ServerProxy(f"{url}/RPC2", allow_none=True)
    with pytest.raises(xmlrpc.client.Fault) as fault:
        proxy.scheduler.devices.set_dictionary("panda-01", "")
    assert fault.value.faultCode == -32601
    missing = cli("jobs", "show", "999999", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr
    # the tokens never reach the server's log
    text = "".join(p.text() for p in server["procs"])
    for token in server["tokens"].values():
        assert token not in text


def test_health(server: dict[str, Any]) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{server['url']}/health", timeout=10) as resp:
        assert resp.status == 200
        assert b'"broker":"ok"' in resp.read().replace(b" ", b"")


def test_lavamq_cli_runs(server: dict[str, Any]) -> None:
    # the lavamq command line is importable with the server's commands registered
    out = subprocess.run([*LAVAMQ, "server", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--embedded" in out.stdout


def test_rest_metrics_and_the_cli_through_the_server(
    server: dict[str, Any], tmp_path: Path
) -> None:
    """``lavamq submit/jobs/logs/results --url`` with a token and no broker credentials."""
    import json
    import os
    import urllib.request

    url = server["url"]
    env = {
        **os.environ,
        "LAVAMQ_TOKEN": server["tokens"]["bob"],
        "LAVAMQ_BROKER_URL": "amqp://x@0.0.0.0:1//",
    }

    def lavamq(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [*LAVAMQ, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )
        assert not check or out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out

    done = lavamq("submit", str(EXAMPLE), "--url", url, "--wait", "--json")
    bundle = json.loads(done.stdout)
    job = bundle["job"]["id"]
    assert bundle["job"]["passed"] is True and len(bundle["nodes"]) == 3
    listed = lavamq("jobs", "--url", url, "--json").stdout
    assert job in [j["id"] for j in json.loads(listed)]
    logs = lavamq("logs", str(job), "--url", url).stdout
    assert "lava-sync smoke-done" in logs and "beaglexm-01" in logs
    junit = tmp_path / "junit.xml"
    lavamq("results", str(job), "--url", url, "--junit", str(junit))
    assert b"<testsuite" in junit.read_bytes()
    # REST: the job with its nodes, a page of a node's log
    with urllib.request.urlopen(f"{url}/api/v1/jobs/{job}", timeout=10) as resp:
        detail = json.loads(resp.read())
    assert [n["id"] for n in detail["nodes"]] == [f"{job}.0", f"{job}.1", f"{job}.2"]
    with urllib.request.urlopen(f"{url}/api/v1/jobs/{job}/logs?node=2&limit=3", timeout=10) as r:
        page = json.loads(r.read())
    assert len(page["records"]) == 3 and page["next_offset"] == 3
    # a wrong token: refused with a hint, exit 1
    env["LAVAMQ_TOKEN"] = "wrong"
    refused = lavamq("jobs", "--url", url, check=False)
    assert refused.returncode == 1 and "token" in refused.stderr
    # metrics: the store's gauges and what the live stream saw of this job
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'lavamq_jobs{state="complete"}' in text
    assert "lavamq_host_heartbeat_age_seconds{host=" in text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    # (each of --workers 2 consumes its own copy of the stream: either one has it all)
    assert float(samples["lavamq_console_bytes_total"]) > 0
    assert float(samples["lavamq_sync_release_seconds_count"]) >= 1


def test_sigterm_stops_the_server_and_its_lab_gracefully(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'lavamq.sqlite'}"
    proc = server_process(
        "--embedded", "--db", db_url, "--log-dir", str(tmp_path / "logs"), "--board", "local:1",
        cwd=tmp_path,
    ).start(120)  # fmt: skip
    import urllib.request

    with urllib.request.urlopen(f"{server_url(proc)}/health", timeout=10) as resp:
        assert resp.status == 200
    assert proc.stop(60) == 0, proc.text()[-3000:]
    text = proc.text()
    assert "Finished server process" in text and "Traceback" not in text


def test_an_unquoted_true_step_fails_clearly_and_never_hangs(
    cli: Lavacli, server: dict[str, Any], tmp_path: Path
) -> None:
    """``- true`` in run.steps is YAML's boolean, not the command: the job is refused at
    submit naming the step, or its nodes end Incomplete at once naming it (never Running)."""
    job = tmp_path / "boolean-step.yaml"
    job.write_text(GATED.format(name="boolean", gate=tmp_path / "gate-boolean", then="true"))
    submitted = cli("jobs", "submit", str(job), check=False)
    if submitted.returncode != 0:
        assert "run.steps[2]" in submitted.stderr, submitted.stderr
        return
    ids = _ids(submitted.stdout)
    assert len(ids) == 2, ids
    for node in ids:
        cli("jobs", "wait", node, "--polling", "1", timeout=180)
        shown = _state(cli, node)
        assert (shown["state"], shown["health"]) == ("Finished", "Incomplete"), shown
        assert "run.steps[2]: must be a string, got bool" in shown["error_msg"], shown
        assert shown["error_type"] == "job", shown
