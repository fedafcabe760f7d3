"""KVM or TCG: what the setting asks, or (``auto``) what really works on this host.

KVM counts only when ``/dev/kvm`` opens, a VM can be created, and a probe
boot of the job's kernel reaches its first panic under ``-accel kvm``;
nested or half-working KVM can create VMs whose guests never run. The probe
result is cached per host boot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from device_agent.qemu.host import runtime_root
from schemas.errors import ConfigurationError

log = logging.getLogger(__name__)

KVM_PROBE_TIMEOUT = 10.0

_accel_cache: dict[tuple[str, str], str] = {}
_accel_lock = threading.Lock()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_device_usable() -> bool:
    """/dev/kvm opens and accepts KVM_CREATE_VM."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, 0xAE00) != 12:  # KVM_GET_API_VERSION
            return False
        vm = fcntl.ioctl(fd, 0xAE01, 0)  # KVM_CREATE_VM
        os.close(vm)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def probe_kvm(qemu: str, kernel: Path, timeout: float = KVM_PROBE_TIMEOUT) -> bool:
    """Boot ``kernel`` without a root file system under KVM: does it get to its panic?

    Nested or half-working KVM can create VMs whose guests never run (the
    kernel stalls before its first message); only booting tells.
    """
    cmd = [
        qemu,
        "-accel",
        "kvm",
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1 loglevel=4",
    ]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.info("kvm probe could not start %s: %s", qemu, exc)
        return False
    assert proc.stdout is not None
    output = b""
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    ok = False
    try:
        while time.monotonic() < deadline:
            chunk = proc.stdout.read(65536)
            if chunk:
                output += chunk
                if b"Kernel panic" in output or b"Run /init" in output:
                    ok = True
                    break
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    if not ok:
        log.info(
            "kvm probe: no kernel output under KVM: %s", output[-300:].decode(errors="replace")
        )
    return ok


def choose_accel(setting: str, qemu: str, kernel: Path | None) -> str:
    """``kvm`` or ``tcg``: what the setting asks, or (``auto``) what really works here."""
    setting = (setting or "auto").lower()
    if setting == "auto":
        setting = os.environ.get("LAVAMQ_QEMU_ACCEL", "auto").lower()
    if setting in ("kvm", "tcg"):
        return setting
    if setting != "auto":
        raise ConfigurationError(f"qemu: settings.accel must be auto, kvm or tcg (got {setting!r})")
    if not kvm_device_usable():
        return "tcg"
    if kernel is None:
        # nothing to probe with (disk boot): trust /dev/kvm
        return "kvm"
    key = (qemu, hashlib.sha256(kernel.read_bytes()).hexdigest()[:16])
    with _accel_lock:
        if key in _accel_cache:
            return _accel_cache[key]
        cache_file = runtime_root() / "kvm-probe.json"
        stamp = f"{_boot_id()} {key[0]} {os.stat(qemu).st_mtime_ns} {key[1]}"
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(cache_file.read_text())
            if cached.get("stamp") == stamp and cached.get("accel") in ("kvm", "tcg"):
                _accel_cache[key] = cached["accel"]
                return str(cached["accel"])
        accel = "kvm" if probe_kvm(qemu, kernel) else "tcg"
        log.info(
            "qemu: KVM %s on this host: using %s", "works" if accel == "kvm" else "fails", accel
        )
        _accel_cache[key] = accel
        with contextlib.suppress(OSError):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({"stamp": stamp, "accel": accel}))
        return accel
