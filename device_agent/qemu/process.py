"""One running QEMU: its process group, pidfile, QMP socket and console port.

No VM outlives its job or its dispatcher:

* QEMU runs in its own process group, started from one long-lived spawner
  thread with ``PR_SET_PDEATHSIG`` = SIGKILL, so the kernel kills it when the
  dispatcher dies, even by SIGKILL;
* :meth:`QemuProcess.stop` asks QEMU to ``quit`` over QMP, then SIGTERM, then
  SIGKILL to the process group;
* an ``atexit`` hook and (when the process has none of its own) a
  SIGTERM/SIGHUP handler stop every VM still running;
* ``-pidfile`` in the runtime directory lets a restarted dispatcher reap
  leftovers (:func:`reap_leftover_vms`).

The spawner thread and the handlers come with the first VM started, not
with the import.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from device_agent.qemu.host import port_listening, port_taken, runtime_root
from device_agent.vmnet import process_cmdline
from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_spawner: ThreadPoolExecutor | None = None
_live: dict[int, QemuProcess] = {}
_live_lock = threading.Lock()
_handlers_installed = False


def _spawner_thread() -> ThreadPoolExecutor:
    """The one long-lived thread that forks every QEMU (made on first use).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends;
    spawning from this thread ties the VMs to the process instead of to
    whichever job thread booted them.
    """
    global _spawner
    with _live_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qemu-spawner")
        return _spawner


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
    """Stop every VM at exit and on SIGTERM/SIGHUP (once, when the first VM starts)."""
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


class PortInUse(InfrastructureError):
    """QEMU could not start because its console port was taken meanwhile: try another."""


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
        """QEMU's pid once started."""
        return self.popen.pid if self.popen is not None else None

    @property
    def console_url(self) -> str:
        """The pyserial URL of the VM's serial console."""
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

        self.popen = _spawner_thread().submit(spawn).result()
        with _live_lock:
            _live[self.popen.pid] = self
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                with _live_lock:
                    _live.pop(self.popen.pid, None)
                # another process may have taken the port between free_port and bind
                error = PortInUse if port_taken(self.port) else InfrastructureError
                raise error(
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
        """The end of what QEMU printed (not its notice that it waits for the console)."""
        try:
            data = self.logfile.read_bytes()[-size:]
        except OSError:
            return "(no QEMU output)"
        lines = [
            line
            for line in data.decode(errors="replace").splitlines()
            if line.strip() and "QEMU waiting for connection on" not in line
        ]
        return "\n".join(lines) or "(no QEMU output)"

    def running(self) -> bool:
        """Whether QEMU was started and has not exited."""
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
