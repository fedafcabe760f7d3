from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dispatcher.action import (
    Action,
    ActionTimeout,
    JobContext,
    Pipeline,
    action_deadline,
    fmt_duration,
)
from dispatcher.joblog import JobLog
from dispatcher.runner import build_pipeline
from schemas.errors import InfrastructureError, JobError

GOLDEN = Path(__file__).with_name("test_dispatcher_pipeline.golden.json")

PLAN = {
    "actions": [
        {
            "kind": "deploy",
            "name": "deploy_linaro_image",
            "parameters": {
                "images": {
                    "image": {"url": "file:///srv/img.gz", "compression": "gz"},
                    "kernel": {"url": "http://example.org/vmlinuz", "compression": None},
                }
            },
            "roles": [],
            "timeout": 300.0,
            "index": 0,
        },
        {
            "kind": "boot",
            "name": "boot_linaro_image",
            "parameters": {},
            "roles": [],
            "timeout": 120.0,
            "index": 1,
        },
        {
            "kind": "test",
            "name": "lava_test_shell",
            "parameters": {
                "definitions": [
                    {
                        "from": "git",
                        "repository": "https://git.example.org/t.git",
                        "path": "smoke.yaml",
                        "name": "smoke",
                        "revision": None,
                        "parameters": {},
                    }
                ]
            },
            "roles": [],
            "timeout": 900.0,
            "index": 2,
        },
        {
            "kind": "command",
            "name": "lava_command_run",
            "parameters": {"commands": ["uname -a"]},
            "roles": [],
            "timeout": None,
            "index": 3,
        },
        {
            "kind": "submit",
            "name": "submit_results",
            "parameters": {"server": "http://x/RPC2"},
            "roles": [],
            "timeout": None,
            "index": 4,
        },
    ]
}


def ctx_for(tmp_path: Path, **kw: Any) -> JobContext:
    return JobContext(
        job_id="1", subjob_id="2", node="n1", role="r", log=JobLog(), workdir=tmp_path, **kw
    )


@pytest.mark.parametrize(
    ("action_timeout", "parent", "job", "expected"),
    [
        (10.0, None, None, 110.0),  # the action's own timeout
        (10.0, 105.0, None, 105.0),  # capped by the enclosing action
        (10.0, None, 103.0, 103.0),  # capped by the job
        (10.0, 150.0, 180.0, 110.0),  # its own is the earliest
        (None, None, 150.0, 150.0),  # no action timeout: the job's
        (None, None, None, None),  # no limit anywhere
    ],
)
def test_deadline_precedence(
    action_timeout: float | None, parent: float | None, job: float | None, expected: float | None
) -> None:
    assert (
        action_deadline(
            100.0, action_timeout=action_timeout, parent_deadline=parent, job_deadline=job
        )
        == expected
    )


def test_pipeline_describes_itself_as_golden_data() -> None:
    pipeline, problems = build_pipeline(PLAN, "local", {"action": 600.0, "job": 3600.0})
    assert problems == []
    described = json.loads(json.dumps(pipeline.describe()))
    if os.environ.get("LAVAMQ_UPDATE_GOLDEN"):  # after an intended change: review the diff
        GOLDEN.write_text(json.dumps(described, indent=2) + "\n")
    assert described == json.loads(GOLDEN.read_text())
    names = [a["name"] for a in described]
    assert names == [
        "deploy-image",
        "boot-local",
        "lava-test-shell",
        "lava-command-run",
        "submit-results",
    ]
    # the command action had no timeout: the job's default action timeout applies
    assert described[3]["timeout"] == 600.0


def test_unknown_kind_is_a_build_problem() -> None:
    _, problems = build_pipeline({"actions": [{"kind": "flash", "name": "x"}]}, "local", {})
    assert problems == [
        "actions[0] (x): unknown kind 'flash' (known: deploy, boot, test, command, submit)"
    ]


def test_validate_collects_every_problem(tmp_path: Path) -> None:
    plan = {
        "actions": [
            {
                "kind": "deploy",
                "name": "d",
                "timeout": 10,
                "parameters": {"images": {"rootfs": {"url": "ftp://x/y", "md5sum": "nothex"}}},
            },
            {
                "kind": "test",
                "name": "t",
                "timeout": 10,
                "parameters": {
                    "definitions": [
                        {"from": "svn", "repository": "x"},
                        {"from": "git", "repository": "r"},
                    ]
                },
            },
            {"kind": "command", "name": "c", "timeout": -1, "parameters": {"commands": []}},
        ]
    }
    pipeline, _ = build_pipeline(plan, "local", {})
    problems = pipeline.validate(ctx_for(tmp_path))
    assert problems == [
        "download: images.rootfs.url: unsupported scheme 'ftp' in 'ftp://x/y' "
        "(supported: file, http, https)",
        "download: images.rootfs.md5sum: not a 32-digit hex digest: 'nothex'",
        "lava-test-shell: definitions[0].from: must be git, inline or url (got 'svn')",
        "lava-test-shell: definitions[1].path: missing (the test definition file in the "
        "repository)",
        "lava-command-run: timeout must be positive (got -1)",
        "lava-command-run: parameters.commands must be a non-empty list",
    ]


