"""``lavamq run --json`` prints the result bundle however the run ends: its own
``--timeout``, Ctrl-C (SIGINT), or the lab failing; each node with its state and why."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lavamq.run_ending import end_early
from schemas.errors import InfrastructureError
from schemas.job import load_job_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JOBS = Path(__file__).resolve().parents[1] / "lava_jobs"
LAVAMQ = [sys.executable, "-c", "from lavamq.cli import main; main()"]


def run(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [*LAVAMQ, "run", str(JOBS / "blocks.yaml"), "--json", *args],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_its_own_timeout_cancels_the_job_and_prints_the_bundle() -> None:
    rc, bundle, err = run("--timeout", "8")
    assert rc == 1, err[-3000:]
    assert (
        "error (canceled): lavamq run --timeout: embedded lab: waited 8 s for job 1 to end" in err
    )
    assert bundle["job"]["status"] == "canceled"
    assert len(bundle["nodes"]) == 2
    for node in bundle["nodes"]:
        assert node["state"] == "canceled", node
        assert "lavamq run --timeout" in node["message"]
        cases = {c["name"]: c["result"] for r in node["test_runs"] for c in r["cases"]}
        assert cases["before"] == "pass"  # what was received is kept


def test_ctrl_c_cancels_the_job_and_prints_the_bundle() -> None:
    proc = subprocess.Popen(
        [*LAVAMQ, "run", str(JOBS / "blocks.yaml"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        waiting = 0
        for line in proc.stderr:
            # both nodes blocked in their lava-wait
            waiting += "lava-wait never-sent" in line
            if waiting == 2:
                break
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    bundle = json.loads(out)
    assert bundle["job"]["status"] == "canceled"
    assert bundle["job"]["failure_cause"] == "lavamq run: interrupted (Ctrl-C)"
    assert [n["state"] for n in bundle["nodes"]] == ["canceled", "canceled"]
    assert all("interrupted (Ctrl-C)" in n["message"] for n in bundle["nodes"])


def test_a_lab_that_cannot_start_still_gives_a_bundle_naming_why(tmp_path: Path) -> None:
    host = tmp_path / "host.toml"
    host.write_text(
        '[host]\nname = "h"\n'
        '[[device]]\nname = "waiter-01"\ndevice_type = "nosuchtype"\n'
        '[[device]]\nname = "waiter-02"\ndevice_type = "local"\n'
    )
    rc, bundle, err = run("--device-config", str(host))
    assert rc == 1, err[-3000:]
    assert bundle["job"]["id"] is None and bundle["job"]["status"] == "incomplete"
    assert bundle["job"]["failure_type"] == "configuration"
    assert [n["state"] for n in bundle["nodes"]] == ["incomplete", "incomplete"]
    assert all("unknown device type 'nosuchtype'" in n["message"] for n in bundle["nodes"])
    assert "job (never submitted) blocks: incomplete" in err


class DeadLab:
    """An embedded lab whose dispatcher died: the coordinator still answers."""

    def __init__(self) -> None:
        self.canceled: list[tuple[int, str]] = []

    def client(self) -> DeadLab:
        return self

    def cancel(self, job_id: int, reason: str) -> None:
        self.canceled.append((job_id, reason))

    def wait(self, job_id: int, timeout: float) -> dict[str, Any]:
        raise InfrastructureError("embedded lab: the dispatcher died: boom")

    def results(self, job_id: int) -> dict[str, Any]:
        return {
            "job": {"id": job_id, "status": "running"},
            "nodes": [
                {"node": "waiter-01", "state": "running", "error_type": None, "message": None},
                {"node": "waiter-02", "state": "complete", "error_type": None, "message": None},
            ],
        }


def test_the_lab_failing_mid_job_names_the_failure_on_every_unfinished_node() -> None:
    lab = DeadLab()
    said: list[str] = []
    failure = InfrastructureError("embedded lab: the dispatcher died: boom")
    plan = load_job_file(JOBS / "blocks.yaml")
    error, bundle = end_early(failure, plan, lab, 7, said.append)
    assert error is failure and lab.canceled == [(7, failure.message)]
    running, done = bundle["nodes"]
    assert (running["error_type"], running["message"]) == ("infrastructure", failure.message)
    assert done["message"] is None  # a node that ended keeps its own outcome
    # no coordinator at all: the plan's nodes, each naming the failure
    error, bundle = end_early(failure, plan, None, None, said.append)
    assert [n["message"] for n in bundle["nodes"]] == [failure.message] * 2
