"""Device type ``qemu``: a virtual machine booted from the job's images.

QEMU runs with the job's kernel + initramfs (``kernel`` and ``ramdisk`` /
``initrd`` images of the deploy action) or a disk image (``image``/``disk``/
``rootfs``); its serial port is a TCP server on 127.0.0.1
(``-serial tcp:127.0.0.1:PORT,server=on,wait=on,nodelay=on``), opened through
the same pyserial console as every other device (``socket://127.0.0.1:PORT``).
``wait=on`` keeps the VM paused until the console is connected, so not a byte
of boot output is lost.

Acceleration: KVM when it really works here (``/dev/kvm`` opens, a VM can be
created, and a probe boot of the kernel reaches its first panic under
``-accel kvm``), TCG otherwise. The probe result is cached per host boot.

No VM outlives its job or its dispatcher:

* QEMU runs in its own process group, started from one long-lived spawner
  thread with ``PR_SET_PDEATHSIG`` = SIGKILL, so the kernel kills it when the
  dispatcher dies, even by SIGKILL;
* ``power_off`` asks QEMU to ``quit`` over QMP, then SIGTERM, then SIGKILL to
  the process group;
* an ``atexit`` hook and (when the process has none of its own) a SIGTERM/SIGHUP
  handler power off every VM still running;
* ``-pidfile`` in the runtime directory lets a restarted dispatcher reap
  leftovers (:func:`reap_leftover_vms`), and ``power_on`` first kills any VM
  left behind for the same device.

The overlay (``lava-*`` helpers and test definitions) reaches the VM as a
second cpio archive appended to the initramfs (the kernel unpacks every
archive of a concatenated ``-initrd``); :meth:`QemuDevice.install_overlay`
then only has to return where it is. Without a ramdisk (disk boot) or when the
overlay comes after boot, it is typed through the console like on any board.

Settings (``[device.settings]``): ``qemu_binary``, ``arch`` (x86_64),
``memory`` (MiB, default 128, at least 96), ``cpus`` (1), ``accel``
(``auto``/``kvm``/``tcg``; env ``LAVAMQ_QEMU_ACCEL`` overrides ``auto``),
``kernel_args`` (appended), ``extra_args`` (list), ``runtime_dir``,
``vmnet_dir``, ``network`` (``true``: a group network when in a group).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, ClassVar

from device_agent.console import Console, ConsoleBase
from device_agent.devices.base import Device
from device_agent.vmnet import GroupNetwork, VmNic, lavamq_runtime_dir, process_cmdline
from schemas.errors import ConfigurationError, InfrastructureError, JobError

log = logging.getLogger(__name__)

DEFAULT_PROMPT = r"lavamq-vm# "
MIN_MEMORY_MB = 96
KVM_PROBE_TIMEOUT = 10.0
#: where the overlay lands inside the VM when it travels in the initramfs
OVERLAY_TARGET = "/lava-overlay"
KERNEL_IMAGE_KEYS = ("kernel",)
RAMDISK_IMAGE_KEYS = ("ramdisk", "initrd", "initramfs")
DISK_IMAGE_KEYS = ("image", "disk", "rootfs", "system")

_PR_SET_PDEATHSIG = 1


def runtime_root() -> Path:
    """Where VMs keep their runtime files (``$LAVAMQ_QEMU_RUNTIME_DIR`` to override)."""
    return lavamq_runtime_dir("qemu", "LAVAMQ_QEMU_RUNTIME_DIR")


# --- helpers ------------------------------------------------------------------
def find_qemu(arch: str = "x86_64", binary: str | None = None) -> str:
    """Path of the QEMU system emulator; InfrastructureError if missing."""
    name = binary or f"qemu-system-{arch}"
    path = shutil.which(name)
    if path is None:
        raise InfrastructureError(
            f"qemu: '{name}' not found on this host (install qemu-system-x86 or set "
            "settings.qemu_binary)"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _pid_alive(pid: int) -> bool:
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
        if _pid_alive(int(entry)):
            found.append(int(entry))
    return found


# --- cpio (newc) --------------------------------------------------------------
def _cpio_entry(out: IO[bytes], name: str, mode: int, data: bytes, ino: int, mtime: int) -> None:
    encoded = name.encode() + b"\0"
    header = "070701" + "".join(
        f"{value:08X}"
        for value in (
            ino,
            mode,
            0,  # uid: root
            0,  # gid
            2 if stat.S_ISDIR(mode) else 1,
            mtime,
            len(data),
            0,
            0,
            0,
            0,
            len(encoded),
            0,
        )
    )
    out.write(header.encode("ascii") + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def write_cpio(out: IO[bytes], tree: Path, target: str) -> None:
    """Write ``tree`` as a newc cpio archive whose files land under ``target``."""
    target = "/" + target.strip("/")
    ino = 1
    mtime = int(time.time())
    # the parents of target first, so the kernel can create the files
    parts = [p for p in target.strip("/").split("/") if p]
    for depth in range(1, len(parts) + 1):
        _cpio_entry(out, "/".join(parts[:depth]), stat.S_IFDIR | 0o755, b"", ino, mtime)
        ino += 1
    prefix = "/".join(parts)
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            _cpio_entry(out, name, st.st_mode, os.readlink(path).encode(), ino, mtime)
        elif stat.S_ISDIR(st.st_mode):
            _cpio_entry(out, name, st.st_mode, b"", ino, mtime)
        elif stat.S_ISREG(st.st_mode):
            _cpio_entry(out, name, st.st_mode, path.read_bytes(), ino, mtime)
        else:
            continue
        ino += 1
    _cpio_entry(out, "TRAILER!!!", 0, b"", 0, 0)


def build_initrd(
    parts: Sequence[Path], out: Path, overlay: Path | None = None, target: str = OVERLAY_TARGET
) -> Path:
    """Concatenate initramfs archives (+ the overlay as one more cpio) into ``out``.

    Each part is padded to 4 bytes: the kernel looks for the next archive's
    header on a 4-byte boundary.
    """
    with open(out, "wb") as fh:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)
            fh.write(b"\0" * (-fh.tell() % 4))
        if overlay is not None:
            write_cpio(fh, overlay, target)
    return out


# --- acceleration ---------------------------------------------------------------
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


# --- process management -------------------------------------------------------
def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends; spawning
# from this long-lived thread ties the VMs to the process instead of to
# whichever job thread booted them.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qemu-spawner")
_live: dict[int, QemuProcess] = {}
_live_lock = threading.Lock()
_handlers_installed = False


def _kill_all_vms() -> None:
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(graceful=False)


def _on_signal(signum: int, frame: Any) -> None:
    _kill_all_vms()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_kill_all_vms)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        # a process with its own handler (the dispatcher daemon) powers off
        # its devices itself; only stand in for the default "die at once"
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_signal)


class QemuProcess:
    """One running QEMU: its process group, pidfile, QMP socket and console port."""

    def __init__(
        self, name: str, cmd: list[str], *, pidfile: Path, qmp: Path, port: int, logfile: Path
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.pidfile = pidfile
        self.qmp = qmp
        self.port = port
        self.logfile = logfile
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def console_url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start QEMU and wait until its console port listens."""
        _install_handlers()

        def spawn() -> subprocess.Popen[bytes]:
            with open(self.logfile, "ab") as logfh:
                return subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logfh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_set_pdeathsig,  # in the spawner thread, see above
                    close_fds=True,
                )

        self.popen = _spawner.submit(spawn).result()
        with _live_lock:
            _live[self.popen.pid] = self
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                with _live_lock:
                    _live.pop(self.popen.pid, None)
                raise InfrastructureError(
                    f"qemu {self.name}: exited with {self.popen.returncode} at start: "
                    f"{self.log_tail()}"
                )
            if port_listening(self.port):
                return
            if time.monotonic() > deadline:
                self.stop(graceful=False)
                raise InfrastructureError(
                    f"qemu {self.name}: console port 127.0.0.1:{self.port} not listening after "
                    f"{timeout:g} s: {self.log_tail()}"
                )
            time.sleep(0.01)

    def log_tail(self, size: int = 600) -> str:
        try:
            data = self.logfile.read_bytes()[-size:]
        except OSError:
            return "(no QEMU output)"
        return data.decode(errors="replace").strip() or "(no QEMU output)"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _qmp_quit(self, timeout: float) -> bool:
        """Ask QEMU to quit over QMP; True if the request went through."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.qmp))
                reader = sock.makefile("rb")
                reader.readline()  # greeting
                for command in ("qmp_capabilities", "quit"):
                    sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
                    while True:
                        reply = json.loads(reader.readline() or b"{}")
                        if "return" in reply or "error" in reply or not reply:
                            break
                return True
        except (OSError, ValueError):
            return False

    def stop(self, graceful: bool = True, timeout: float = 5.0) -> None:
        """End the VM: QMP quit, then SIGTERM, then SIGKILL to the whole process group."""
        popen = self.popen
        if popen is None:
            return
        try:
            if popen.poll() is None and graceful and self._qmp_quit(min(timeout, 2.0)):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout)
            for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
                if popen.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(wait)
            # the group may hold helpers even after QEMU itself is gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        finally:
            with _live_lock:
                _live.pop(popen.pid, None)
            for path in (self.pidfile, self.qmp):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def reap_leftover_vms(
    runtime_dir: str | Path | None = None, devices: Iterable[str] | None = None
) -> list[int]:
    """Kill VMs left by a dispatcher that died; returns the pids killed.

    Each VM wrote ``-pidfile <runtime_dir>/<device>.pid``; a pid is only
    killed if its command line is a QEMU holding that very pidfile path.
    ``devices`` limits it to those devices' pidfiles (a dispatcher starting
    reaps its own devices, not another's sharing the directory).
    """
    root = Path(runtime_dir) if runtime_dir else runtime_root()
    killed: list[int] = []
    if not root.is_dir():
        return killed
    with _live_lock:
        ours = set(_live)
    if devices is None:
        pidfiles = sorted(root.glob("*.pid"))
    else:
        pidfiles = [root / f"{name}.pid" for name in sorted(set(devices))]
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        cmd = process_cmdline(pid)
        if (
            pid not in ours
            and cmd
            and os.path.basename(cmd[0]).startswith("qemu-system-")
            and str(pidfile) in cmd
        ):
            log.warning("qemu: killing leftover VM %s (%s)", pid, pidfile)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        if pid not in ours:
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
    return killed


# --- the device type ----------------------------------------------------------
class QemuDevice(Device):
    """A QEMU virtual machine booted from the job's deployed images."""

    device_type: ClassVar[str] = "qemu"
    known_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "qemu_binary",
            "arch",
            "memory",
            "cpus",
            "accel",
            "kernel_args",
            "extra_args",
            "runtime_dir",
            "vmnet_dir",
            "network",
            "console_args",
        }
    )

    def __init__(self, config: Mapping[str, Any], workdir: str | Path) -> None:
        super().__init__(config, workdir)
        self.arch = str(self.settings.get("arch", "x86_64"))
        self.memory = int(self.settings.get("memory", 128))
        self.cpus = int(self.settings.get("cpus", 1))
        self.accel_setting = str(self.settings.get("accel", "auto"))
        self.runtime_dir = Path(self.settings.get("runtime_dir") or runtime_root())
        self.vmnet_dir = self.settings.get("vmnet_dir")
        self.network_enabled = bool(self.settings.get("network", True))
        self.images: dict[str, Path] = {}
        self.overlay_dir: Path | None = None
        self.overlay_in_initrd = False
        self.job_kernel_args: list[str] = []
        self.group: str | None = None
        self.node: str = self.name
        self.members: list[str] | None = None
        self.nic: VmNic | None = None
        self._network: GroupNetwork | None = None
        self.process: QemuProcess | None = None
        self.accel: str | None = None
        #: seconds from QEMU start to the first prompt of the last boot
        self.last_boot_seconds: float | None = None
        self._qemu_started = 0.0
        #: the running VM was started by connect() and has not been booted yet
        self._fresh = False

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        problems = super().validate_config(config)
        settings = config.get("settings", {})
        try:
            memory = int(settings.get("memory", 128))
            if memory < MIN_MEMORY_MB:
                problems.append(
                    f"settings.memory: {memory} MiB is too little: the test image needs at "
                    f"least {MIN_MEMORY_MB}"
                )
        except (TypeError, ValueError):
            problems.append("settings.memory: must be a number of MiB")
        accel = str(settings.get("accel", "auto"))
        if accel not in ("auto", "kvm", "tcg"):
            problems.append(f"settings.accel: must be auto, kvm or tcg (got {accel!r})")
        extra = settings.get("extra_args", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            problems.append("settings.extra_args: must be a list of strings")
        return problems

    def default_prompts(self) -> list[str]:
        return [DEFAULT_PROMPT]

    def describe(self) -> dict[str, Any]:
        data = super().describe()
        data.update({"arch": self.arch, "memory": self.memory, "accel": self.accel_setting})
        return data

    # --- what the job hands over -----------------------------------------------
    def set_images(self, images: Mapping[str, str | Path]) -> None:
        """The deploy action's local image paths, by image name (kernel, ramdisk, ...)."""
        self.images = {name: Path(path) for name, path in images.items()}

    def set_group(self, group: str | None, node: str, members: Sequence[str] | None) -> None:
        """The MultiNode group this VM belongs to: it joins that group's network."""
        self.group = group
        self.node = node
        self.members = list(members) if members is not None else None

    def set_kernel_args(self, args: Sequence[str] | str) -> None:
        self.job_kernel_args = args.split() if isinstance(args, str) else list(args)

    def set_overlay(self, overlay_dir: str | Path | None) -> None:
        """Ship ``overlay_dir`` inside the initramfs of the next boot (at /lava-overlay)."""
        self.overlay_dir = Path(overlay_dir) if overlay_dir is not None else None

    # --- images -> command line --------------------------------------------------
    def _image(self, keys: Sequence[str]) -> Path | None:
        for key in keys:
            if key in self.images:
                path = self.images[key]
                if not path.is_file():
                    raise JobError(f"device {self.name}: image {key!r} is missing: {path}")
                return path
        return None

    def boot_media(self) -> tuple[Path | None, Path | None, Path | None]:
        """(kernel, ramdisk, disk) from the deployed images; JobError if unbootable."""
        kernel = self._image(KERNEL_IMAGE_KEYS)
        ramdisk = self._image(RAMDISK_IMAGE_KEYS)
        disk = self._image(DISK_IMAGE_KEYS)
        if kernel is None and disk is None:
            deployed = ", ".join(sorted(self.images)) or "none"
            raise JobError(
                f"device {self.name}: a qemu boot needs a 'kernel' (with 'ramdisk') or a disk "
                f"'image' from the deploy action (deployed: {deployed})"
            )
        if ramdisk is not None and kernel is None:
            raise JobError(f"device {self.name}: a 'ramdisk' was deployed without a 'kernel'")
        return kernel, ramdisk, disk

    def _disk_format(self, disk: Path) -> str:
        with open(disk, "rb") as fh:
            return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"

    def command_line(self, port: int, accel: str) -> list[str]:
        kernel, ramdisk, disk = self.boot_media()
        qemu = find_qemu(self.arch, self.settings.get("qemu_binary"))
        pidfile = self.runtime_dir / f"{self.name}.pid"
        qmp = self.runtime_dir / f"{self.name}.qmp"
        cmd = [
            qemu,
            "-name",
            f"lavamq-{self.name}",
            "-accel",
            accel,
            "-m",
            str(self.memory),
            "-smp",
            str(self.cpus),
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-pidfile",
            str(pidfile),
            "-qmp",
            f"unix:{qmp},server=on,wait=off",
            "-serial",
            f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
        ]
        if kernel is not None:
            append = [
                "console=ttyS0,115200",
                "panic=-1",
                "quiet",
                f"lavamq.hostname={self.node}",
            ]
            if self.nic is not None:
                append += self.nic.kernel_args()
            append += str(self.settings.get("kernel_args", "")).split()
            append += self.job_kernel_args
            if disk is not None and not any(a.startswith("root=") for a in append):
                append.append("root=/dev/vda")
            cmd += ["-kernel", str(kernel), "-append", " ".join(append)]
            initrd = self._initrd(ramdisk)
            if initrd is not None:
                cmd += ["-initrd", str(initrd)]
        if disk is not None:
            cmd += [
                "-drive",
                f"file={disk},format={self._disk_format(disk)},if=virtio,snapshot=on",
            ]
            if kernel is None:
                cmd += ["-boot", "c"]
        if self.nic is not None:
            cmd += self.nic.qemu_args()
        cmd += list(self.settings.get("extra_args", []))
        return cmd

    def _initrd(self, ramdisk: Path | None) -> Path | None:
        self.overlay_in_initrd = False
        if ramdisk is None:
            return None
        if self.overlay_dir is None:
            return ramdisk
        out = self.workdir / f"{self.name}-initrd-with-overlay.cpio"
        build_initrd([ramdisk], out, self.overlay_dir, OVERLAY_TARGET)
        self.overlay_in_initrd = True
        return out

    # --- power ---------------------------------------------------------------------
    def power_on(self) -> None:
        if self.process is not None and self.process.running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        reap_leftover_vms(self.runtime_dir)
        kernel, _, _ = self.boot_media()
        qemu = find_qemu(self.arch, self.settings.get("qemu_binary"))
        self.accel = choose_accel(self.accel_setting, qemu, kernel)
        if self.network_enabled and self.group and self.nic is None:
            self._network = GroupNetwork(self.group, self.vmnet_dir)
            self.nic = self._network.attach(self.node, self.members)
        last_error: InfrastructureError | None = None
        try:
            for _attempt in range(3):
                port = free_port()
                proc = QemuProcess(
                    self.name,
                    self.command_line(port, self.accel),
                    pidfile=self.runtime_dir / f"{self.name}.pid",
                    qmp=self.runtime_dir / f"{self.name}.qmp",
                    port=port,
                    logfile=self.workdir / f"qemu-{self.name}.log",
                )
                log.info("device %s: starting %s", self.name, " ".join(proc.cmd))
                try:
                    proc.start()
                except InfrastructureError as exc:
                    # another process may have taken the port between free_port and bind
                    last_error = exc
                    if "Address already in use" in str(exc):
                        continue
                    raise
                self.process = proc
                self._qemu_started = time.monotonic()
                return
            assert last_error is not None
            raise last_error
        except BaseException:
            self._leave_network()
            raise

    def power_off(self) -> None:
        """Stop the VM (QMP quit, SIGTERM, SIGKILL) and leave the group network."""
        if self.console is not None:
            self.close()
        proc, self.process = self.process, None
        try:
            if proc is not None:
                proc.stop()
                log.info("device %s: VM stopped", self.name)
        finally:
            self._leave_network()

    def _leave_network(self) -> None:
        network, self._network = self._network, None
        self.nic = None
        if network is not None:
            network.detach(self.node)

    # --- console and boot ----------------------------------------------------------
    def _open_console(self) -> ConsoleBase:
        if self.process is None or not self.process.running():
            raise InfrastructureError(f"device {self.name}: the VM is not running (power it on)")
        return Console(
            self.process.console_url,
            name=self.name,
            prompts=self.prompts,
            open_timeout=10.0,
        )

    def connect(self) -> ConsoleBase:
        """The VM's console; with images set and the VM off, this starts the VM.

        QEMU's console only exists once QEMU runs, and ``wait=on`` holds the
        guest until it is connected: a caller that opens the console before
        booting (to log every byte) gets the whole boot output, and the
        following :meth:`boot` uses this fresh VM instead of restarting it.
        """
        if (self.process is None or not self.process.running()) and self.images:
            self.power_on()
            self._fresh = True
        return super().connect()

    def boot(self, timeout: float, setup: Sequence[str] = ()) -> ConsoleBase:
        """Start the VM (unless :meth:`connect` just did) and wait for its shell prompt."""
        deadline = time.monotonic() + timeout
        fresh, self._fresh = self._fresh, False
        if not (fresh and self.process is not None and self.process.running()):
            self.power_off()
        try:
            self.power_on()
            console = self.connect()
            self.login(console, deadline)
            self.wait_for_prompt(console, deadline)
        except BaseException as exc:
            tail = self.process.log_tail(300) if self.process is not None else ""
            self.power_off()
            if isinstance(exc, InfrastructureError) and tail and tail != "(no QEMU output)":
                raise InfrastructureError(f"{exc} (QEMU said: {tail})") from exc
            raise
        self.last_boot_seconds = time.monotonic() - self._qemu_started
        log.info(
            "device %s: prompt after %.2f s (%s)", self.name, self.last_boot_seconds, self.accel
        )
        self.run_setup(console, setup, deadline)
        return console

    def install_overlay(self, overlay_dir: Path, timeout: float, target: str = "") -> str:
        """Where the overlay is in the VM: in the initramfs if it went in at boot."""
        if (
            self.overlay_in_initrd
            and self.overlay_dir is not None
            and Path(overlay_dir).resolve() == self.overlay_dir.resolve()
            and target in ("", OVERLAY_TARGET)
        ):
            return OVERLAY_TARGET
        return super().install_overlay(overlay_dir, timeout, target)
