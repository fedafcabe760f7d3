"""Fast checks of the QEMU device's pieces that need no VM: addresses, cpio, command line."""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.devices import create_device
from device_agent.devices.qemu import QemuDevice, build_initrd
from device_agent.vmnet import GroupNetwork, VmNic, node_address, node_mac
from schemas.errors import ConfigurationError, InfrastructureError, JobError

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(st.sets(NAMES, min_size=1, max_size=600))
def test_group_addresses_are_distinct_usable_link_local(members: set[str]) -> None:
    addrs = [node_address(n, sorted(members)) for n in members]
    assert len({a.ip for a in addrs}) == len(members)
    for a in addrs:
        assert a.network == ipaddress.IPv4Network("169.254.0.0/16")
        last, third = int(a.ip) & 0xFF, (int(a.ip) >> 8) & 0xFF
        assert last not in (0, 255) and third not in (0, 255)


def test_address_is_the_same_for_every_dispatcher_and_mac_is_local_unicast() -> None:
    assert str(node_address("b", ["c", "a", "b"])) == "169.254.1.2/16"
    assert node_address("b", ["a", "b", "c"]) == node_address("b", ["c", "b", "a"])
    with pytest.raises(ConfigurationError, match="not a member"):
        node_address("z", ["a", "b"])
    mac = node_mac("g1", "a")
    assert mac.startswith("52:54:00:") and mac == node_mac("g1", "a") != node_mac("g2", "a")


def test_nic_arguments(tmp_path: Path) -> None:
    nic = VmNic("g", "a", ipaddress.IPv4Interface("169.254.1.1/16"), "52:54:00:01:02:03", tmp_path)
    assert nic.kernel_args() == ["lavamq.ip=169.254.1.1/16"]
    assert nic.qemu_args() == [
        "-netdev",
        f"vde,id=lavanet0,sock={tmp_path}",
        "-device",
        "virtio-net-pci,netdev=lavanet0,mac=52:54:00:01:02:03",
    ]


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_a_switch_directory_too_long_for_unix_sockets_is_refused_at_once(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    net = GroupNetwork("1-group", deep)
    with pytest.raises(InfrastructureError, match=r"too long for unix sockets \(\d+ > 107"):
        net.attach("qemu-01", ["qemu-01"])
    assert not deep.exists()  # refused before anything was made


def test_overlay_cpio_appended_to_a_ramdisk(tmp_path: Path) -> None:
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(gzip.compress(b"not really a cpio, only the first part"))
    overlay = tmp_path / "overlay"
    (overlay / "bin").mkdir(parents=True)
    (overlay / "bin" / "lava-self").write_text("#!/bin/sh\necho me\n")
    (overlay / "bin" / "lava-self").chmod(0o755)
    (overlay / "bin" / "link").symlink_to("lava-self")
    out = build_initrd([base], tmp_path / "initrd", overlay, "/lava-overlay")
    data = out.read_bytes()
    start = len(base.read_bytes())
    start += -start % 4
    assert data[:start].rstrip(b"\0") == base.read_bytes().rstrip(b"\0")
    # the appended archive is a valid newc cpio that GNU cpio lists and unpacks
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=data[start:], capture_output=True, check=True
    ).stdout.decode()
    assert listing.split() == [
        "lava-overlay",
        "lava-overlay/bin",
        "lava-overlay/bin/lava-self",
        "lava-overlay/bin/link",
    ]
    dest = tmp_path / "unpacked"
    dest.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=data[start:], cwd=dest, check=True)
    script = dest / "lava-overlay" / "bin" / "lava-self"
    assert script.read_text() == "#!/bin/sh\necho me\n" and script.stat().st_mode & 0o111
    assert (dest / "lava-overlay" / "bin" / "link").readlink() == Path("lava-self")


def vm(tmp_path: Path, **settings: object) -> QemuDevice:
    device = create_device(
        {
            "name": "q1",
            "device_type": "qemu",
            "settings": {"runtime_dir": str(tmp_path), **settings},
        },
        tmp_path,
    )
    assert isinstance(device, QemuDevice)
    return device


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        vm(tmp_path, memory=64, accel="xen", colour="red")
    text = str(info.value)
    assert "settings.memory: 64 MiB is too little" in text
    assert "settings.accel: must be auto, kvm or tcg (got 'xen')" in text
    assert "settings.colour: unknown setting for device type qemu" in text


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_command_line(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    ramdisk = tmp_path / "initrd"
    ramdisk.write_bytes(b"r")
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 60)
    device = vm(tmp_path, kernel_args="loglevel=3")
    device.set_images({"kernel": kernel, "ramdisk": ramdisk, "image": disk})
    device.set_group("g", "q1", ["q1"])
    device.set_kernel_args("lava=1")
    cmd = device.command_line(4321, "tcg")
    assert cmd[cmd.index("-serial") + 1] == "tcp:127.0.0.1:4321,server=on,wait=on,nodelay=on"
    assert cmd[cmd.index("-accel") + 1] == "tcg" and cmd[cmd.index("-m") + 1] == "128"
    assert cmd[cmd.index("-pidfile") + 1] == str(tmp_path / "q1.pid")
    append = cmd[cmd.index("-append") + 1].split()
    assert {"console=ttyS0,115200", "lavamq.hostname=q1", "loglevel=3", "lava=1"} <= set(append)
    assert "root=/dev/vda" in append
    assert f"file={disk},format=qcow2,if=virtio,snapshot=on" in cmd
    assert "-daemonize" not in cmd
    device.set_images({"ramdisk": ramdisk})
    with pytest.raises(JobError, match=r"needs a 'kernel'.*deployed: ramdisk"):
        device.command_line(4321, "tcg")


def test_importing_the_qemu_modules_starts_no_thread_and_installs_no_handler() -> None:
    # a fresh interpreter: what the import alone does, before any VM starts
    probe = (
        "import gc, signal, threading\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}\n"
        "import device_agent.devices.qemu, device_agent.qemu.process\n"
        "from device_agent.devices import device_types\n"
        "device_types()\n"
        "after = {s: signal.getsignal(s) for s in before}\n"
        "pools = [o for o in gc.get_objects() if isinstance(o, ThreadPoolExecutor)]\n"
        "print(len(threading.enumerate()), len(pools), after == before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    assert out == ["1", "0", "True"]
