"""A local board's private root (device_agent/board_root.py): LAVA's fixed paths, its own
/tmp, the overlay at /lava-<id>, nothing left on the host; and the fallback when the host
cannot give one."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from boards import board_config, killed_dispatcher

from device_agent import board_root
from device_agent.board_processes import mount_namespace, proc_stat
from device_agent.devices import create_device
from device_agent.devices.base import BootRequest
from device_agent.devices.local import LocalDevice
from schemas.errors import ConfigurationError, InfrastructureError

pytestmark = pytest.mark.timeout(120)

WHY_NOT = board_root.unavailable(Path(tempfile.gettempdir()))
# on CI this machine is root: a private root is possible there and must be tested
needs_private_root = pytest.mark.skipif(
    bool(WHY_NOT) and os.environ.get("CI") != "true",
    reason=f"a private mount namespace is not possible here: {WHY_NOT}",
)


def make_board(tmp_path: Path, name: str, **settings: str) -> LocalDevice:
    device = create_device(
        {"name": name, "device_type": "local", "settings": {"network": "none", **settings}},
        tmp_path / name,
    )
    assert isinstance(device, LocalDevice)
    return device


@pytest.fixture
def two_boards(tmp_path: Path) -> Iterator[list[LocalDevice]]:
    boards = [make_board(tmp_path, name) for name in ("root-a", "root-b")]
    try:
        yield boards
    finally:
        for board in boards:
            board.shutdown()


def host_mounts() -> str:
    """The mount table of this process's (the host's) namespace."""
    return Path("/proc/self/mountinfo").read_text()


def sh(board: LocalDevice, command: str) -> str:
    assert board.console is not None
    output, rc = board.console.run(command, timeout=20)
    assert rc == 0, (command, output)
    return output


@needs_private_root
def test_boards_of_one_host_each_have_their_own_tmp_and_leave_nothing(
    two_boards: list[LocalDevice], tmp_path: Path
) -> None:
    a, b = two_boards
    for board in two_boards:
        board.boot(timeout=30)
        assert board.proc is not None and board.root_fs.active
        assert mount_namespace(board.proc.pid) != mount_namespace(os.getpid())
        assert board.cache_dir() == "/tmp"
    token = uuid.uuid4().hex
    sh(a, f"echo from-a > /tmp/a-{token}")
    sh(b, f"echo from-b > /tmp/b-{token}")
    # each sees its own file at LAVA's path, not the other's; the host sees neither
    assert sh(a, f"cat /tmp/a-{token}; test ! -e /tmp/b-{token} && echo no-b") == "from-a\nno-b"
    assert sh(b, f"cat /tmp/b-{token}; test ! -e /tmp/a-{token} && echo no-a") == "from-b\nno-a"
    assert not list(Path("/tmp").glob(f"?-{token}"))
    # the board's root and home are what the host has, its own directory comes along
    assert sh(a, "pwd") == str(a.root)
    assert sh(a, "test -x /bin/sh && test -r /etc/passwd && echo host-root") == "host-root"
    # the board's mounts are in its namespace only: the host's mount table has none
    mounts = host_mounts()
    assert "lavamq-board" not in mounts and str(tmp_path) not in mounts
    namespaces = [mount_namespace(board.proc.pid) for board in two_boards if board.proc]
    for board in two_boards:
        board.power_off()
    mounts = host_mounts()
    assert "lavamq-board" not in mounts and str(tmp_path) not in mounts
    # nothing left in the work dirs: no mount point, no per-board tmp, no overlay copy
    for board in two_boards:
        assert sorted(p.name for p in board.root.iterdir()) == []
    # the namespaces died with their last process
    live = {mount_namespace(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    assert not live & set(namespaces)


@needs_private_root
def test_the_overlay_is_at_lava_job_id_with_its_layout(tmp_path: Path) -> None:
    board = make_board(tmp_path, "root-o")
    overlay = tmp_path / "jobs" / "7" / "overlay"
    for part in ("bin", "tests/0_smoke", "results"):
        (overlay / part).mkdir(parents=True)
    (overlay / "bin" / "hello").write_text("#!/bin/sh\necho hello from the overlay\n")
    (overlay / "bin" / "hello").chmod(0o755)
    try:
        board.boot(timeout=30)
        assert board.install_overlay(overlay, 20, job_id="7") == "/lava-7"
        assert sh(board, "/lava-7/bin/hello") == "hello from the overlay"
        assert sh(board, "ls -1 /lava-7") == "bin\nresults\ntests"
        assert sh(board, "ls -d /lava-*") == "/lava-7"
        # what the test writes there is the job's on the host (results, attachments)
        sh(board, "echo pass > /lava-7/results/smoke")
        assert (overlay / "results" / "smoke").read_text() == "pass\n"
        # a second test action installs it again
        assert board.install_overlay(overlay, 20, job_id="7") == "/lava-7"
        assert sh(board, "cat /lava-7/results/smoke") == "pass"
        # nothing at the host's root, nothing copied into the board's directory
        assert not Path("/lava-7").exists()
        assert not (board.root / "lava-overlay").exists()
    finally:
        board.shutdown()
    assert "lavamq-board" not in host_mounts() and str(overlay) not in host_mounts()
    assert not (board.root / ".root").exists()


@needs_private_root
def test_power_off_finds_a_process_without_session_nor_environment(tmp_path: Path) -> None:
    """``env -i setsid cmd &`` leaves the board's session and its marker's environment:
    only the mount namespace, whose root holds the marker, leads back to the board."""
    board = make_board(tmp_path, "root-k")
    seconds = f"317.{uuid.uuid4().int % 10**9:09d}"
    try:
        board.boot(timeout=30)
        sh(board, f"env -i setsid sleep {seconds} </dev/null >/dev/null 2>&1 & true")
        escaped = wait_for_sleep(seconds)
        assert board.proc is not None
        assert all((proc_stat(p) or (0, 0))[1] != board.proc.pid for p in escaped)
        assert all(b"LAVAMQ_BOARD" not in Path(f"/proc/{p}/environ").read_bytes() for p in escaped)
        board.power_off()
        assert not any(alive(p) for p in escaped)
    finally:
        board.shutdown()
        kill_sleep(seconds)


@needs_private_root
def test_a_killed_dispatchers_board_is_reaped_with_its_namespace(tmp_path: Path) -> None:
    """A dispatcher SIGKILLed while its board (private root) runs a process without session
    nor environment: the next power on kills it (board.pid's marker names the namespace),
    and the old mount point goes."""
    workdir = tmp_path / "devices" / "root-r"
    seconds = f"318.{uuid.uuid4().int % 10**9:09d}"
    board = None
    try:
        killed_dispatcher(
            workdir,
            "root-r",
            f"env -i setsid sleep {seconds} </dev/null >/dev/null 2>&1 & echo $!",
        )
        escaped = wait_for_sleep(seconds)
        assert (workdir / ".root").is_dir()
        board = create_device(board_config("root-r"), workdir)
        assert isinstance(board, LocalDevice)
        board.power_on()
        assert not any(alive(p) for p in escaped)
    finally:
        if board is not None:
            board.shutdown()
        kill_sleep(seconds)
    assert sorted(p.name for p in workdir.iterdir()) == []


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    if stat is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sleeping(seconds: str) -> set[int]:
    want = b"sleep\0" + seconds.encode() + b"\0"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == want and alive(int(entry.name)):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def wait_for_sleep(seconds: str) -> set[int]:
    deadline = time.monotonic() + 30
    while not (found := sleeping(seconds)):
        assert time.monotonic() < deadline, f"sleep {seconds} never started"
        time.sleep(0.02)
    return found


def kill_sleep(seconds: str) -> None:
    for pid in sleeping(seconds):
        os.kill(pid, 9)


def test_settings_say_no_private_root_and_the_log_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    board = make_board(tmp_path, "root-n", mount_namespace="none")
    caplog.set_level(logging.INFO, logger="device_agent.devices.local")
    try:
        console = board.boot(timeout=30)
        assert not board.root_fs.active
        assert board.cache_dir() == str(board.root / "tmp")
        output, rc = console.run('echo "$TMPDIR"', timeout=10)
        assert (output, rc) == (str(board.root / "tmp"), 0)
        board.boot(timeout=30)  # a second power on says it no more
    finally:
        board.shutdown()
    lines = [r.getMessage() for r in caplog.records if "mount namespace" in r.getMessage()]
    assert lines == [
        "device root-n: no private mount namespace (settings.mount_namespace = 'none'): "
        "/tmp and the overlay are per-board directories of the device"
    ]


def test_a_host_that_cannot_falls_back_or_refuses_as_the_setting_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(board_root, "unavailable", lambda probe: "not root (uid 1000)")
    caplog.set_level(logging.INFO, logger="device_agent.devices.local")
    auto = make_board(tmp_path, "root-auto")
    try:
        # the job log gets the line too (a boot action logs prepare_boot's warnings)
        assert auto.prepare_boot(BootRequest()) == [
            "device root-auto: no private mount namespace (not root (uid 1000)): /tmp and "
            "the overlay are per-board directories of the device, not LAVA's fixed paths"
        ]
        auto.boot(timeout=30)
        assert auto.cache_dir() == str(auto.root / "tmp")
    finally:
        auto.shutdown()
    warned = [r for r in caplog.records if "mount namespace" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    required = make_board(tmp_path, "root-req", mount_namespace="required")
    with pytest.raises(InfrastructureError, match=r"'required' .* not root \(uid 1000\)"):
        required.power_on()
    assert required.proc is None


def test_a_bad_setting_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"settings\.mount_namespace: must be"):
        make_board(tmp_path, "root-bad", mount_namespace="yes")
