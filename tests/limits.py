"""Ceilings for tests of hostile input: memory and time a piece of code may use.

A test that feeds a loader something built to blow up must not take the
shared machine down with it when it fails: ``memory_ceiling`` caps this
process's address space for the block (an allocation past it raises
``MemoryError`` in the code under test), ``time_ceiling`` interrupts the block
with ``TimeCeiling``. ``within_limits`` holds one example to a memory and a
time limit and fails it (``LimitExceeded``) past either: its traced peak is
measured and asserted, the ceilings stop a runaway.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import tracemalloc
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


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


class LimitExceeded(AssertionError):
    """One example used more memory or time than its limit: the test fails, naming which."""


def within_limits(
    fun: Callable[..., T], *args: Any, memory_bytes: int, seconds: float
) -> tuple[T, int]:
    """``fun(*args)`` held to ``memory_bytes`` and ``seconds``; (its result, its peak bytes).

    Both limits are enforced and asserted: the Python allocations it makes are
    traced (``tracemalloc``) and a peak over ``memory_bytes`` fails with
    ``LimitExceeded``, even when it returned; so does running past ``seconds``
    (``time_ceiling``), or an allocation past the address-space guard
    (``memory_ceiling`` at four times the limit, so a runaway allocation stops
    before it takes the machine). Whatever ``fun`` raises otherwise is raised.
    """
    raised: Exception | None = None
    tracemalloc.start()
    try:
        with memory_ceiling(4 * memory_bytes), time_ceiling(seconds):
            try:
                result = fun(*args)
            except (MemoryError, TimeCeiling):
                raise
            except Exception as exc:  # the example's own outcome, once its limits are judged
                raised = exc
    except MemoryError:
        raise LimitExceeded(f"needed more than {4 * memory_bytes} bytes of address space") from None
    except TimeCeiling:
        raise LimitExceeded(f"ran more than {seconds:g} s") from None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if peak > memory_bytes:
        raise LimitExceeded(f"allocated {peak} bytes at its peak, over {memory_bytes}")
    if raised is not None:
        raise raised
    return result, peak


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
