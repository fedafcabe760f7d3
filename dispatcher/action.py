"""Actions and pipelines: how a sub-job runs.

A sub-job is a :class:`Pipeline` of :class:`Action` objects. Each action has
a kebab-case ``name`` users know from LAVA, a :meth:`Action.validate` that
returns *every* problem it sees (nothing runs until the whole pipeline
validates), a :meth:`Action.run` that receives the current connection (the
device console) and a monotonic deadline and may hand on a new connection,
and a :meth:`Action.cleanup` called after a failure.

Timeouts are deadlines (``time.monotonic()`` values) passed down; the one
order of precedence is in :func:`action_deadline`. No signals are used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.assignment import Timeouts
from dispatcher.joblog import JobLog
from schemas.errors import InfrastructureError, JobCanceled, JobError, LavamqError, classify

log = logging.getLogger(__name__)

DEFAULT_ACTION_TIMEOUT = 30 * 60.0


def action_deadline(
    now: float,
    *,
    action_timeout: float | None,
    parent_deadline: float | None = None,
    job_deadline: float | None = None,
) -> float | None:
    """The deadline of one action. The only place timeouts are combined.

    Order of precedence:
    1. the action's own timeout from the job file (``now + action_timeout``);
    2. capped by the enclosing action's deadline (a child never outlives its parent);
    3. capped by the job's deadline (the job timeout counted from the sub-job's start).
    ``None`` everywhere means no limit.
    """
    candidates = [d for d in (parent_deadline, job_deadline) if d is not None]
    if action_timeout is not None:
        candidates.append(now + action_timeout)
    return min(candidates) if candidates else None


def remaining(deadline: float | None, now: float | None = None) -> float | None:
    """Seconds left before ``deadline`` (never negative), None for no limit."""
    if deadline is None:
        return None
    return max(0.0, deadline - (time.monotonic() if now is None else now))


def fmt_duration(seconds: float) -> str:
    """``HH:MM:SS.mmm``, the duration format of LAVA's job logs."""
    seconds = max(0.0, seconds)
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    frac = seconds - int(seconds)
    return f"{h:02d}:{m:02d}:{s:02d}.{int(frac * 1000):03d}"


class ActionTimeout(JobError):
    """An action ran past its deadline (a JobError: the job's timeouts are too short)."""


@dataclass
class JobContext:
    """What the actions of one sub-job share."""

    job_id: str
    subjob_id: str
    node: str
    role: str
    log: JobLog
    workdir: Path
    device: Any = None
    group: str | None = None
    members: dict[str, str] = field(default_factory=dict)
    job_deadline: float | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: the job's secrets (name → value): written for the test shell, masked in logs
    secrets: dict[str, str] = field(default_factory=dict)
    #: the job's ``environment:``, exported in the test shell
    environment: dict[str, Any] = field(default_factory=dict)
    #: the job's ``context:`` for this node (the boot action hands it to the device)
    job_context: dict[str, Any] = field(default_factory=dict)
    #: results go here (a dict per result; the runner publishes them)
    publish_result: Callable[[dict[str, Any]], None] | None = None
    #: the MultiNode client for this node (None for single-node jobs/tests)
    multinode: Any = None
    #: data handed from one action to the next (image paths, overlay dir ...)
    data: dict[str, Any] = field(default_factory=dict)
    #: set by the runner when the daemon is stopping
    cancelled: Callable[[], bool] = lambda: False


def timeout_detail(action: Action, allowed: float | None) -> str:
    """The limit an action ran out of: its own timeout, and the time it really had
    when the job's (or an enclosing action's) deadline cut that short."""
    if action.timeout is None:
        return f"its {fmt_duration(allowed or 0.0)} ran out"
    text = f"its timeout {fmt_duration(action.timeout)} ran out"
    if allowed is not None and allowed < action.timeout - 1.0:
        text += f" (cut to {fmt_duration(allowed)} by the job's deadline)"
    return text


