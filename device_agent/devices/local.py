"""Device type ``local``: a board emulated on this host.

Power on starts a real shell (``/bin/sh -i`` by default) with a clean
environment, a known prompt, and HOME and cwd in the device's own working
directory, which acts as its root filesystem. The shell's controlling
terminal is one pseudo-terminal (the "board side"); a second pseudo-terminal
plays the serial line, and a relay process (``device_agent/pty_relay.py``)
copies bytes between the two masters: like a real board's UART, it costs the
dispatcher's Python process nothing. The dispatcher opens the serial line's
slave path with pyserial, exactly as it opens ``/dev/ttyUSB0`` for a real
board, so the same console driver serves both — and the board side keeps a
normal cooked tty (echo, ``ICRNL``...), as a real board's getty does.

Where the host allows it (root, ``ip netns``, ``unshare``), the shell runs in
its own network namespace and UTS namespace (``device_agent/board_network.py``):
``eth0`` is one end of a veth
pair whose other end is on a host bridge without an address (boards on the
bridge reach each other, nothing else), with an address from the
documentation range 192.0.2.0/24. ``settings.network`` chooses: ``auto``
(the default: use it when possible, say so in the log otherwise), ``netns``
(required), ``none``.

Where the host allows it (root, ``unshare``: ``settings.mount_namespace``,
``auto`` by default), the shell also runs in its own mount namespace with a
private root (``device_agent/board_root.py``): its own ``/tmp``, where LAVA's
MultiNode cache files are, and the job's overlay at ``/lava-<job id>``, as
LAVA's tests expect them; everything else is the host's. Otherwise one log
line says why, and the board's ``/tmp`` and overlay are directories of its own.

Power off kills every process of the board's session, its descendants and
everything left in its network and mount namespaces (found in ``/proc`` by
``device_agent/board_processes.py``), then removes the network namespace and
stops the relay; the mounts die with the mount namespace.

A dispatcher killed with SIGKILL cannot power off: ``board.pid`` in the
device's work dir (pid, start time, namespace and the board's
``LAVAMQ_BOARD`` marker; like QEMU's ``-pidfile``) lets the next
``power_on`` (and a restarted dispatcher, through
:meth:`LocalDevice.reap_leftover`) find and kill what the board left running,
daemons that left the board's session (``setsid cmd &``) included: they are
found by the recorded marker, as power off finds them by the current one.
The relay needs no such record: it exits by itself when the dispatcher is
gone (see ``device_agent/pty_relay.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tty
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from device_agent.board_network import BoardNetwork, delete_netns, netns_pids, netns_supported
from device_agent.board_processes import (
    is_zombie_or_gone,
    marked_processes,
    namespace_processes,
    proc_stat,
    session_processes,
    start_time,
)
from device_agent.board_root import MARK_FILE, MODES, BoardRoot, tool
from device_agent.console import Console, ConsoleBase
from device_agent.devices.base import BootRequest, Capabilities, Device
from schemas.errors import ConfigurationError, InfrastructureError

log = logging.getLogger(__name__)

#: the directory holding the ``device_agent`` package (for the relay process)
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "LocalDevice",
    "marked_processes",
    "netns_supported",
    "proc_stat",
    "session_processes",
    "start_time",
]


class LocalDevice(Device):
    """A shell on this host standing in for a board (its root is a work directory)."""

    device_type = "local"
    #: the host's package manager is the lab's, not the job's; /tmp is the board's own
    #: only where the host allows a private mount namespace (see :meth:`cache_dir`)
    capabilities = Capabilities(installs_packages=False, private_tmp=False, network=True)
    known_settings: ClassVar[frozenset[str]] = frozenset(
        {
            "shell",
            "network",
            "mount_namespace",
            "ipv4",
            "bridge",
            "hostname",
            "env",
            "answer_cursor_query",
            "emulates",
            "install_packages",
        }
    )

    def __init__(self, config: Mapping[str, Any], workdir: str | Path) -> None:
        super().__init__(config, workdir)
        self.root = self.workdir
        self.shell: str = self.settings.get("shell", "/bin/sh")
        self.ps1 = f"lavamq@{self.name}# "
        self.network = BoardNetwork(self.name, self.settings)
        self.root_fs = BoardRoot(
            self.name, self.workdir, str(self.settings.get("mount_namespace", "auto"))
        )
        #: why the board has no private root ("" when it has one); None: not decided yet
        self._root_note: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        # inherited by everything the board starts, so power off finds escapees
        self.marker = f"{self.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
        self._board_master: int | None = None
        self._line_master: int | None = None
        self._line_slave: int | None = None
        self._line_path: str | None = None
        self._relay: subprocess.Popen[bytes] | None = None
        #: write end of the relay's lifeline pipe: closing it stops the relay
        self._lifeline: int | None = None
        # settings.emulates: a local board standing in for another device type
        # (the embedded lab of `lavamq run`, examples): it registers, is scheduled
        # and boots as that type
        if self.settings.get("emulates"):
            self.device_type = str(self.settings["emulates"])  # type: ignore[misc]

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """What is wrong with a ``local`` board's config (network mode, address)."""
        problems = super().validate_config(config)
        settings = config.get("settings", {})
        if settings.get("network", "auto") not in ("auto", "netns", "none"):
            problems.append("settings.network: must be 'auto', 'netns' or 'none'")
        if settings.get("mount_namespace", "auto") not in MODES:
            problems.append("settings.mount_namespace: must be 'auto', 'required' or 'none'")
        ipv4 = settings.get("ipv4")
        if ipv4 is not None and not re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", str(ipv4)):
            problems.append(f"settings.ipv4: {ipv4!r} is not an address/prefix like 192.0.2.5/24")
        emulates = settings.get("emulates")
        if emulates is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", str(emulates)):
            problems.append(f"settings.emulates: {emulates!r} is not a device type name")
        if config.get("console") not in (None, "pty"):
            problems.append("console: a local board's console is always 'pty'")
        if not isinstance(settings.get("install_packages", False), bool):
            problems.append("settings.install_packages: must be true or false")
        return problems

    def packages_refused(self) -> str:
        """A local board is the dispatcher host: its package manager is the lab's, so
        ``install: deps`` and ``lava-install-packages`` run only where the host config
        says ``install_packages = true``."""
        if self.settings.get("install_packages") is True:
            return ""
        return (
            "a local board is the dispatcher host (the host config does not set "
            "install_packages = true for it)"
        )

    def default_prompts(self) -> list[str]:
        """The board shell's own prompt, ``lavamq@NAME# ``."""
        return [re.escape(f"lavamq@{self.name}# ")]

    def prepare_boot(self, request: BootRequest) -> list[str]:
        """The job log says when the board will not have LAVA's fixed paths."""
        note = self._private_root_note()
        return [note] if note else []

    def _private_root_note(self) -> str:
        """Decide once whether the board gets a private root (``device_agent/board_root.py``);
        the one log line saying why not, "" when it does."""
        if self._root_note is None:
            self._root_note = self.root_fs.decide()
            if self._root_note:
                level = logging.INFO if self.root_fs.mode == "none" else logging.WARNING
                log.log(level, "%s", self._root_note)
        return self._root_note

    @property
    def netns(self) -> str | None:
        """The board's network namespace while it has one."""
        return self.network.netns

    def address(self) -> str:
        """This board's eth0 address (settings.ipv4, or derived from its name)."""
        return self.network.address()

    # --- power ----------------------------------------------------------------
    @property
    def powered(self) -> bool:
        """Whether the board's shell runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pidfile(self) -> Path:
        """Where the board's pid and marker are kept, for a restarted dispatcher to reap it."""
        return self.workdir / "board.pid"

    def _write_pidfile(self, pid: int) -> None:
        record = {
            "pid": pid,
            "start": start_time(pid),
            "netns": self.netns,
            # a restarted dispatcher has a new marker: this one finds the old
            # board's escapees (processes that left its session)
            "marker": self.marker,
        }
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(self.pidfile)

    def reap_leftover(self) -> list[int]:
        """Kill a board shell (its session and descendants) left by a dispatcher that
        died without powering off; returns the pids killed. The board this object
        powered on is not a leftover.

        Processes that left the board's session (``setsid cmd &``) are found by
        the ``LAVAMQ_BOARD`` marker recorded in ``board.pid``; a record written
        before the marker was recorded is still honoured (session and namespace
        only)."""
        try:
            record = json.loads(self.pidfile.read_text())
            pid = int(record["pid"])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("device %s: unreadable %s (%s); removed", self.name, self.pidfile, exc)
            self.pidfile.unlink(missing_ok=True)
            return []
        if self.proc is not None and self.proc.pid == pid:
            return []
        started = start_time(pid)
        if started is not None and started != record.get("start"):
            # the pid is someone else's now; while any process of the old session
            # lived, Linux would not have reused its id
            victims: set[int] = set()
        else:
            victims = session_processes(pid) | ({pid} if started is not None else set())
        marker = record.get("marker")
        if isinstance(marker, str) and marker and not (marker == self.marker and self.powered):
            # a marker is unique to one power on: whatever carries it is that board's,
            # even when its session leader's pid has been reused since; so is the mount
            # namespace whose root holds it (a process that also dropped its environment)
            victims |= marked_processes(marker) | namespace_processes(MARK_FILE, marker)
        netns = record.get("netns")
        if netns:
            victims |= netns_pids(str(netns))
        victims.discard(os.getpid())
        killed = []
        for victim in sorted(victims):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
        if killed:
            log.warning(
                "device %s: killed %d leftover process(es) of a board shell (pid %d): %s",
                self.name,
                len(killed),
                pid,
                killed,
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(is_zombie_or_gone(v) for v in killed):
            time.sleep(0.01)
        if netns:
            delete_netns(str(netns))
        if not self.powered:
            self.root_fs.teardown()
        self.pidfile.unlink(missing_ok=True)
        return killed

    def _ensure_line(self) -> str:
        """The serial line exists from the first connect until the device is dropped."""
        if self._line_path is None:
            master, slave = os.openpty()
            # the line must not echo or translate: it is a wire, not a terminal
            tty.setraw(slave)
            self._line_master, self._line_slave = master, slave
            self._line_path = os.ttyname(slave)
        return self._line_path

    def power_on(self) -> None:
        """Start the board's shell on its pseudo-terminal (in its namespace when it has one)."""
        if self.powered:
            return
        if not shutil.which(self.shell):
            raise ConfigurationError(f"device {self.name}: shell {self.shell} not found")
        self.root.mkdir(parents=True, exist_ok=True)
        self.reap_leftover()
        private = not self._private_root_note()
        if not private:
            (self.root / "tmp").mkdir(exist_ok=True)
        self._ensure_line()
        network = self.settings.get("network", "auto")
        argv = ["setsid", "--ctty"]
        if network != "none":
            if netns_supported():
                self.network.setup()
            elif network == "netns":
                raise InfrastructureError(
                    f"device {self.name}: settings.network = 'netns' but this host cannot "
                    "create network namespaces (needs root, ip netns and unshare)"
                )
            else:
                log.info(
                    "device %s: no network namespace on this host; sharing its network", self.name
                )
        hostname = str(self.settings.get("hostname", self.name)) if self.netns else ""
        # the board's mounts never reach the host; the host's unmounts reach the board
        mount_ns = ["--mount", "--propagation", "slave"] if private else []
        if self.netns:
            argv += ["ip", "netns", "exec", self.netns, tool("unshare"), "--uts", *mount_ns]
        elif private:
            argv += [tool("unshare"), *mount_ns]
        if private:
            argv += self.root_fs.command(self.root, self.shell, hostname)
        elif self.netns:
            argv += [self.shell, "-c", 'hostname "$0" && exec "$1" -i', hostname, self.shell]
        else:
            argv += [self.shell, "-i"]
        env = {
            "HOME": str(self.root),
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PS1": self.ps1,
            "PS2": "> ",
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            "TMPDIR": self.cache_dir(),
            "SHELL": self.shell,
            "USER": "root" if os.geteuid() == 0 else os.environ.get("USER", "lava"),
            "LAVAMQ_BOARD": self.marker,
        }
        env.update({str(k): str(v) for k, v in self.settings.get("env", {}).items()})
        board_master, board_slave = os.openpty()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=board_slave,
                stdout=board_slave,
                stderr=board_slave,
                cwd=self.root,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            os.close(board_master)
            self.network.teardown()
            self.root_fs.teardown()
            raise InfrastructureError(f"device {self.name}: cannot start {argv}: {exc}") from exc
        finally:
            os.close(board_slave)
        self._board_master = board_master
        self._write_pidfile(self.proc.pid)
        self._start_relay()
        log.info(
            "device %s: powered on (pid %d%s%s)",
            self.name,
            self.proc.pid,
            f", netns {self.netns}" if self.netns else "",
            ", private root" if private else "",
        )

    def _start_relay(self) -> None:
        """Start the relay process between the board's tty and the serial line."""
        assert self._board_master is not None and self._line_master is not None
        lifeline_read, lifeline_write = os.pipe()
        env = dict(os.environ)
        # the relay is found where this package is, whatever the dispatcher's cwd
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        fds = (self._board_master, self._line_master, lifeline_read)
        try:
            self._relay = subprocess.Popen(
                [sys.executable, "-m", "device_agent.pty_relay", *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            os.close(lifeline_write)
            raise InfrastructureError(
                f"device {self.name}: cannot start the pty relay: {exc}"
            ) from exc
        finally:
            os.close(lifeline_read)
        self._lifeline = lifeline_write

    def _stop_relay(self) -> None:
        relay, self._relay = self._relay, None
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)  # end of file on the lifeline: the relay exits
            self._lifeline = None
        if relay is None:
            return
        try:
            relay.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("device %s: pty relay %d did not stop; killing it", self.name, relay.pid)
            relay.kill()
            relay.wait(timeout=5)

    def power_off(self) -> None:
        """Kill the board and all it started, and tear down its network namespace."""
        proc, self.proc = self.proc, None
        if proc is not None:
            self._kill_board(proc)
            self.pidfile.unlink(missing_ok=True)
        self._stop_relay()
        if self._board_master is not None:
            with contextlib.suppress(OSError):
                os.close(self._board_master)
            self._board_master = None
        self.network.teardown()
        self.root_fs.teardown()

    def _kill_board(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 10
        while True:
            victims = session_processes(proc.pid) | marked_processes(self.marker) | {proc.pid}
            victims |= self.network.pids()
            if self.root_fs.active:
                victims |= namespace_processes(MARK_FILE, self.marker)
            alive = [pid for pid in victims if proc_stat(pid) is not None]
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
            if not alive or all(is_zombie_or_gone(pid) for pid in alive):
                break
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"device {self.name}: processes {sorted(alive)} survived SIGKILL for 10 s"
                )
        if proc.poll() is None:
            proc.wait(timeout=5)
        log.info("device %s: powered off", self.name)

    @staticmethod
    def _is_zombie_or_gone(pid: int) -> bool:
        return is_zombie_or_gone(pid)

    # --- console and overlay --------------------------------------------------
    def _open_console(self) -> ConsoleBase:
        return Console(
            self._ensure_line(),
            name=self.name,
            prompts=self.prompts,
            answer_cursor_query=bool(self.settings.get("answer_cursor_query", False)),
        )

    def cache_dir(self) -> str:
        """LAVA's /tmp in a private root; without one, the board's own directory here."""
        return str(self.root / "tmp") if self._private_root_note() else "/tmp"

    def install_overlay(
        self, overlay_dir: Path, timeout: float, target: str = "", *, job_id: str = ""
    ) -> str:
        """In a private root, bind-mount the overlay at LAVA's ``/lava-<job id>``; else
        (or to a ``target`` directory of this host) copy it into the board's directory."""
        if not target and self.root_fs.active and self.proc is not None and self.powered:
            name = f"/lava-{job_id}" if job_id else "/lava-overlay"
            return self.root_fs.mount_overlay(self.proc.pid, overlay_dir, name, timeout)
        dest = Path(target) if target else self.root / "lava-overlay"
        if dest.resolve() != overlay_dir.resolve():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(overlay_dir, dest, symlinks=True)
        return str(dest)

    def shutdown(self) -> None:
        """Power off, close the console and free the serial line."""
        super().shutdown()
        for fd in (self._line_master, self._line_slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._line_master = self._line_slave = None
        self._line_path = None
