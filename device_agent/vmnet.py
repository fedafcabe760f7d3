"""Per-group virtual networks for QEMU devices.

Every MultiNode group whose nodes are VMs gets its own ``vde_switch``: a
user-space Ethernet switch reached through a unix socket directory. Only the
VMs started with that socket are on the network, so no other group sees it,
and the switch has no tap device, so there is no route off the host. Node
addresses come from the link-local range 169.254.0.0/16, derived from the
node's position in the group so that every dispatcher computes the same
address without asking anyone.

A switch is shared by every process on the host that runs a VM of the group
(two dispatchers of one lab on the same machine, for example): the first
``attach`` starts it, each attached node leaves a user file naming the process
that holds it, and the last ``detach`` stops it. A switch whose users are all
dead processes is stopped by ``reap_stale_networks`` (called by each
``attach``), so a dispatcher killed with SIGKILL leaves nothing running.

VMs of one group must run on the same host to share a network; connecting
switches of several hosts (``vde_plug`` over ssh) is left to the lab.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ConfigurationError, InfrastructureError

log = logging.getLogger(__name__)

#: link-local: never routed off the link (RFC 3927)
DEFAULT_SUBNET = ipaddress.IPv4Network("169.254.0.0/16")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SWITCH_START_TIMEOUT = 10.0
#: the longest unix socket path (sun_path less its NUL), and the most vde_switch adds
#: to its directory for its own sockets there: ``ctl``, and one per port,
#: ``<port>.<fd>`` (3 digits, and a descriptor below 100 in that small daemon)
SOCKET_PATH_MAX = 107
VDE_PORT_SUFFIX = len("/000.00")


def lavamq_runtime_dir(kind: str, env_var: str) -> Path:
    """Where ``kind`` keeps its runtime files: ``$env_var`` if set, else
    /run/lavamq/<kind> for root, else <tmp>/lavamq-<uid>/<kind>."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/lavamq") / kind
    return Path(tempfile.gettempdir()) / f"lavamq-{os.getuid()}" / kind


def default_runtime_dir() -> Path:
    """Where switches keep their sockets, pid files and user files."""
    return lavamq_runtime_dir("vmnet", "LAVAMQ_VMNET_DIR")


def _dir_name(group: str) -> str:
    """A file-system-safe, short and stable directory name for a group."""
    digest = hashlib.sha1(group.encode()).hexdigest()[:8]
    if SAFE_NAME_RE.match(group) and len(group) <= 40:
        return f"{group}-{digest}"
    return f"group-{digest}"


def node_address(
    node: str,
    members: Sequence[str] | None = None,
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
) -> ipaddress.IPv4Interface:
    """The address of ``node`` on its group network, with the subnet's prefix.

    With the group's member list, each node gets a distinct address from its
    position in the sorted list (every dispatcher sorts the same list). Without
    it, the address comes from a hash of the name (collisions are possible).
    In 169.254.0.0/16 the first and last /24 are reserved, so addresses start
    at 169.254.1.1.
    """
    hosts = subnet.num_addresses - 2
    first = 1
    if subnet == DEFAULT_SUBNET:
        first, hosts = 256, 254 * 256
    if members is not None:
        ordered = sorted(set(members))
        if node not in ordered:
            raise ConfigurationError(
                f"vmnet: node {node!r} is not a member of its group ({', '.join(ordered)})"
            )
        index = ordered.index(node)
        if index >= hosts:
            raise ConfigurationError(f"vmnet: {len(ordered)} nodes do not fit in {subnet}")
    else:
        index = int(hashlib.sha1(node.encode()).hexdigest(), 16) % hosts
    # skip .0 and .255 inside each /24 so no node gets a broadcast-looking address
    if subnet == DEFAULT_SUBNET:
        third, fourth = divmod(index, 254)
        offset = first + third * 256 + fourth + 1
    else:
        offset = first + index
    return ipaddress.IPv4Interface(f"{subnet.network_address + offset}/{subnet.prefixlen}")


def node_mac(group: str, node: str) -> str:
    """A stable, locally administered unicast MAC (QEMU's 52:54:00 prefix)."""
    digest = hashlib.sha1(f"{group}/{node}".encode()).digest()
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*digest[:3])


