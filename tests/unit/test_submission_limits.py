"""The coordinator loads submissions in a bounded worker: one bad job cannot starve the lab.

Before, a 2 KB alias bomb sent with ``lavamq submit`` grew the coordinator to
4.3 GB, every RPC timed out and ``lava.control`` backed up. Now the loader
refuses it at once, and whatever the loader could still miss is cut by the
worker's time and memory limits (coordinator/validation.py) while the
coordinator goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from lab import memory_coordinator
from limits import memory_ceiling
from test_job_limits import alias_bomb

from coordinator.service import CoordinatorService
from coordinator.validation import SubmissionValidator
from lavamq.cli import main
from schemas.errors import LavamqBug
from schemas.job import MAX_JOB_VALUES, JobValidationError, load_job

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed-simple-multinode.yaml"


@pytest.fixture
def validator() -> Iterator[SubmissionValidator]:
    v = SubmissionValidator(timeout=30.0, memory_bytes=512 << 20)
    try:
        yield v
    finally:
        v.close()


def test_the_worker_loads_what_the_loader_loads(validator: SubmissionValidator) -> None:
    text = SEED.read_text()
    assert validator.load(text, "seed.yaml") == load_job(text, "seed.yaml")
    with pytest.raises(JobValidationError) as info:
        validator.load(alias_bomb(), "bomb.yaml")
    assert info.value.problems[0].startswith("line 15, column 9: holds more than")
    assert validator.replaced == 0


def test_a_worker_started_ahead_is_the_one_that_loads(validator: SubmissionValidator) -> None:
    validator.start()
    started = validator._process
    assert started is not None and started.is_alive()
    text = SEED.read_text()
    assert validator.load(text, "seed.yaml") == load_job(text, "seed.yaml")
    assert validator._process is started and validator.replaced == 0


@pytest.mark.parametrize(
    ("loader", "timeout", "problem"),
    [
        # the hog's time limit is far off: on a loaded machine only its memory may trip
        ("limits:hog", 60.0, "file: loading it needed more than 128 MB, the limit for one"),
        ("limits:sleeper", 1.0, "file: loading it took more than 1 s, the limit for one"),
    ],
)
def test_a_load_past_the_workers_limits_is_refused_and_the_worker_replaced(
    loader: str, timeout: float, problem: str
) -> None:
    hostile = SubmissionValidator(timeout=timeout, memory_bytes=128 << 20, loader=loader)
    try:
        with pytest.raises(JobValidationError) as info:
            hostile.load("job_name: x", "x.yaml")
        assert info.value.problems[0].startswith(problem)
        assert hostile.replaced == 1
        # the next submission gets a fresh worker (which misbehaves the same way)
        with pytest.raises(JobValidationError):
            hostile.load("job_name: y", "y.yaml")
        assert hostile.replaced == 2
    finally:
        hostile.close()


def test_a_loader_bug_is_a_bug_not_the_jobs_fault() -> None:
    buggy = SubmissionValidator(loader="limits:buggy")
    try:
        with pytest.raises(LavamqBug, match=r"loading x\.yaml: KeyError: 'roles'"):
            buggy.load("job_name: x", "x.yaml")
    finally:
        buggy.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorService]:
    with memory_coordinator(tmp_path) as service:
        assert service.store is not None
        devices = [
            {"name": f"{kind}-0{i}", "device_type": kind, "tags": sorted(tags)}
            for kind, tags, count in (
                ("panda", {"usb-flash"}, 2),
                ("beaglexm", {"audio-loopback"}, 1),
            )
            for i in range(1, count + 1)
        ]
        service.store.register_host("lab", devices, time.time())
        yield service


def test_a_bomb_submitted_is_refused_and_the_next_job_accepted(
    coordinator: CoordinatorService, tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    runner = CliRunner()
    # the coordinator runs in this process: capped, so the old loader fails the test
    # (MemoryError, a bug) instead of taking the machine
    with memory_ceiling(1 << 30):
        refused = runner.invoke(main, ["submit", str(bomb), "--broker", "memory://"])
        accepted = runner.invoke(main, ["submit", str(SEED), "--broker", "memory://"])
    assert refused.exit_code == 1, refused.output
    assert f"line 15, column 9: holds more than {MAX_JOB_VALUES} values" in refused.stderr
    assert accepted.exit_code == 0, accepted.output
    assert coordinator.validator is not None and coordinator.validator.replaced == 0
