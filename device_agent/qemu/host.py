"""What this host offers QEMU: the emulator binary, free console ports, the QEMUs running."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from device_agent.vmnet import lavamq_runtime_dir, process_cmdline
from schemas.errors import InfrastructureError


def runtime_root() -> Path:
    """Where VMs keep their runtime files (``$LAVAMQ_QEMU_RUNTIME_DIR`` to override)."""
    return lavamq_runtime_dir("qemu", "LAVAMQ_QEMU_RUNTIME_DIR")


#: LAVA's ``context: arch`` values → the suffix of ``qemu-system-*``
QEMU_ARCH = {
    "amd64": "x86_64",
    "x86_64": "x86_64",
    "i386": "i386",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "arm": "arm",
    "armhf": "arm",
    "armel": "arm",
}

#: the Debian package holding ``qemu-system-<arch>``
_DEBIAN_PACKAGES = (
    (("x86_64", "i386"), "qemu-system-x86"),
    (("aarch64", "arm"), "qemu-system-arm"),
    (("ppc", "ppc64", "ppc64le"), "qemu-system-ppc"),
    (("mips", "mipsel", "mips64", "mips64el"), "qemu-system-mips"),
    (("sparc", "sparc64"), "qemu-system-sparc"),
)


def qemu_arch(arch: str) -> str:
    """The ``qemu-system-*`` suffix for a LAVA ``context: arch`` (``amd64`` → ``x86_64``)."""
    return QEMU_ARCH.get(arch, arch)


def debian_package(arch: str) -> str:
    """The Debian package that installs ``qemu-system-<arch>``."""
    arch = qemu_arch(arch)
    for arches, package in _DEBIAN_PACKAGES:
        if arch in arches:
            return package
    return "qemu-system-misc"


def find_qemu(arch: str = "x86_64", binary: str | None = None) -> str:
    """Path of the QEMU system emulator; InfrastructureError naming the package if missing."""
    name = binary or f"qemu-system-{qemu_arch(arch)}"
    path = shutil.which(name)
    if path is None:
        raise InfrastructureError(
            f"qemu: '{name}' is not installed on this host: install the Debian package "
            f"{debian_package(arch)} (apt-get install {debian_package(arch)}) or set "
            "settings.qemu_binary"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(port: int) -> bool:
    """Whether 127.0.0.1:port cannot be bound now (EADDRINUSE): someone else holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def port_listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc, no connection made).

    Connecting would use up QEMU's ``wait=on`` console connection.
    """
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        return False
    return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def qemu_pids(marker: str | None = None) -> list[int]:
    """PIDs of running QEMU system emulators (optionally whose command line holds ``marker``).

    A scan of /proc, so tests can check that nothing survived.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmd = process_cmdline(int(entry))
        if not cmd or not os.path.basename(cmd[0]).startswith("qemu-system-"):
            continue
        if marker is not None and not any(marker in part for part in cmd):
            continue
        if pid_alive(int(entry)):
            found.append(int(entry))
    return found
