"""Which pipeline action runs a job's action: a table keyed by action name and method.

LAVA picks an action's strategy from the job's action name (``deploy``,
``boot``, ``test``, or a 2014 command) and its method (``deploy: to:``,
``boot: method:``). :data:`ACTIONS` is that table; :func:`build_pipeline`
looks every plan item up in it. A new deploy or boot method is one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatcher.action import Action, Pipeline
from dispatcher.actions.boot import BootAction
from dispatcher.actions.command import CommandRunAction, SubmitResultsAction
from dispatcher.actions.deploy import DeployImagesAction
from dispatcher.actions.slave_boot import SlaveBootAction
from dispatcher.actions.test_shell import LavaTestShellAction
from dispatcher.assignment import Assignment, load_assignment
from schemas.errors import LavamqError
from schemas.jobmodel import JobPlan


@dataclass(frozen=True)
class Target:
    """What an action is built for: the device type, and whether its master boots it."""

    device_type: str
    slave: bool = False


#: ``factory(target, parameters, timeout) -> Action``
ActionFactory = Callable[[Target, dict[str, Any], float | None], Action]


def _boot(target: Target, params: dict[str, Any], timeout: float | None) -> Action:
    # an is_slave node is booted by its master (dispatcher/actions/slave_boot.py)
    if target.slave:
        return SlaveBootAction(target.device_type, params, timeout)
    return BootAction(target.device_type, params, timeout)


#: (action kind, method or None for any) → factory
ACTIONS: dict[tuple[str, str | None], ActionFactory] = {
    ("deploy", None): lambda t, p, timeout: DeployImagesAction(p, timeout),
    ("boot", None): _boot,
    ("test", None): lambda t, p, timeout: LavaTestShellAction(p, timeout),
    ("command", None): lambda t, p, timeout: CommandRunAction(p, timeout),
    ("submit", None): lambda t, p, timeout: SubmitResultsAction(timeout=timeout, parameters=p),
}

#: the parameter naming each kind's method
METHOD_KEYS = {"deploy": "to", "boot": "method"}


def method_of(kind: str, params: dict[str, Any]) -> str | None:
    """The method a job's action asks for (``deploy: to:``, ``boot: method:``)."""
    key = METHOD_KEYS.get(kind)
    value = params.get(key) if key else None
    return str(value) if value is not None else None


def lookup(kind: str, method: str | None) -> ActionFactory | None:
    """The factory for ``kind`` with ``method``, else the kind's default, else None."""
    return ACTIONS.get((kind, method)) or ACTIONS.get((kind, None))


def known_kinds() -> list[str]:
    """Every kind the table has, in its order (for error messages)."""
    return list(dict.fromkeys(kind for kind, _ in ACTIONS))


def build_pipeline(
    plan: dict[str, Any], device_type: str, timeouts: dict[str, Any]
) -> tuple[Pipeline, list[str]]:
    """The pipeline of a plan given as data (``JobPlan.subjob_dict``): see :func:`pipeline_for`."""
    body = {"job_id": 0, "subjob_id": 0, "node": "-", "device_type": device_type, "plan": plan}
    body["timeouts"] = {k: v for k, v in timeouts.items() if v is not None}
    return pipeline_for(load_assignment(body))


def pipeline_for(assignment: Assignment) -> tuple[Pipeline, list[str]]:
    """The pipeline for one sub-job, and the problems found while building it."""
    default_timeout = assignment.timeouts.action
    pipeline = Pipeline()
    problems = list(assignment.problems)
    target = Target(assignment.device_type, slave=assignment.is_slave)
    booted = False
    for i, item in enumerate(assignment.actions):
        kind, params = item.kind, dict(item.parameters)
        timeout = item.timeout or default_timeout
        if target.slave and not booted and kind in ("test", "command"):
            # a slave is booted before its first test even when its job has no boot
            pipeline.add(SlaveBootAction(target.device_type, {}, default_timeout))
            booted = True
        factory = lookup(kind, method_of(kind, params))
        if factory is None:
            problems.append(
                f"actions[{i}] ({item.name}): unknown kind {kind!r} "
                f"(known: {', '.join(known_kinds())})"
            )
            continue
        try:
            action = factory(target, params, timeout)
        except (LavamqError, KeyError, TypeError, ValueError) as exc:
            # a malformed item: reported with the others, before anything runs
            problems.append(f"actions[{i}] ({item.name or kind}): {exc}")
            continue
        booted = booted or kind == "boot"
        pipeline.add(action)
    return pipeline, problems


def role_pipelines(plan: JobPlan) -> dict[str, dict[str, Any]]:
    """Each role's pipeline as a dispatcher builds it from the coordinator's assignment.

    What ``lavamq validate --describe`` prints, and what the example jobs' golden
    files hold (LAVA keeps one such reference per sample job): a role's first
    sub-job stands for the role, its device type the role's.
    """
    out: dict[str, dict[str, Any]] = {}
    for role in plan.roles:
        if role.count < 1:
            continue
        body = {
            "job_id": 0,
            "subjob_id": 0,
            "node": f"{role.name}-0",
            "role": role.name,
            "device_type": role.device_type or "",
            "device": role.device or "",
            "plan": plan.subjob_dict(role.name, 0),
            "timeouts": plan.timeouts.to_dict(),
            "is_slave": role.is_slave,
            "essential": role.essential,
        }
        pipeline, problems = pipeline_for(load_assignment(body))
        out[role.name] = {
            "device_type": role.device_type,
            "pipeline": pipeline.describe(),
            "problems": problems,
        }
    return out