class Sleeper(Action):
    name = "sleeper"

    def __init__(self, timeout: float | None, release: threading.Event) -> None:
        super().__init__(timeout=timeout)
        self.release = release
        self.cleaned = False

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        while not self.release.is_set():
            self.check_deadline(deadline, "waiting for release")
            self.release.wait(0.01)
        return "console-2"

    def cleanup(self, ctx: JobContext) -> None:
        self.cleaned = True


def test_deadline_stops_an_action_and_logs_start_end(tmp_path: Path) -> None:
    records: list[dict] = []
    ctx = ctx_for(tmp_path)
    ctx.log.add_listener(records.append)
    slow = Sleeper(0.2, threading.Event())
    pipeline = Pipeline([slow])
    start = time.monotonic()
    with pytest.raises(ActionTimeout, match="sleeper timed out"):
        pipeline.run(None, None, ctx)
    assert 0.15 < time.monotonic() - start < 2.0
    messages = [r["message"] for r in records]
    assert messages[0].startswith("start: 1 sleeper (timeout 00:00:00.")
    assert any(m.startswith("end: 1 sleeper (duration") and m.endswith("failed") for m in messages)
    pipeline.cleanup(ctx)
    assert slow.cleaned


def test_job_deadline_caps_actions(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, job_deadline=time.monotonic() + 0.1)
    with pytest.raises(ActionTimeout):
        Pipeline([Sleeper(60.0, threading.Event())]).run(None, None, ctx)


def test_connection_is_handed_on(tmp_path: Path) -> None:
    done = threading.Event()
    done.set()

    class Check(Action):
        name = "check"

        def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
            assert connection == "console-2"
            return connection

    assert Pipeline([Sleeper(1.0, done), Check()]).run("console-1", None, ctx_for(tmp_path)) == (
        "console-2"
    )


def test_unexpected_exception_becomes_a_bug_and_known_kinds_stay(tmp_path: Path) -> None:
    class Broken(Action):
        name = "broken"

        def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
            raise KeyError("oops")

    class Lab(Action):
        name = "lab"

        def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
            raise InfrastructureError("pdu unreachable")

    from schemas.errors import JobCanceled, LavamqBug

    with pytest.raises(LavamqBug, match="KeyError"):
        Pipeline([Broken()]).run(None, None, ctx_for(tmp_path))
    with pytest.raises(InfrastructureError, match="pdu unreachable"):
        Pipeline([Lab()]).run(None, None, ctx_for(tmp_path))
    # a cancel is its own kind, not the job file's fault
    with pytest.raises(JobCanceled, match="cancelled") as canceled:
        Pipeline([Lab()]).run(None, None, ctx_for(tmp_path, cancelled=lambda: True))
    assert not isinstance(canceled.value, JobError)
    assert canceled.value.error_type == "canceled"


def test_levels_number_nested_actions() -> None:
    pipeline, _ = build_pipeline(PLAN, "qemu", {})
    deploy = pipeline.describe()[0]
    assert deploy["level"] == "1"
    assert [c["level"] for c in deploy["pipeline"]] == ["1.1", "1.2"]
    assert deploy["pipeline"][0]["pipeline"][0]["level"] == "1.1.1"
    assert fmt_duration(3723.5) == "01:02:03.500"


class Flaky(Action):
    name = "flaky"

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__()
        self.errors = errors
        self.runs = 0

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        self.runs += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retry_action_retries_the_lab_never_the_job(tmp_path: Path) -> None:
    from dispatcher.action import RetryAction

    ctx = ctx_for(tmp_path)
    lab = Flaky([InfrastructureError("server hiccup")])
    assert RetryAction(lab, name="x-retry", retries=2).run(None, None, ctx) == "ok"
    assert lab.runs == 2
    job = Flaky([JobError("bad checksum"), JobError("never reached")])
    with pytest.raises(JobError, match="bad checksum"):
        RetryAction(job, name="x-retry", retries=3).run(None, None, ctx)
    assert job.runs == 1
    always = Flaky([InfrastructureError(f"down {i}") for i in range(3)])
    with pytest.raises(InfrastructureError, match="down 1"):
        RetryAction(always, name="x-retry", retries=2).run(None, None, ctx)


def test_the_registry_picks_by_kind_and_method_with_the_kind_as_default() -> None:
    from dispatcher import registry

    default = registry.lookup("deploy", None)
    assert default is not None and registry.lookup("deploy", "tmpfs") is default
    assert registry.method_of("boot", {"method": "qemu"}) == "qemu"
    assert registry.lookup("flash", None) is None
    plan = {"is_slave": True, "actions": [{"kind": "test", "parameters": {"definitions": []}}]}
    pipeline, problems = build_pipeline(plan, "local", {"action": 10.0})
    assert problems == []
    assert [a.name for a in pipeline.actions] == ["boot-local-slave", "lava-test-shell"]
