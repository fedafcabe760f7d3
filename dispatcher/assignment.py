"""What the coordinator hands a dispatcher for one sub-job, as one typed object.

The ``subjob-assignment`` message (``schemas/messages/jobs.py``) is checked
at the broker's edge; :func:`load_assignment` then loads it, plan included,
into an :class:`Assignment` with marshmallow, so the runner and the actions
read attributes instead of guessing dictionary keys. A plan item that
cannot be loaded is kept as a problem (``Assignment.problems``): the
pipeline reports it with the others, and the sub-job still finalizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from schemas.errors import JobError


@dataclass(frozen=True)
class Timeouts:
    """Seconds; ``None``: no limit (job, connection)."""

    job: float | None = None
    action: float | None = None
    multinode: float = 300.0
    connection: float | None = None


@dataclass(frozen=True)
class PlannedAction:
    """One action of the job file, for this node (``kind``: deploy, boot, test, command, submit)."""

    kind: str
    name: str
    parameters: dict[str, Any]
    timeout: float | None = None
    index: int = 0


@dataclass(frozen=True)
class Assignment:
    """One sub-job: the node, its role, the group roster, its actions and timeouts."""

    #: ids as text: the coordinator's are integers, a hand-made assignment may name them
    job_id: str
    subjob_id: str
    node: str
    role: str = ""
    group: str | None = None
    job_name: str = ""
    device: str = ""
    device_type: str = ""
    #: node → role for the whole group (empty for a single-node job)
    members: dict[str, str] = field(default_factory=dict)
    #: node → broker user of its host (who may speak for that node)
    owners: dict[str, str] = field(default_factory=dict)
    actions: tuple[PlannedAction, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    is_slave: bool = False
    essential: bool = False
    join_deadline: float = 0.0
    #: the job's ``secrets:`` (name → value), never logged
    secrets: dict[str, str] = field(default_factory=dict)
    #: the job's ``environment:`` (exported in the test shell, as LAVA's overlay does)
    environment: dict[str, Any] = field(default_factory=dict)
    #: the role's ``context:`` (LAVA's device-template variables: arch, extra_options ...)
    context: dict[str, Any] = field(default_factory=dict)
    #: plan items that could not be loaded, each ``actions[i]: why``
    problems: tuple[str, ...] = ()


class _TimeoutsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    job = fields.Float(load_default=None, allow_none=True)
    action = fields.Float(load_default=None, allow_none=True)
    multinode = fields.Float(load_default=300.0)
    connection = fields.Float(load_default=None, allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Timeouts:
        return Timeouts(**data)


class _ActionSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    kind = fields.String(required=True)
    name = fields.String(load_default="")
    parameters = fields.Dict(keys=fields.String(), load_default=dict)
    timeout = fields.Float(load_default=None, allow_none=True)
    index = fields.Integer(load_default=0)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> PlannedAction:
        return PlannedAction(**data)


class _Id(fields.Field[str]):
    """An id given as an integer or as text, kept as text."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ValidationError("must be an integer or a non-empty string")
        return str(value)


class _AssignmentSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    job_id = _Id(required=True)
    subjob_id = _Id(required=True)
    node = fields.String(required=True)
    role = fields.String(load_default="")
    group = fields.String(load_default=None, allow_none=True)
    job_name = fields.String(load_default="")
    device = fields.String(load_default="")
    device_type = fields.String(load_default="")
    members = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    owners = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    timeouts = fields.Nested(_TimeoutsSchema, load_default=Timeouts)
    is_slave = fields.Boolean(load_default=False)
    essential = fields.Boolean(load_default=False)
    join_deadline = fields.Float(load_default=0.0)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Assignment:
        return Assignment(**data)


def _load_actions(plan: Mapping[str, Any]) -> tuple[list[PlannedAction], list[str]]:
    actions: list[PlannedAction] = []
    problems: list[str] = []
    items = plan.get("actions") or []
    if not isinstance(items, list):
        return [], ["actions: must be a list"]
    for i, item in enumerate(items):
        try:
            actions.append(_ActionSchema().load(item))
        except ValidationError as exc:
            where = f" ({item.get('name') or item.get('kind')})" if isinstance(item, dict) else ""
            problems.append(f"actions[{i}]{where}: not an action mapping ({exc.messages})")
    return actions, problems


def load_assignment(body: Mapping[str, Any]) -> Assignment:
    """The typed assignment of a ``subjob-assignment`` body; JobError naming what is wrong."""
    try:
        loaded: Assignment = _AssignmentSchema().load(dict(body))
    except ValidationError as exc:
        raise JobError(f"sub-job assignment: {exc.messages}") from None
    plan = body.get("plan") or {}
    if not isinstance(plan, Mapping):
        return replace(loaded, problems=("plan: must be a mapping",))
    actions, problems = _load_actions(plan)
    secrets = plan.get("secrets") or {}
    environment = plan.get("environment") or {}
    context = plan.get("context") or {}
    return replace(
        loaded,
        actions=tuple(actions),
        problems=tuple(problems),
        is_slave=loaded.is_slave or bool(plan.get("is_slave")),
        secrets={str(k): str(v) for k, v in secrets.items()} if isinstance(secrets, dict) else {},
        environment=dict(environment) if isinstance(environment, Mapping) else {},
        context=dict(context) if isinstance(context, Mapping) else {},
    )
