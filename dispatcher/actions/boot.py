"""``boot-<device type>``: power the device on and bring it to a shell prompt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from device_agent.devices.base import BootRequest
from dispatcher.action import Action, ActionTimeout, JobContext, remaining, timeout_detail
from schemas.errors import JobError


class BootAction(Action):
    """Boot the device of this sub-job (``boot-local``, ``boot-serial``, ``boot-qemu`` ...).

    The device type does the work (``Device.boot``); this action gives it the
    time left and hands the console on as the connection.
    """

    description = "power on and wait for the shell prompt"

    def __init__(
        self, device_type: str, parameters: dict[str, Any], timeout: float | None = None
    ) -> None:
        super().__init__(timeout=timeout, parameters=parameters)
        self.device_type = device_type
        self.name = f"boot-{device_type}"

    def validate(self, ctx: JobContext) -> list[str]:
        """A boot needs a device of the action's device type."""
        problems = super().validate(ctx)
        if ctx.device is None:
            problems.append(f"{self.name}: no device to boot")
        elif getattr(ctx.device, "device_type", self.device_type) != self.device_type:
            problems.append(
                f"{self.name}: the job needs a {self.device_type} device but "
                f"{ctx.device.name} is a {ctx.device.device_type}"
            )
        return problems

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Hand the job's boot request to the device, boot it; the console."""
        left = remaining(deadline)
        timeout = 600.0 if left is None else left
        for warning in ctx.device.prepare_boot(self.request(ctx)):
            ctx.log.warning(f"{self.name}: {warning}")
        if hasattr(ctx.device, "set_group"):
            # a VM joins its group's network (device_agent/vmnet.py)
            ctx.device.set_group(ctx.group, ctx.node, list(ctx.members) or None)
        self._overlay_at_boot(ctx, deadline)
        ctx.log.info(f"booting {ctx.device.name} ({self.device_type})")
        attach = ctx.data.get("attach_console")
        early = None
        try:
            # open the console before power is applied so the boot output is logged
            early = ctx.device.connect()
        except Exception as exc:
            ctx.log.debug(f"console of {ctx.device.name} opens only after power on ({exc})")
        if early is not None and attach is not None:
            attach(early)
        from device_agent.console import ConsoleTimeout

        try:
            console = ctx.device.boot(timeout)
        except ConsoleTimeout as exc:
            if deadline is None or time.monotonic() < deadline:
                raise  # the console stopped answering before the deadline: the lab's fault
            # the action's own deadline ran out: the job's timeout, not the lab
            raise ActionTimeout(
                f"{self.name} timed out booting {ctx.device.name}: "
                f"{timeout_detail(self, left)}; {exc.message}"
            ) from None
        if console is not early and attach is not None:
            attach(console)
        if console is None:
            raise JobError(f"{self.name}: device {ctx.device.name} gave no console after boot")
        ctx.data["console"] = console
        return console

    def request(self, ctx: JobContext) -> BootRequest:
        """What the job's deploy and this boot action ask of the device."""
        prompts = self.parameters.get("prompts") or []
        auto_login = self.parameters.get("auto_login")
        return BootRequest(
            images={k: Path(v) for k, v in ctx.data.get("images", {}).items()},
            image_args=dict(ctx.data.get("image_args", {})),
            prompts=tuple([prompts] if isinstance(prompts, str) else prompts),
            auto_login=dict(auto_login) if isinstance(auto_login, dict) else {},
            context=dict(ctx.job_context),
        )

    def _overlay_at_boot(self, ctx: JobContext, deadline: float | None) -> None:
        """A device that takes the test overlay at boot (QEMU: in its initramfs) gets the
        overlay of the first test action after this boot, built now, as LAVA builds it
        during deploy: typing it through the console after boot costs far more."""
        if not hasattr(ctx.device, "set_overlay"):
            return
        actions = list(getattr(ctx.data.get("pipeline"), "actions", []))
        following = actions[actions.index(self) + 1 :] if self in actions else []
        for action in following:
            if isinstance(action, BootAction):
                return
            prepare = getattr(action, "prepare_overlay", None)
            if prepare is not None:
                ctx.device.set_overlay(prepare(ctx, deadline))
                ctx.log.info(f"overlay of {action.name} built before boot, to boot with")
                return

    def cleanup(self, ctx: JobContext) -> None:
        """Nothing to undo: finalize powers the device off."""
        # the finalize action powers off; nothing half-booted is left to undo here
        return None
