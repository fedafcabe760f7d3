"""What one dispatcher process claims on its machine: its workdir and its devices.

A machine may run several ``lavamq dispatcher`` processes (one per rack, per
USB hub, or to spread 64 consoles over more than one CPU), each its own
lavamq host: its own ``[host] name``, broker user and ``workdir``, and devices
no other process lists (docs/dispatcher.md). Two processes must never share
either: a shared workdir shares the journal (one would report the other's
running sub-jobs ``incomplete`` at start) and the boards' pid files (one
would kill the other's boards); a device in two processes would be powered
off at one's start while the other runs a job on it, and its queue consumed
twice. So at start a dispatcher takes a lock on its workdir and checks that
no other consumer reads its device queues, and refuses to start otherwise,
naming what is in use.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from broker_config import topology
from broker_config.broker import Broker
from broker_config.errors import NotFound
from schemas.errors import ConfigurationError

LOCK_NAME = "dispatcher.lock"


def lock_workdir(workdir: Path, host: str) -> TextIO:
    """Hold ``workdir`` for this process (until the returned file is closed or it exits)."""
    path = workdir / LOCK_NAME
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise ConfigurationError(
            f"dispatcher {host}: workdir {workdir} is in use by {holder}: each "
            "dispatcher process of a machine needs a workdir of its own (docs/dispatcher.md)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"dispatcher {host} (pid {os.getpid()})\n")
    fh.flush()
    return fh


def check_devices_unserved(
    broker: Broker, host: str, devices: Iterable[str], wait: float = 5.0
) -> None:
    """Refuse to start if another dispatcher consumes one of ``devices``' queues.

    A dispatcher killed a moment ago may still count as a consumer until the
    broker has seen its connection close: ask again for up to ``wait`` seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        served = {}
        for device in devices:
            name = topology.device_queue_name(device)
            try:
                count = broker.consumer_count(name)
            except NotFound:
                continue  # not declared yet: nobody serves it
            if count:
                served[device] = (name, count)
        if not served or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if served:
        which = ", ".join(
            f"{device} (queue {queue}: {n} consumer(s))"
            for device, (queue, n) in sorted(served.items())
        )
        raise ConfigurationError(
            f"dispatcher {host}: another dispatcher already serves {which}: a device "
            "belongs to one dispatcher process only (docs/dispatcher.md)"
        )
