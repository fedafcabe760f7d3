"""Ceilings for tests of hostile input: memory and time a piece of code may use.

A test that feeds a loader something built to blow up must not take the
shared machine down with it when it fails: ``memory_ceiling`` caps this
process's address space for the block (an allocation past it raises
``MemoryError`` in the code under test), ``time_ceiling`` interrupts the block
with ``TimeCeiling``. Both are guards around one example, far above what a
passing example needs, not measurements.
"""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator
from types import FrameType


class TimeCeiling(Exception):
    """The block ran past its time ceiling."""


def address_space() -> int:
    """This process's virtual memory size now, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def memory_ceiling(extra_bytes: int) -> Iterator[None]:
    """Cap the address space at what the process uses now plus ``extra_bytes``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def time_ceiling(seconds: float) -> Iterator[None]:
    """Interrupt the block (``TimeCeiling``) once it has run ``seconds`` (main thread only)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeCeiling(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def limit_child(memory_bytes: int) -> None:
    """``preexec_fn`` for a subprocess: cap its address space."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


# --- loaders that misbehave, for the submission validator's worker (``module:function``) ---


def hog(text: str, source: str) -> object:
    """Allocates until the worker's memory limit stops it."""
    held = []
    while True:
        held.append(bytearray(16 << 20))


def sleeper(text: str, source: str) -> object:
    """Never returns."""
    import time

    while True:
        time.sleep(60)


def buggy(text: str, source: str) -> object:
    """A loader bug."""
    raise KeyError("roles")
