"""A ``local`` board's own view of the filesystem: LAVA's fixed paths in a mount namespace.

LAVA's test shells read ``/tmp/lava_multi_node_cache.txt`` and find their
overlay at ``/lava-<job id>/`` (``bin/``, ``tests/``, ``results/``). Several
boards of one group on one host cannot all own those paths on the host, so,
where the host allows it, each board's shell runs in its own mount namespace
with its own root:

- the root is a small tmpfs holding one entry per entry of the host's ``/``:
  every directory is the host's, bind-mounted recursively (``/usr``, ``/etc``,
  ``/home``, ``/proc``, ``/dev`` ...), every symbolic link is copied, every
  file bind-mounted;
- ``/tmp`` is not the host's: it is an empty directory of that tmpfs, the
  board's own (the device's work directory, the board's HOME, is bound at its
  own path when it lives under the host's ``/tmp``);
- ``/lava-<id>`` is the job's overlay directory, bind-mounted there when the
  test shell installs it (:meth:`BoardRoot.mount_overlay`);
- ``/.lavamq-board`` (:data:`MARK_FILE`) holds the board's marker, by which
  power off finds every process of the namespace
  (``device_agent/board_processes.py``: ``namespace_processes``).

The namespace takes the host's mount events (``--propagation slave``) and
gives none back: its mounts never appear in the host's mount table, and they
die with the namespace's last process. The host keeps only the empty
directory the root is mounted on (``<work dir>/.root``), removed at power off.
It is a view, not a jail: the board is root on the host, shares its users,
processes, network (without a network namespace) and everything outside
``/tmp`` and ``/lava-<id>``.

``settings.mount_namespace`` chooses: ``auto`` (the default: a private root
where the host allows it; otherwise one log line says why and the board uses
per-board directories, as before), ``required`` (a host that cannot is an
error), ``none``.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from schemas.errors import InfrastructureError

log = logging.getLogger(__name__)

#: ``settings.mount_namespace`` values
MODES = ("auto", "required", "none")
#: the file at the root of a board's namespace that holds its marker
MARK_FILE = ".lavamq-board"
#: what building and entering a private root needs on the host
TOOLS = ("unshare", "nsenter", "chroot", "mount", "mountpoint", "umount")


def tool(name: str) -> str:
    """``name`` as found on this process's PATH: the board's own PATH (``settings.env``)
    may lack ``/usr/sbin``, where ``chroot`` is."""
    return shutil.which(name) or name


def unavailable(probe_dir: Path) -> str:
    """Why this host cannot give a board a private root ("" when it can): detected, by
    mounting a tmpfs on ``probe_dir`` in a throwaway mount namespace."""
    if os.geteuid() != 0:
        return f"not root (uid {os.geteuid()})"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found on PATH"
    argv = [tool("unshare"), "--mount", "--propagation", "private"]
    argv += [tool("mount"), "-t", "tmpfs", "lavamq-probe", str(probe_dir)]
    try:
        probe = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare --mount cannot run: {exc}"
    if probe.returncode != 0:
        return f"unshare --mount failed: {probe.stderr.strip() or f'exit {probe.returncode}'}"
    return ""


class BoardRoot:
    """The private root of one board: decided and wrapped around the shell at power on,
    given the overlay by the test shell, its mount point removed at power off."""

    def __init__(self, name: str, workdir: Path, mode: str = "auto") -> None:
        self.name = name
        self.workdir = workdir
        self.mode = mode
        #: where the root's tmpfs is mounted, inside the board's namespace only
        self.mountpoint = workdir / ".root"
        #: the board runs in its private root (set by :meth:`decide`)
        self.active = False

    def decide(self) -> str:
        """Whether the next power on gets a private root; returns the log line when it
        does not ("" when it does). ``required`` on a host that cannot: an error."""
        self.active = False
        if self.mode == "none":
            return (
                f"device {self.name}: no private mount namespace (settings.mount_namespace = "
                "'none'): /tmp and the overlay are per-board directories of the device"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        why = unavailable(self.workdir)
        if why and self.mode == "required":
            raise InfrastructureError(
                f"device {self.name}: settings.mount_namespace = 'required' but this host "
                f"cannot give the board a private root: {why}"
            )
        if why:
            return (
                f"device {self.name}: no private mount namespace ({why}): /tmp and the "
                "overlay are per-board directories of the device, not LAVA's fixed paths"
            )
        self.active = True
        return ""

    def command(self, cwd: Path, shell: str, hostname: str = "") -> list[str]:
        """The command that builds the root in the (new) mount namespace it runs in and
        execs ``shell -i`` chrooted there, in ``cwd`` (and sets ``hostname`` first)."""
        root = str(self.mountpoint)
        mount, chroot, set_hostname = (
            shlex.quote(tool(t)) for t in ("mount", "chroot", "hostname")
        )
        lines = [
            "set -e",
            f"R={shlex.quote(root)}",
            f'mkdir -p "$R" && {mount} -t tmpfs -o mode=0755 lavamq-board "$R"',
            # the root is under a directory bound below: unbindable, it is not bound into itself
            f'{mount} --make-unbindable "$R"',
        ]
        for entry in sorted(os.scandir("/"), key=lambda e: e.name):
            name = shlex.quote(entry.name)
            if entry.name == "tmp":
                continue
            if entry.is_symlink():
                lines.append(f'ln -s {shlex.quote(os.readlink(entry.path))} "$R"/{name}')
            elif entry.is_dir():
                lines.append(f'mkdir "$R"/{name} && {mount} --rbind /{name} "$R"/{name}')
            elif entry.is_file():
                lines.append(f': > "$R"/{name} && {mount} --bind /{name} "$R"/{name}')
        lines.append('mkdir -m 1777 "$R/tmp"')
        home = cwd.resolve()
        # the host's /tmp is not the board's: its work dir (and a shell kept there) come
        # along, alone, at their own paths
        for needed in (home, Path(os.path.abspath(shell))):
            if needed.parts[:2] != ("/", "tmp"):
                continue
            q = shlex.quote(str(needed))
            if needed.is_dir():
                lines.append(f'mkdir -p "$R"{q} && {mount} --bind {q} "$R"{q}')
            else:
                parent = shlex.quote(str(needed.parent))
                lines.append(f'mkdir -p "$R"{parent} && : > "$R"{q} && {mount} --bind {q} "$R"{q}')
        lines.append('printf "%s\\n" "$LAVAMQ_BOARD" > "$R/' + MARK_FILE + '"')
        if hostname:
            lines.append(f"{set_hostname} {shlex.quote(hostname)}")
        lines.append(
            f'exec {chroot} "$R" {shlex.quote(shell)} -c \'cd "$0" && exec "$1" -i\' '
            f"{shlex.quote(str(home))} {shlex.quote(shell)}"
        )
        return ["/bin/sh", "-c", "\n".join(lines)]

    def mount_overlay(self, pid: int, source: Path, target: str, timeout: float) -> str:
        """Bind-mount ``source`` (a host directory) at ``target`` (``/lava-<id>``) in the
        root of the board whose shell is ``pid``; returns ``target``."""
        is_mounted, umount, mount = (
            shlex.quote(tool(t)) for t in ("mountpoint", "umount", "mount")
        )
        script = (
            f'set -e; d="$1$2"; if {is_mounted} -q "$d"; then {umount} -l "$d"; fi; '
            f'mkdir -p "$d"; {mount} --bind "$3" "$d"'
        )
        argv = [tool("nsenter"), "--target", str(pid), "--mount", "--", "/bin/sh", "-c", script]
        argv += ["lavamq-overlay", str(self.mountpoint), target, str(Path(source).resolve())]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise InfrastructureError(
                f"device {self.name}: cannot mount the overlay at {target}: {exc}"
            ) from exc
        if done.returncode != 0:
            raise InfrastructureError(
                f"device {self.name}: mounting the overlay at {target} failed "
                f"(exit {done.returncode}): {done.stderr.strip()}"
            )
        return target

    def teardown(self) -> None:
        """Remove the (empty) mount point once the namespace is gone."""
        try:
            self.mountpoint.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("device %s: cannot remove %s: %s", self.name, self.mountpoint, exc)
