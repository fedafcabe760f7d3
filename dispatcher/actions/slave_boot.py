"""``boot-<type>-slave``: a slave node (``is_slave``) is booted by its master, not by lavamq.

LAVA 2014's slave/master protocol, with the dispatcher speaking for the slave
(which has no running system yet) through the node's MultiNode client:

1. ``lava-send lava_ms_slave_data device=... device_type=... node=...``: the
   slave's boot information, for the master;
2. ``lava-wait lava_ms_ready``: the master is ready to boot it;
3. ``lava-send lava_ms_boot``: the slave is ready to be booted;
4. ``lava-wait lava_ms_boot_done``: the master has booted it. This is the
   hook the master's test definition triggers (``lava-send lava_ms_boot_done``
   once it has done its part of the boot: served the kernel, written the
   boot configuration ...); for a local board it is the moment power is
   applied. Its data (e.g. ``cmdline=...``) is logged.

Then the device is powered on and brought to its prompt exactly as a normal
boot does, and lavamq runs the slave's tests. If the group fails meanwhile
(the master died), the waits end at once with the group's failure.
"""

from __future__ import annotations

from typing import Any

from dispatcher.action import JobContext, remaining
from dispatcher.actions.boot import BootAction
from schemas.errors import JobError

SLAVE_DATA = "lava_ms_slave_data"
MASTER_READY = "lava_ms_ready"
SLAVE_BOOT = "lava_ms_boot"
MASTER_BOOTED = "lava_ms_boot_done"


class SlaveBootAction(BootAction):
    """Boot an ``is_slave`` node only once its master says so (LAVA 2014's lava_ms_* protocol)."""

    description = "wait for the master to boot this slave (lava_ms_* messages), then boot"

    def __init__(
        self, device_type: str, parameters: dict[str, Any], timeout: float | None = None
    ) -> None:
        super().__init__(device_type, parameters, timeout)
        self.name = f"boot-{device_type}-slave"

    def validate(self, ctx: JobContext) -> list[str]:
        """A slave is booted by its master: it needs a MultiNode group."""
        problems = super().validate(ctx)
        if not ctx.group:
            problems.append(f"{self.name}: an is_slave role needs a MultiNode group")
        return problems

    def _wait(self, ctx: JobContext, message_id: str, deadline: float | None) -> Any:
        ctx.log.info(f"{self.name}: lava-wait {message_id}")
        data = ctx.multinode.wait(message_id, timeout=remaining(deadline))
        ctx.log.info(f"{self.name}: {message_id} received from {', '.join(sorted(data)) or '?'}")
        return data

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Send the master this slave's data, wait for it to boot the slave, then reach a prompt."""
        if ctx.multinode is None:
            raise JobError(f"{self.name}: no MultiNode client: a slave is booted by its master")
        info = {
            "node": ctx.node,
            "device": str(getattr(ctx.device, "name", ctx.node)),
            "device_type": self.device_type,
            "role": ctx.role,
        }
        ctx.log.info(
            f"{self.name}: lava-send {SLAVE_DATA} " + " ".join(f"{k}={v}" for k, v in info.items())
        )
        ctx.multinode.send(SLAVE_DATA, info)
        self._wait(ctx, MASTER_READY, deadline)
        ctx.log.info(f"{self.name}: lava-send {SLAVE_BOOT}")
        ctx.multinode.send(SLAVE_BOOT, {"node": ctx.node})
        booted = self._wait(ctx, MASTER_BOOTED, deadline)
        for sender, data in sorted(booted.items()):
            if data:
                details = " ".join(f"{k}={v}" for k, v in sorted(data.items()))
                ctx.log.info(f"{self.name}: boot data from {sender}: {details}")
        return super().run(connection, deadline, ctx)
