"""A ``local`` board's own network: a network namespace on a host bridge.

``eth0`` in the namespace is one end of a veth pair whose other end is on a
host bridge without an address (boards on the bridge reach each other,
nothing else), with an address from the documentation range 192.0.2.0/24.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import zlib
from collections.abc import Mapping
from typing import Any

from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

_bridge_lock = threading.Lock()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; an InfrastructureError naming the command if it fails and ``check``."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise InfrastructureError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def netns_supported() -> bool:
    """Root, ``ip`` with netns support and ``unshare``: detected, not assumed."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return False
    try:
        return ip("netns", "list", check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def netns_pids(netns: str) -> set[int]:
    """Every process in the network namespace ``netns``."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return set()
    listed = ip("netns", "pids", netns, check=False).stdout.split()
    return {int(p) for p in listed if p.isdigit()}


def delete_netns(netns: str) -> None:
    """Remove ``netns`` (a leftover's: nothing to do if it is gone)."""
    if os.geteuid() == 0 and shutil.which("ip"):
        ip("netns", "del", netns, check=False)


class BoardNetwork:
    """The network namespace of one board: ``setup()`` at power on, ``teardown()`` at off."""

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.settings = settings
        #: the namespace while it exists
        self.netns: str | None = None

    def names(self) -> tuple[str, str, str]:
        """(namespace, host end of the veth, board end before it becomes eth0)."""
        digest = f"{zlib.crc32(self.name.encode()):08x}"
        return f"lavamq-{self.name}", f"lmqh{digest}", f"lmqp{digest}"

    @property
    def bridge(self) -> str:
        """The host bridge the board's network namespace is attached to."""
        return str(self.settings.get("bridge", "lavamq0"))

    def address(self) -> str:
        """This board's eth0 address (settings.ipv4, or derived from its name)."""
        if "ipv4" in self.settings:
            return str(self.settings["ipv4"])
        return f"192.0.2.{2 + zlib.crc32(self.name.encode()) % 250}/24"

    def setup(self) -> str | None:
        """Create the namespace, its eth0 and the bridge; the namespace's name, or None
        (with a warning) when it could not be made and ``settings.network`` allows that."""
        netns, host_if, peer_if = self.names()
        # a crash may have left the namespace behind: start clean
        ip("netns", "del", netns, check=False)
        ip("link", "del", host_if, check=False)
        try:
            ip("netns", "add", netns)
            self.netns = netns
            ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
            ip("link", "set", peer_if, "netns", netns)
            ip("-n", netns, "link", "set", peer_if, "name", "eth0")
            ip("-n", netns, "addr", "add", self.address(), "dev", "eth0")
            ip("-n", netns, "link", "set", "lo", "up")
            ip("-n", netns, "link", "set", "eth0", "up")
            with _bridge_lock:
                if ip("link", "show", self.bridge, check=False).returncode != 0:
                    created = ip("link", "add", self.bridge, "type", "bridge", check=False)
                    if created.returncode != 0 and "exists" not in created.stderr:
                        raise InfrastructureError(
                            f"ip link add {self.bridge} type bridge failed: "
                            f"{created.stderr.strip()}"
                        )
                ip("link", "set", self.bridge, "up")
                ip("link", "set", host_if, "master", self.bridge)
                ip("link", "set", host_if, "up")
        except InfrastructureError as exc:
            self.teardown()
            if self.settings.get("network", "auto") == "netns":
                raise InfrastructureError(f"device {self.name}: network setup: {exc}") from exc
            log.warning(
                "device %s: no network namespace (%s); sharing the host's network", self.name, exc
            )
        return self.netns

    def pids(self) -> set[int]:
        """The processes in the namespace (none when there is none)."""
        return netns_pids(self.netns) if self.netns else set()

    def teardown(self) -> None:
        """Delete the namespace and the veth, and the bridge once it has no port left."""
        if self.netns is None:
            return
        _, host_if, _ = self.names()
        ip("netns", "del", self.netns, check=False)
        ip("link", "del", host_if, check=False)
        self.netns = None
        with _bridge_lock:
            ports = ip("-o", "link", "show", "master", self.bridge, check=False)
            if ports.returncode == 0 and not ports.stdout.strip():
                ip("link", "del", self.bridge, check=False)
