"""The wire between a ``local`` board's tty and its serial line, as its own process.

A ``local`` board plays a board whose UART is not the dispatcher's CPU: the
bytes its shell prints are copied from the board's pseudo-terminal to the
pseudo-terminal that plays the serial line (and keyboard input back) by this
small process, so a console flood does not cost the dispatcher's Python
process (its GIL) anything but reading the line, as with a real board.

Run by :class:`device_agent.devices.local.LocalDevice` as::

    python -m device_agent.pty_relay BOARD_FD LINE_FD LIFELINE_FD

with the three descriptors inherited. ``LIFELINE_FD`` is the read end of a
pipe whose write end only the dispatcher holds: it becomes readable (end of
file) when the dispatcher powers the board off or dies, even by SIGKILL, and
the relay exits. Only the standard library is imported: it starts in tens of
milliseconds.
"""

from __future__ import annotations

import os
import select
import sys

#: a tty hands out at most 4 KiB per read; up to this much is passed on at once
CHUNK = 65536


def read_waiting(fd: int, data: bytes, limit: int) -> bytes:
    """``data`` and whatever else ``fd`` (non-blocking) has ready, up to ``limit`` bytes."""
    parts = [data]
    size = len(data)
    while size < limit:
        try:
            more = os.read(fd, limit - size)
        except OSError:  # nothing more waiting (or gone: the next select says so)
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts) if len(parts) > 1 else data


def write_all(fd: int, data: bytes, lifeline: int) -> bool:
    """Write everything to non-blocking ``fd``; False when the lifeline says stop."""
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            ready, _, _ = select.select([lifeline], [fd], [])
            if lifeline in ready:
                return False
        except OSError:  # the other side is gone: what it was sent is lost, as on a wire
            return True
    return True


def relay(board: int, line: int, lifeline: int) -> None:
    """Copy board → line and line → board until ``lifeline`` is readable.

    When the board side reports end of file or an error (the shell and
    everything on its tty are gone: the board "halted"), the line is still
    drained, and what is typed is dropped, as on a board that stopped; a side
    that reports end of file is not watched any more.
    """
    for fd in (board, line):
        os.set_blocking(fd, False)
    watch = [board, line, lifeline]
    while True:
        ready, _, _ = select.select(watch, [], [])
        if lifeline in ready:
            return
        for fd in ready:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                # take what is already waiting and pass it on in one write
                data = read_waiting(fd, data, CHUNK)
            if not data:
                # end of file or an error: nothing more comes from this side
                watch = [w for w in watch if w != fd]
                continue
            if fd == line and board not in watch:
                continue
            if not write_all(line if fd == board else board, data, lifeline):
                return


def main(argv: list[str]) -> int:
    """The relay process's entry point: copy between the two ptys until the lifeline closes."""
    if len(argv) != 3 or not all(arg.isdigit() for arg in argv):
        print(
            "usage: python -m device_agent.pty_relay BOARD_FD LINE_FD LIFELINE_FD",
            file=sys.stderr,
        )
        return 2
    board, line, lifeline = (int(arg) for arg in argv)
    relay(board, line, lifeline)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