class Action:
    """One step of a sub-job."""

    name = "action"
    description = ""
    #: runs even when the sub-job was cancelled or the job's deadline passed,
    #: bounded by its own timeout only (finalize: the board must be powered off)
    always_runs = False

    def __init__(self, *, timeout: float | None = None, parameters: dict[str, Any] | None = None):
        self.timeout = timeout
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.pipeline: Pipeline | None = None
        self.level = ""

    def validate(self, ctx: JobContext) -> list[str]:
        """Every problem of this action (and its children); empty when it can run."""
        problems: list[str] = []
        if self.timeout is not None and self.timeout <= 0:
            problems.append(f"{self.name}: timeout must be positive (got {self.timeout:g})")
        if self.pipeline is not None:
            problems.extend(self.pipeline.validate(ctx))
        return problems

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Do the work; returns the connection for the next action."""
        if self.pipeline is not None:
            return self.pipeline.run(connection, deadline, ctx)
        return connection

    def cleanup(self, ctx: JobContext) -> None:
        """Undo what a failed run left behind (the default: the children's cleanup)."""
        if self.pipeline is not None:
            self.pipeline.cleanup(ctx)

    def describe(self) -> dict[str, Any]:
        """The action as data (class, name, level, timeout, children): the golden pipelines."""
        out: dict[str, Any] = {
            "class": type(self).__name__,
            "name": self.name,
            "level": self.level,
            "timeout": self.timeout,
        }
        if self.description:
            out["description"] = self.description
        if self.pipeline is not None:
            out["pipeline"] = self.pipeline.describe()
        return out

    def check_deadline(self, deadline: float | None, what: str = "") -> None:
        """Raise ActionTimeout once ``deadline`` has passed (``what`` says where)."""
        if deadline is not None and time.monotonic() >= deadline:
            detail = f" ({what})" if what else ""
            raise ActionTimeout(f"{self.name} timed out{detail}")


class Pipeline:
    """An ordered list of actions, run one after the other under deadlines."""

    def __init__(
        self, actions: list[Action] | None = None, *, parent_level: str = "", start: int = 1
    ) -> None:
        self.actions: list[Action] = []
        self.parent_level = parent_level
        #: number of the first action (finalize continues the main pipeline's numbering)
        self.start = start
        for action in actions or []:
            self.add(action)

    def add(self, action: Action) -> Action:
        """Append an action, numbering it (and its children) after the others."""
        number = len(self.actions) + self.start
        action.level = f"{self.parent_level}.{number}" if self.parent_level else str(number)
        if action.pipeline is not None:
            action.pipeline.relevel(action.level)
        self.actions.append(action)
        return action

    def relevel(self, parent_level: str) -> None:
        """Number the actions again under a new parent level."""
        old = list(self.actions)
        self.actions = []
        self.parent_level = parent_level
        for action in old:
            self.add(action)

    def validate(self, ctx: JobContext) -> list[str]:
        """Every problem of every action, before anything runs."""
        problems: list[str] = []
        for action in self.actions:
            try:
                problems.extend(action.validate(ctx))
            except LavamqError as exc:
                problems.append(f"{action.name}: {exc.message}")
        return problems

    def describe(self) -> list[dict[str, Any]]:
        """Each action as data, in order."""
        return [action.describe() for action in self.actions]

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Run the actions in order, each under its deadline; the last one's connection."""
        for action in self.actions:
            always = action.always_runs
            if ctx.cancelled() and not always:
                raise JobCanceled(f"{action.name}: the sub-job was cancelled before it started")
            start = time.monotonic()
            action_dl = action_deadline(
                start,
                action_timeout=action.timeout,
                parent_deadline=None if always else deadline,
                job_deadline=None if always else ctx.job_deadline,
            )
            left = remaining(action_dl, start)
            limit = f"timeout {fmt_duration(left)}" if left is not None else "no timeout"
            ctx.log.info(f"start: {action.level} {action.name} ({limit})", action=action.name)
            try:
                if action_dl is not None and left == 0:
                    raise ActionTimeout(f"{action.name}: no time left (the job's deadline passed)")
                connection = action.run(connection, action_dl, ctx)
            except BaseException as exc:
                duration = time.monotonic() - start
                err = classify(exc) if isinstance(exc, Exception) else exc
                message = getattr(err, "message", str(err))
                ctx.log.error(
                    f"{action.name} failed after {fmt_duration(duration)}: "
                    f"{getattr(err, 'error_type', type(err).__name__)}: {message}",
                    action=action.name,
                )
                ctx.log.info(
                    f"end: {action.level} {action.name} (duration {fmt_duration(duration)}) failed",
                    action=action.name,
                )
                if isinstance(exc, Exception) and err is not exc:
                    raise err from exc
                raise
            duration = time.monotonic() - start
            ctx.log.info(
                f"end: {action.level} {action.name} (duration {fmt_duration(duration)})",
                action=action.name,
            )
        return connection

    def cleanup(self, ctx: JobContext) -> None:
        """After a failure: every action's cleanup, last first (each must be safe to call
        whether or not its action ran; the runner calls this once, on the top pipeline)."""
        for action in reversed(self.actions):
            try:
                action.cleanup(ctx)
            except Exception as exc:
                ctx.log.warning(f"{action.name}: cleanup failed: {exc}")


class RetryAction(Action):
    """Run one child action again after a lab failure (never after a job error or a bug).

    LAVA's RetryAction: the lab's faults (a download server that hiccups) are
    retried with a short back-off while the deadline allows; the job's own
    faults and lavamq's bugs fail at once.
    """

    description = "retry when the lab (not the job) failed"

    def __init__(
        self, child: Action, *, name: str, retries: int = 3, timeout: float | None = None
    ) -> None:
        super().__init__(timeout=timeout)
        self.name = name
        self.retries = retries
        self.pipeline = Pipeline([child])

    def run(self, connection: Any, deadline: float | None, ctx: JobContext) -> Any:
        """Run the child again after an infrastructure error, up to ``retries`` times."""
        assert self.pipeline is not None
        for attempt in range(1, self.retries + 1):
            try:
                return self.pipeline.run(connection, deadline, ctx)
            except InfrastructureError as exc:
                left = remaining(deadline)
                if attempt == self.retries or (left is not None and left < 1):
                    raise
                ctx.log.warning(
                    f"{self.name}: attempt {attempt} of {self.retries} failed ({exc.message}); "
                    "retrying"
                )
                time.sleep(min(2.0 ** (attempt - 1), 5.0))
        return connection
