"""The sub-job runner end to end on a real ``local`` board (no broker: results go to the log)."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from lab import wait_for

from device_agent.devices import create_device
from dispatcher.joblog import read_records
from dispatcher.runner import SubJobRunner

TESTDEF = {
    "metadata": {"name": "smoke", "format": "Lava-Test Test Definition 1.0"},
    "params": {"GREETING": "hello"},
    "run": {
        "steps": [
            'echo "greeting=$GREETING"',
            "lava-test-case always-pass --result pass",
            "lava-test-case shell-true --shell true",
            "lava-test-case speed --result pass --measurement 12.5 --units MB/s",
            "echo 'RESULT: parsed-case FAILED'",
        ]
    },
    "parse": {
        "pattern": r"RESULT: (?P<test_case_id>[\w-]+) (?P<result>\w+)",
        "fixupdict": {"FAILED": "fail", "PASSED": "pass"},
    },
}


def image(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "rootfs.img.gz"
    src.write_bytes(gzip.compress(b"a tiny root filesystem\n" * 100))
    return src.as_uri(), hashlib.sha256(src.read_bytes()).hexdigest()


def assignment(url: str, sha: str, *, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "job_id": 7,
        "subjob_id": 70,
        "group": "g7",
        "job_name": "runner-test",
        "node": "board1",
        "role": "server",
        "device": "board1",
        "device_type": "local",
        "members": {"board1": "server"},
        "timeouts": {"job": 120.0, "action": 60.0, "multinode": 30.0, "connection": None},
        "join_deadline": 0,
        "plan": {
            "actions": [
                {
                    "kind": "deploy",
                    "name": "deploy",
                    "timeout": 30.0,
                    "parameters": {
                        "images": {"rootfs": {"url": url, "compression": "gz", "sha256sum": sha}}
                    },
                },
                {"kind": "boot", "name": "boot", "timeout": 30.0, "parameters": {}},
                {
                    "kind": "test",
                    "name": "test",
                    "timeout": 60.0,
                    "parameters": {
                        "definitions": [
                            {
                                "from": "inline",
                                "repository": TESTDEF,
                                "name": "smoke",
                                "path": None,
                                "revision": None,
                                "parameters": params or {"GREETING": "bonjour"},
                            }
                        ]
                    },
                },
            ]
        },
    }


def board(tmp_path: Path) -> Any:
    return create_device(
        {"name": "board1", "device_type": "local", "settings": {"network": "none"}},
        tmp_path / "board1",
    )


def processes_in(root: Path) -> list[int]:
    """Processes whose working directory is inside ``root`` (the board's "root filesystem")."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(str(root) + "/"):
            found.append(int(entry.name))
    return found


def test_deploy_boot_test_finalize_on_a_local_board(tmp_path: Path) -> None:
    url, sha = image(tmp_path)
    states: list[tuple[str, Any, Any]] = []
    dev = board(tmp_path)
    runner = SubJobRunner(
        assignment(url, sha),
        dev,
        workdir=tmp_path / "job",
        report_state=lambda *s: states.append(s),
    )
    outcome = runner.run()
    records = list(read_records(outcome.log_path))
    text = "\n".join(f"{r['level']} {r['message']}" for r in records)
    assert outcome.state == "complete", text
    assert states == [("running", None, None), ("complete", None, None)]
    results = [r["message"] for r in records if r["level"] == "results"]
    assert "0_smoke/always-pass: pass" in results
    assert "0_smoke/shell-true: pass" in results
    assert "0_smoke/speed: pass 12.5 MB/s" in results
    assert "0_smoke/parsed-case: fail" in results
    assert "lava/0_smoke: pass" in results
    assert "lava/job: pass" in results
    # console output is in the log as target records; the job parameter won
    targets = [r["message"] for r in records if r["level"] == "target"]
    assert any(m.strip() == "greeting=bonjour" for m in targets)
    messages = [r["message"] for r in records]
    for name in ("deploy-image", "boot-local", "lava-test-shell", "finalize"):
        assert any(m.startswith("start: ") and name in m for m in messages), name
        assert any(m.startswith("end: ") and name in m for m in messages), name
    assert (tmp_path / "job" / "images" / "rootfs").read_bytes().startswith(b"a tiny root")
    assert not dev.powered
    assert processes_in((tmp_path / "board1").resolve()) == []


def test_wrong_checksum_fails_with_expected_and_actual_and_still_finalizes(
    tmp_path: Path,
) -> None:
    url, sha = image(tmp_path)
    wrong = "f" * 64
    states: list[tuple[str, Any, Any]] = []
    outcome = SubJobRunner(
        assignment(url, wrong),
        board(tmp_path),
        workdir=tmp_path / "job",
        report_state=lambda *s: states.append(s),
    ).run()
    assert outcome.state == "incomplete"
    assert states[-1][0] == "incomplete" and states[-1][1] == "job"
    assert f"expected {wrong}" in states[-1][2] and f"actual {sha}" in states[-1][2]
    messages = [r["message"] for r in read_records(outcome.log_path)]
    assert any(m.startswith("start: 4 finalize") for m in messages)
    assert not any("boot-local" in m and m.startswith("start:") for m in messages)


def test_invalid_plan_runs_nothing_but_finalize(tmp_path: Path) -> None:
    a = assignment("ftp://nowhere/x", "nothex")
    a["plan"]["actions"][2]["parameters"]["definitions"][0]["from"] = "svn"
    states: list[tuple[str, Any, Any]] = []
    outcome = SubJobRunner(
        a, board(tmp_path), workdir=tmp_path / "job", report_state=lambda *s: states.append(s)
    ).run()
    assert outcome.state == "incomplete"
    message = states[-1][2]
    assert "3 problem(s)" in message
    assert "unsupported scheme 'ftp'" in message and "must be git, inline or url" in message


@pytest.mark.parametrize("exit_step", ["kill -9 $$"])
def test_test_shell_dying_early_is_a_clear_job_error(tmp_path: Path, exit_step: str) -> None:
    url, sha = image(tmp_path)
    a = assignment(url, sha)
    definition = a["plan"]["actions"][2]["parameters"]["definitions"][0]
    definition["repository"] = {"metadata": {"name": "dies"}, "run": {"steps": [exit_step]}}
    states: list[tuple[str, Any, Any]] = []
    outcome = SubJobRunner(
        a, board(tmp_path), workdir=tmp_path / "job", report_state=lambda *s: states.append(s)
    ).run()
    assert outcome.state == "incomplete"
    assert states[-1][1] == "job"
    assert "did not finish" in states[-1][2] or "before <LAVA_TEST_RUNNER EXIT>" in states[-1][2]


def test_a_device_that_boots_with_the_overlay_gets_it_built_before_boot(tmp_path: Path) -> None:
    from device_agent.devices.local import LocalDevice

    seen: list[tuple[str, Path, bool]] = []

    class BootsWithOverlay(LocalDevice):
        """A local board standing in for QEMU: it takes the overlay at boot (set_overlay)."""

        def set_overlay(self, overlay_dir: Path) -> None:
            seen.append(("set_overlay", overlay_dir, self.powered))
            # the whole overlay is there before power on: helpers, runner, the run scripts
            assert (overlay_dir / "bin" / "lava-test-runner").is_file()
            assert (overlay_dir / "tests" / "0_smoke" / "run.sh").is_file()

        def install_overlay(
            self, overlay_dir: Path, timeout: float, target: str = "", *, job_id: str = ""
        ) -> str:
            seen.append(("install_overlay", overlay_dir, self.powered))
            return super().install_overlay(overlay_dir, timeout, target, job_id=job_id)

    url, sha = image(tmp_path)
    dev = BootsWithOverlay(
        {"name": "board1", "device_type": "local", "settings": {"network": "none"}},
        tmp_path / "board1",
    )
    outcome = SubJobRunner(assignment(url, sha), dev, workdir=tmp_path / "job").run()
    records = list(read_records(outcome.log_path))
    assert outcome.state == "complete", [r["message"] for r in records]
    overlay = tmp_path / "job" / "overlay"
    # built once, before power on; the test action then used that very overlay
    assert seen == [("set_overlay", overlay, False), ("install_overlay", overlay, True)]
    assert "0_smoke/always-pass: pass" in [r["message"] for r in records]


def test_a_canceled_group_stops_a_node_busy_in_a_long_shell_step(tmp_path: Path) -> None:
    """The job's cancel reaches the node through its group (memory://) while its shell
    sleeps: the step is cut short, the board powered off, the sub-job ends canceled."""
    from kombu.transport import memory

    from broker_config.broker import Broker
    from broker_config.declare import declare_topology
    from coordinator.groups import create_group, fail_group
    from device_agent.multinode import MultinodeClient

    memory.Transport.global_state.clear()
    memory.Channel.queues.clear()
    url, sha = image(tmp_path)
    a = assignment(url, sha)
    # in the board's own directory: the board does not see the host's /tmp
    started = tmp_path / "board1" / "sleeping"
    definition = a["plan"]["actions"][2]["parameters"]["definitions"][0]
    definition["repository"] = {
        "metadata": {"name": "sleeper"},
        "run": {"steps": [f"touch {started}", "sleep 600", "lava-test-case after --shell true"]},
    }
    broker = Broker("memory://")
    declare_topology(broker)
    create_group(broker, a["group"], a["members"], timeout=30)

    def cancel_once_asleep() -> None:
        wait_for(started.exists, 60, "the shell in its sleep")
        fail_group(broker, a["group"], "job 7 canceled: canceled by alice", cause="canceled")

    canceler = threading.Thread(target=cancel_once_asleep, daemon=True)
    canceler.start()
    states: list[tuple[str, Any, Any]] = []
    dev = board(tmp_path)
    outcome = SubJobRunner(
        a,
        dev,
        workdir=tmp_path / "job",
        report_state=lambda *s: states.append(s),
        broker_url="memory://",
        multinode_factory=lambda asg: MultinodeClient(
            "memory://", asg.group or "", asg.node, dict(asg.members), timeout=30
        ),
    ).run()
    canceler.join(5)
    broker.close()
    messages = [r["message"] for r in read_records(outcome.log_path)]
    assert outcome.state == "canceled", messages[-10:]
    assert states[-1][0] == "canceled" and "job 7 canceled: canceled by alice" in states[-1][2]
    # stopped by the cancel in its sleep, not by the test action's timeout after it
    assert "cancelled while the tests ran" in states[-1][2], states[-1]
    assert any(m.startswith("start: 4 finalize") for m in messages)
    assert not any(m.endswith("/after: pass") for m in messages)
    assert not dev.powered
    assert processes_in((tmp_path / "board1").resolve()) == []
