"""What a ``local`` board left running, found in ``/proc``.

A board's processes are found four ways, because each alone misses some: its
session (and every descendant, even those that left it), the ``LAVAMQ_BOARD``
marker in their environment (a daemon that double-forked out of the session,
``setsid cmd &``), its network namespace (``ip netns pids``, in
``device_agent/board_network.py``) and its mount namespace (a process that
also dropped its environment, ``env -i setsid cmd &``: see
:func:`namespace_processes`). The start time tells a pid from its reuse.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its end
    return raw[raw.rfind(")") + 2 :].split()


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[1]), int(fields[3]))


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): tells a pid from its reuse."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_zombie_or_gone(pid: int) -> bool:
    """True once ``pid`` has died (a zombie waits only for its parent's wait)."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def session_processes(session: int) -> set[int]:
    """Every process of ``session`` and all their descendants (even those that left it)."""
    table: dict[int, tuple[int, int]] = {}
    for pid in _pids():
        stat = proc_stat(pid)
        if stat is not None:
            table[pid] = stat
    members = {pid for pid, (_, sid) in table.items() if sid == session}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return members


def marked_processes(marker: str) -> set[int]:
    """Processes whose environment carries ``LAVAMQ_BOARD=<marker>``.

    A process that double-forks out of the board's session (``setsid cmd &``)
    is reparented to init and leaves the session: neither its session id nor
    its parent link lead back to the board any more, but its environment does.
    """
    needle = f"\0LAVAMQ_BOARD={marker}\0".encode()
    found = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = b"\0" + fh.read()
        except OSError:
            continue
        if needle in environ:
            found.add(pid)
    return found


def mount_namespace(pid: int) -> int | None:
    """The inode of ``pid``'s mount namespace (None if it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def namespace_processes(mark_file: str, marker: str) -> set[int]:
    """Every process in the mount namespace whose root holds ``mark_file`` saying ``marker``.

    A board with a private root (``device_agent/board_root.py``) writes its
    marker there. A namespace's inode number is reused once it is freed, so it
    alone could name a stranger's namespace after a restart; the file in the
    namespace's own root cannot. The caller's own namespace is never a board's.
    """
    own = mount_namespace(os.getpid())
    by_namespace: dict[int, list[int]] = {}
    for pid in _pids():
        ns = mount_namespace(pid)
        if ns is not None and ns != own:
            by_namespace.setdefault(ns, []).append(pid)
    found: set[int] = set()
    for members in by_namespace.values():
        for pid in members:
            try:
                with open(f"/proc/{pid}/root/{mark_file}", encoding="utf-8") as fh:
                    text = fh.read().strip()
            except (OSError, UnicodeDecodeError):
                continue  # gone, or a root without the file: ask another member
            if text == marker:
                found.update(members)
            break
    return found
