"""The qemu device type on a real QEMU with the project's test image.

Boots the image built by ``make test-image`` (images/vmlinuz +
images/initramfs.cpio.gz); skips with the reason when QEMU or the image is
missing, fails instead under CI. No VM may survive a test: each one checks
with a /proc scan for QEMUs holding its private runtime directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import IMAGES, ROOT, require_qemu, wait_for

from device_agent.devices import create_device
from device_agent.devices.qemu import QemuDevice, qemu_pids, reap_leftover_vms

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KERNEL = IMAGES / "vmlinuz"
RAMDISK = IMAGES / "initramfs.cpio.gz"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Path]:
    require_qemu("QEMU test", vde=False)
    rt = tmp_path / "rt"
    yield rt
    # whatever happened, nothing may be left running
    leftovers = qemu_pids(str(rt))
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"QEMU processes left behind: {leftovers}"


def make_vm(tmp_path: Path, runtime: Path, name: str = "qemu-01", **settings: Any) -> QemuDevice:
    config = {
        "name": name,
        "device_type": "qemu",
        "settings": {"runtime_dir": str(runtime), "vmnet_dir": str(runtime / "net"), **settings},
    }
    device = create_device(config, tmp_path / name)
    assert isinstance(device, QemuDevice)
    device.set_images({"kernel": KERNEL, "ramdisk": RAMDISK})
    return device


def test_boot_to_prompt_and_run_commands(tmp_path: Path, runtime: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "bin").mkdir(parents=True)
    script = overlay / "bin" / "hello"
    script.write_text("#!/bin/sh\necho hello from $(hostname)\n")
    script.chmod(0o755)
    vm = make_vm(tmp_path, runtime)
    vm.set_group(None, "node-a", None)
    vm.set_overlay(overlay)
    try:
        console = vm.boot(120)
        assert vm.accel in ("kvm", "tcg")
        assert vm.last_boot_seconds is not None
        assert vm.process is not None and vm.process.running()
        release = (IMAGES / ".stamp").read_text().split("=", 1)[0].removeprefix("linux-image-")
        out, rc = console.run("uname -r", 20)
        assert (rc, out) == (0, release)
        # the overlay travelled in the initramfs
        assert vm.install_overlay(overlay, 20) == "/lava-overlay"
        out, rc = console.run("/lava-overlay/bin/hello", 20)
        assert (rc, out) == (0, "hello from node-a")
        # another directory is typed through the console like on any board
        other = tmp_path / "other"
        other.mkdir()
        (other / "data.txt").write_text("typed over the serial line\n" * 50)
        target = vm.install_overlay(other, 60)
        out, rc = console.run(f"tail -n 1 {target}/data.txt", 20)
        assert (rc, out) == (0, "typed over the serial line")
        out, rc = console.run("false", 20)
        assert rc == 1
    finally:
        vm.power_off()
    assert qemu_pids(str(runtime)) == []
    assert not (runtime / "qemu-01.pid").exists()


def test_unbootable_images_are_job_errors(tmp_path: Path, runtime: Path) -> None:
    from schemas.errors import JobError

    vm = make_vm(tmp_path, runtime)
    vm.set_images({"dtb": KERNEL})
    with pytest.raises(JobError, match=r"needs a 'kernel'.*deployed: dtb"):
        vm.power_on()
    vm.set_images({"kernel": tmp_path / "missing"})
    with pytest.raises(JobError, match=r"image 'kernel' is missing"):
        vm.power_on()
    assert qemu_pids(str(runtime)) == []


def test_job_timed_out_mid_boot_leaves_no_qemu(tmp_path: Path, runtime: Path) -> None:
    """The real sub-job runner: deploy from file://, boot with a timeout too short."""
    from dispatcher.runner import SubJobRunner

    vm = make_vm(tmp_path, runtime)
    seen: list[int] = []
    original = vm.connect

    def connect_and_record() -> Any:
        console = original()
        assert vm.process is not None and vm.process.pid is not None
        seen.append(vm.process.pid)
        return console

    vm.connect = connect_and_record  # type: ignore[method-assign]
    assignment = {
        "job_id": "job-1",
        "subjob_id": "job-1.0",
        "node": "qemu-01",
        "role": "vm",
        "device_type": "qemu",
        "timeouts": {"job": 60, "action": 30},
        "plan": {
            "actions": [
                {
                    "kind": "deploy",
                    "name": "deploy",
                    "parameters": {
                        "images": {
                            "kernel": {"url": KERNEL.as_uri(), "compression": None},
                            "ramdisk": {"url": RAMDISK.as_uri(), "compression": "gz"},
                        }
                    },
                    "timeout": 60,
                },
                # far too short for any boot to reach the prompt
                {"kind": "boot", "name": "boot", "parameters": {}, "timeout": 0.5},
            ]
        },
    }
    outcome = SubJobRunner(assignment, vm, workdir=tmp_path / "job").run()
    assert outcome.state == "incomplete"
    assert seen, "the VM never started"
    assert qemu_pids(str(runtime)) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in seen)
    assert "boot" in outcome.log_path.read_text()


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from device_agent.devices.qemu import QemuDevice
    vm = QemuDevice(
        {{"name": "orphan", "device_type": "qemu", "settings": {{"runtime_dir": {rt!r}}}}},
        {work!r},
    )
    vm.set_images({{"kernel": {kernel!r}, "ramdisk": {ramdisk!r}}})
    vm.power_on()
    vm.connect()
    print("VM", vm.process.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_dispatcher_process_killed_takes_its_vm_down(
    tmp_path: Path, runtime: Path, how: signal.Signals
) -> None:
    code = CHILD.format(
        root=str(ROOT),
        rt=str(runtime),
        work=str(tmp_path / "work"),
        kernel=str(KERNEL),
        ramdisk=str(RAMDISK),
    )
    env = {**os.environ, "LAVAMQ_QEMU_ACCEL": "tcg"}
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("VM "), line
        vm_pid = int(line.split()[1])
        assert qemu_pids(str(runtime)) == [vm_pid]
        child.send_signal(how)
        child.wait(10)
        wait_for(lambda: not qemu_pids(str(runtime)), 10, f"QEMU {vm_pid} to die", interval=0.05)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_restarted_dispatcher_reaps_leftover_vm(tmp_path: Path, runtime: Path) -> None:
    runtime.mkdir(parents=True)
    pidfile = runtime / "leftover.pid"
    # a VM whose dispatcher is gone: not our child's child, no parent-death signal
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "96",
            "-nodefaults",
            "-display",
            "none",
            "-pidfile",
            str(pidfile),
            "-S",
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(pidfile.exists, 10, "the leftover VM's pidfile", interval=0.05)
        wait_for(
            lambda: pidfile.read_text().strip() != "", 10, "the pid in the pidfile", interval=0.05
        )
        # a pidfile naming some other process is never acted on
        (runtime / "stranger.pid").write_text(f"{os.getpid()}\n")
        killed = reap_leftover_vms(runtime)
        assert killed == [proc.pid]
        proc.wait(10)
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