@dataclass(frozen=True)
class VmNic:
    """One VM's place on its group network."""

    group: str
    node: str
    address: ipaddress.IPv4Interface
    mac: str
    socket: Path

    def qemu_args(self, netdev_id: str = "lavanet0") -> list[str]:
        """The QEMU options that plug the VM into the group's switch."""
        return [
            "-netdev",
            f"vde,id={netdev_id},sock={self.socket}",
            "-device",
            f"virtio-net-pci,netdev={netdev_id},mac={self.mac}",
        ]

    def kernel_args(self) -> list[str]:
        """Kernel command line words the test image's init understands."""
        return [f"lavamq.ip={self.address.with_prefixlen}"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def process_cmdline(pid: int) -> list[str]:
    """The command line of process ``pid`` ([] if it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [p.decode(errors="replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return []


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class GroupNetwork:
    """The virtual network of one MultiNode group on this host."""

    def __init__(
        self,
        group: str,
        runtime_dir: str | Path | None = None,
        *,
        subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
        vde_switch: str = "vde_switch",
    ) -> None:
        if not group:
            raise ConfigurationError("vmnet: a group network needs a group name")
        self.group = group
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.subnet = subnet
        self.vde_switch = vde_switch
        self.dir = self.runtime_dir / _dir_name(group)
        self.socket = self.dir / "switch"
        self.pidfile = self.dir / "switch.pid"
        self.users = self.dir / "users"

    # --- locking ---------------------------------------------------------------
    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return _runtime_lock(self.runtime_dir)

    # --- public ----------------------------------------------------------------
    def attach(
        self, node: str, members: Sequence[str] | None = None, *, owner_pid: int | None = None
    ) -> VmNic:
        """Put ``node`` on the group network (starting the switch if needed)."""
        if not SAFE_NAME_RE.match(node):
            raise ConfigurationError(f"vmnet: node name {node!r} is not a safe file name")
        longest = len(str(self.socket)) + VDE_PORT_SUFFIX
        if longest > SOCKET_PATH_MAX:
            # vde_switch would start and never listen: say why at once
            raise InfrastructureError(
                f"vmnet {self.group}: the switch's socket directory {self.socket} is too "
                f"long for unix sockets ({longest} > {SOCKET_PATH_MAX} characters with a "
                "port's socket in it): use a shorter runtime directory (for lavamq run, a "
                "shorter TMPDIR)"
            )
        reap_stale_networks(self.runtime_dir)
        with self._locked():
            self.users.mkdir(parents=True, exist_ok=True)
            if self.switch_pid() is None:
                self._start_switch()
            (self.users / node).write_text(f"{owner_pid or os.getpid()}\n")
        nic = VmNic(
            group=self.group,
            node=node,
            address=node_address(node, members, self.subnet),
            mac=node_mac(self.group, node),
            socket=self.socket,
        )
        log.info("vmnet %s: %s attached as %s (%s)", self.group, node, nic.address, nic.mac)
        return nic

    def detach(self, node: str) -> None:
        """Take ``node`` off the network; the last one out stops the switch."""
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                (self.users / node).unlink()
            if not self._live_users():
                self._stop_switch()
        log.info("vmnet %s: %s detached", self.group, node)

    def switch_pid(self) -> int | None:
        """The pid of this group's running switch, or None."""
        pid = _read_pid(self.pidfile)
        if pid is None or not _pid_alive(pid):
            return None
        cmd = process_cmdline(pid)
        if not cmd or "vde_switch" not in os.path.basename(cmd[0]) or str(self.socket) not in cmd:
            return None
        return pid

    # --- internals -------------------------------------------------------------
    def _live_users(self) -> list[str]:
        live: list[str] = []
        if not self.users.is_dir():
            return live
        for entry in self.users.iterdir():
            pid = _read_pid(entry)
            if pid is not None and _pid_alive(pid):
                live.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        return live

    def _start_switch(self) -> None:
        binary = shutil.which(self.vde_switch)
        if binary is None:
            raise InfrastructureError(
                f"vmnet {self.group}: '{self.vde_switch}' not found on this host "
                "(install the vde2 package)"
            )
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.socket)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary,
            "--sock",
            str(self.socket),
            "--mode",
            "0600",
            "--dirmode",
            "0700",
            "--daemon",
            "--pidfile",
            str(self.pidfile),
        ]
        # --daemon: the switch outlives the process that started it, because
        # the group's other VMs may belong to another dispatcher process.
        result = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
        if result.returncode != 0:
            raise InfrastructureError(
                f"vmnet {self.group}: vde_switch failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        deadline = time.monotonic() + SWITCH_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.switch_pid() is not None and (self.socket / "ctl").exists():
                log.info(
                    "vmnet %s: vde_switch %s on %s", self.group, self.switch_pid(), self.socket
                )
                return
            time.sleep(0.02)
        raise InfrastructureError(
            f"vmnet {self.group}: vde_switch did not come up on {self.socket} "
            f"within {SWITCH_START_TIMEOUT:.0f} s"
        )

    def _stop_switch(self) -> None:
        pid = self.switch_pid()
        if pid is not None:
            _terminate(pid)
            log.info("vmnet %s: vde_switch %s stopped", self.group, pid)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.dir)


def _terminate(pid: int, grace: float = 3.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _runtime_lock(runtime_dir: Path) -> Iterator[None]:
    """One lock for every network of the runtime dir: attach/detach are rare and quick."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    with open(runtime_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reap_stale_networks(runtime_dir: str | Path | None = None) -> list[str]:
    """Stop the switches whose users are all gone; returns their directory names."""
    root = Path(runtime_dir) if runtime_dir else default_runtime_dir()
    if not root.is_dir():
        return []
    reaped = []
    with _runtime_lock(root):
        for net_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            net = GroupNetwork(net_dir.name, root)
            net.dir = net_dir
            net.socket = net_dir / "switch"
            net.pidfile = net_dir / "switch.pid"
            net.users = net_dir / "users"
            if not net._live_users():
                net._stop_switch()
                reaped.append(net_dir.name)
    if reaped:
        log.info("vmnet: reaped stale networks %s", ", ".join(reaped))
    return reaped
