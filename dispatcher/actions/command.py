"""``lava-command-run`` (2014 ``lava_command_run``) and ``submit-results``."""

from __future__ import annotations

import time
from typing import Any

from dispatcher.action import Action, ActionTimeout, JobContext, remaining, timeout_detail
from dispatcher.actions.test_shell import record_result
from schemas.errors import JobError


class CommandRunAction(Action):
    """Type each command at the device's shell; a non-zero exit fails the job
    unless ``fail_ok`` is set. Each command is also a result (suite ``lava``)."""

    name = "lava-command-run"
    description = "run shell commands on the device"

    def __init__(self, parameters: dict[str, Any], timeout: float | None = None) -> None:
        super().__init__(timeout=timeout, parameters=parameters)
        commands = parameters.get("commands")
        self.commands: list[Any] = list(commands) if isinstance(commands, list) else []
        self.fail_ok = bool(parameters.get("fail_ok", False))

    def validate(self, ctx: JobContext) -> list[str]:
        """The commands must be a non-empty list of non-empty strings."""
        problems = super().validate(ctx)
        if not self.commands:
            problems.append(f"{self.name}: parameters.commands must be a non-empty list")
        for i, cmd in enumerate(self.commands):
            if not isinstance(cmd, str) or not cmd.strip():
                problems.append(f"{self.name}: commands[{i}] must be a non-empty string")
        return problems

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Run each command at the prompt; a non-zero exit fails the job unless ``fail_ok``."""
        if connection is None:
            raise JobError(f"{self.name}: no console: the device was not booted")
        from device_agent.console import ConsoleTimeout

        allowed = remaining(deadline)
        for i, command in enumerate(self.commands):
            left = remaining(deadline)
            ctx.log.input(command)
            try:
                output, rc = connection.run(command, 600.0 if left is None else left)
            except ConsoleTimeout:
                if deadline is None or time.monotonic() < deadline:
                    raise  # the console stopped answering early: the lab's fault
                # the action's own deadline ran out: the job's timeout, not the lab
                recent = getattr(connection, "recent_output", None)
                last = f"; last output: {recent(300)!r}" if callable(recent) else ""
                raise ActionTimeout(
                    f"{self.name} timed out: {timeout_detail(self, allowed)} while "
                    f"command {i + 1} {command!r} ran{last}"
                ) from None
            result = "pass" if rc == 0 else "fail"
            record_result(ctx, {"suite": "lava", "case": f"command-{i + 1}", "result": result})
            if rc != 0 and not self.fail_ok:
                raise JobError(
                    f"{self.name}: command {i + 1} {command!r} exited with {rc}: {output[-300:]}"
                )
        return connection


class SubmitResultsAction(Action):
    """2014 ``submit_results``/``submit_results_on_host``: kept so old job files run.

    Results already travel to ``lava.results`` as they happen and the
    coordinator aggregates them per group; this action only says so.
    """

    name = "submit-results"
    description = "results are published as they happen; nothing left to submit"

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Results were published as they happened: only say so in the log."""
        server = self.parameters.get("server")
        ctx.log.info(
            "results were published to lava.results as they happened"
            + (f"; the 2014 server {server!r} is not used" if server else "")
        )
        return connection
