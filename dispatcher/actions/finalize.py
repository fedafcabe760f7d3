"""``finalize``: always the last action — power off, close the console and the MultiNode client."""

from __future__ import annotations

import contextlib
from typing import Any

from dispatcher.action import Action, JobContext


class FinalizeAction(Action):
    """Runs after success and after failure alike (the runner calls it in ``finally``).

    It never raises for a device that is already off or a console already
    closed; a power-off that fails is logged as an error and reported by the
    runner (the device may still be on: the lab must know).
    """

    name = "finalize"
    description = "power off, close the console, release the MultiNode client"
    # after a job timeout or a cancel too: a board left on is the lab's problem
    always_runs = True

    def __init__(self, timeout: float | None = 60.0) -> None:
        super().__init__(timeout=timeout)
        self.problems: list[str] = []

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Power off, close the console and the MultiNode client, whatever happened."""
        self.problems = []
        device = ctx.device
        if device is not None:
            try:
                device.power_off()
                ctx.log.info(f"{device.name}: powered off")
            except Exception as exc:
                self.problems.append(f"power off of {device.name} failed: {exc}")
                ctx.log.error(f"finalize: power off of {device.name} failed: {exc}")
            with contextlib.suppress(Exception):
                device.close()
        if connection is not None and hasattr(connection, "close"):
            with contextlib.suppress(Exception):
                connection.close()
        if ctx.multinode is not None:
            try:
                ctx.multinode.close()
            except Exception as exc:
                ctx.log.warning(f"finalize: closing the MultiNode client failed: {exc}")
        return None
