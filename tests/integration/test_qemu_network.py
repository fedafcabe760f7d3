"""Per-group VM networks: VMs of one group reach each other, no other group sees them."""

from __future__ import annotations

import ipaddress
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lab import IMAGES, require_qemu

from device_agent.devices.qemu import QemuDevice, qemu_pids
from device_agent.vmnet import GroupNetwork, node_address, reap_stale_networks

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def switch_pids(net_dir: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"vde_switch") and any(str(net_dir).encode() in c for c in cmd):
            found.append(int(entry))
    return found


def test_group_networks_are_isolated(tmp_path: Path) -> None:
    require_qemu("QEMU network test")
    runtime = tmp_path / "rt"
    net_dir = tmp_path / "net"
    members_a = ["alpha-1", "alpha-2"]
    members_b = ["beta-0", "beta-1", "beta-2"]
    vms: dict[str, QemuDevice] = {}
    for group, members, node in (
        ("group-a", members_a, "alpha-1"),
        ("group-a", members_a, "alpha-2"),
        # beta-2 gets 169.254.1.3: distinct from both alphas, same subnet
        ("group-b", members_b, "beta-2"),
    ):
        vm = QemuDevice(
            {
                "name": node,
                "device_type": "qemu",
                "settings": {"runtime_dir": str(runtime), "vmnet_dir": str(net_dir)},
            },
            tmp_path / node,
        )
        vm.set_images({"kernel": IMAGES / "vmlinuz", "ramdisk": IMAGES / "initramfs.cpio.gz"})
        vm.set_group(group, node, members)
        vms[node] = vm
    addr = {node: str(node_address(node, members_a).ip) for node in members_a}
    assert addr == {"alpha-1": "169.254.1.1", "alpha-2": "169.254.1.2"}
    try:
        with ThreadPoolExecutor(len(vms)) as pool:
            consoles = dict(zip(vms, pool.map(lambda vm: vm.boot(180), vms.values()), strict=True))
        assert len(switch_pids(net_dir)) == 2, "one switch per group"

        a1, a2, b2 = consoles["alpha-1"], consoles["alpha-2"], consoles["beta-2"]
        out, rc = a1.run("ip -4 addr show dev eth0", 20)
        assert rc == 0 and "inet 169.254.1.1/16" in out, out
        out, rc = a1.run("ip link show dev eth0", 20)
        assert vms["alpha-1"].nic is None or vms["alpha-1"].nic.mac in out
        # no route off the host: only the link-local subnet, no default route
        out, rc = a1.run("ip route", 20)
        assert "default" not in out and "169.254.0.0/16" in out, out

        out, rc = a1.run(f"ping -c 2 -W 5 {addr['alpha-2']}", 30)
        assert rc == 0, out
        out, rc = a2.run(f"ping -c 1 -W 5 {addr['alpha-1']}", 30)
        assert rc == 0, out
        # beta-2 is on the same subnet but on another switch: nothing answers
        out, rc = b2.run(f"ping -c 1 -W 1 {addr['alpha-1']}", 30)
        assert rc != 0 and "0 packets received" in out, out
        out, rc = b2.run(f"ping -c 1 -W 1 {addr['alpha-2']}", 30)
        assert rc != 0, out
        # and the alphas do not see beta either
        b2_ip = str(node_address("beta-2", members_b).ip)
        out, rc = a2.run(f"ping -c 1 -W 1 {b2_ip}", 30)
        assert rc != 0, out
        # TCP between the group's VMs (what the client-server example does)
        a2.sendline("nc -l -p 5555 > /tmp/got &")
        a2.read_until_prompt(10)
        out, rc = a1.run(
            f"for i in 1 2 3 4 5 6 7 8 9 10; do echo over-tcp | nc {addr['alpha-2']} 5555 "
            "&& break; sleep 0.3; done",
            30,
        )
        assert rc == 0, out
        out, rc = a2.run("wait; cat /tmp/got", 20)
        assert out.endswith("over-tcp"), out
    finally:
        for vm in vms.values():
            vm.power_off()
    assert qemu_pids(str(runtime)) == []
    assert switch_pids(net_dir) == [], "the last VM out stops its group's switch"
    assert not [p for p in net_dir.iterdir() if p.is_dir()]


def test_stale_switch_of_a_dead_dispatcher_is_reaped(tmp_path: Path) -> None:
    require_qemu("QEMU network test")
    net = GroupNetwork("group-z", tmp_path / "net")
    # a user whose process is gone (pid far above pid_max on Linux)
    nic = net.attach("zed", ["zed"], owner_pid=2**22 + 1)
    assert ipaddress.IPv4Interface(nic.address) == ipaddress.IPv4Interface("169.254.1.1/16")
    pid = net.switch_pid()
    assert pid is not None
    try:
        assert reap_stale_networks(tmp_path / "net") == [net.dir.name]
        assert net.switch_pid() is None
        assert not net.dir.exists()
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
