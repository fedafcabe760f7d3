"""The normalised job model both job file formats load into.

A job is a group of sub-jobs (one per role x count); each sub-job carries the
actions that apply to its role and the timeouts that apply. The model is
plain frozen data and round-trips through JSON (``to_dict``/``from_dict``) so
the coordinator can ship a sub-job to a dispatcher. The checks that build it
from a job file are in ``schemas.job_checks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT_2014 = "lava-2014-json"
FORMAT_YAML = "lava-yaml"

#: LAVA's defaults when a job file says nothing
DEFAULT_ACTION_TIMEOUT = 30 * 60.0
DEFAULT_MULTINODE_TIMEOUT = 15 * 60.0
DEFAULT_PRIORITY = 50

#: a group larger than this is almost certainly a typo, and would be expanded in memory
MAX_COUNT = 1000


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Timeouts:
    """The job's timeouts in seconds (None: no limit of that kind)."""

    job: float | None
    action: float
    multinode: float
    connection: float | None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-safe data."""
        return {
            "job": self.job,
            "action": self.action,
            "multinode": self.multinode,
            "connection": self.connection,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Timeouts:
        """Back from ``to_dict``."""
        return cls(
            job=_opt_float(d.get("job")),
            action=float(d["action"]),
            multinode=float(d["multinode"]),
            connection=_opt_float(d.get("connection")),
        )


@dataclass(frozen=True)
class ActionPlan:
    """One action of the job (deploy, boot, test, command) and the roles it runs on."""

    kind: str
    name: str
    parameters: dict[str, Any]
    roles: tuple[str, ...]
    timeout: float
    index: int

    def applies_to(self, role: str) -> bool:
        """The action runs on ``role`` (no role limit: on every role)."""
        return not self.roles or role in self.roles

    def to_dict(self) -> dict[str, Any]:
        """As JSON-safe data."""
        return {
            "kind": self.kind,
            "name": self.name,
            "parameters": self.parameters,
            "roles": list(self.roles),
            "timeout": self.timeout,
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActionPlan:
        """Back from ``to_dict``."""
        return cls(
            kind=str(d["kind"]),
            name=str(d["name"]),
            parameters=dict(d.get("parameters") or {}),
            roles=tuple(d.get("roles") or ()),
            timeout=float(d["timeout"]),
            index=int(d["index"]),
        )


@dataclass(frozen=True)
class RolePlan:
    """One role of the group: how many devices of which type or name, with tags."""

    name: str
    count: int
    device_type: str | None
    device: str | None
    tags: tuple[str, ...]
    is_slave: bool
    essential: bool
    #: the job's ``context:`` for this role (LAVA's device-template variables: arch ...)
    context: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-safe data."""
        out = {
            "name": self.name,
            "count": self.count,
            "device_type": self.device_type,
            "device": self.device,
            "tags": list(self.tags),
            "is_slave": self.is_slave,
            "essential": self.essential,
        }
        return _with_context(out, self.context)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolePlan:
        """Back from ``to_dict``."""
        return cls(
            name=str(d["name"]),
            count=int(d["count"]),
            device_type=d.get("device_type"),
            device=d.get("device"),
            tags=tuple(d.get("tags") or ()),
            is_slave=bool(d.get("is_slave", False)),
            essential=bool(d.get("essential", False)),
            context=dict(d.get("context") or {}),
        )


@dataclass(frozen=True)
class SubJobPlan:
    """One node of the group: a role's n-th device and the actions it runs."""

    role: str
    index: int
    device_type: str | None
    device: str | None
    tags: tuple[str, ...]
    is_slave: bool
    essential: bool
    actions: tuple[ActionPlan, ...]
    #: its role's ``context:`` (the device reads it: ``arch``, ``extra_options`` ...)
    context: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-safe data."""
        out = {
            "role": self.role,
            "index": self.index,
            "device_type": self.device_type,
            "device": self.device,
            "tags": list(self.tags),
            "is_slave": self.is_slave,
            "essential": self.essential,
            "actions": [a.to_dict() for a in self.actions],
        }
        return _with_context(out, self.context)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubJobPlan:
        """Back from ``to_dict``."""
        return cls(
            role=str(d["role"]),
            index=int(d["index"]),
            device_type=d.get("device_type"),
            device=d.get("device"),
            tags=tuple(d.get("tags") or ()),
            is_slave=bool(d.get("is_slave", False)),
            essential=bool(d.get("essential", False)),
            actions=tuple(ActionPlan.from_dict(a) for a in d.get("actions") or ()),
            context=dict(d.get("context") or {}),
        )


def _with_context(out: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    # only when there is one: plans without a context keep their shape
    if context:
        out["context"] = dict(context)
    return out


@dataclass(frozen=True)
class JobPlan:
    """A validated job: its roles, its sub-jobs with their actions, its timeouts."""

    job_name: str
    format: str
    priority: int
    timeouts: Timeouts
    roles: tuple[RolePlan, ...]
    subjobs: tuple[SubJobPlan, ...]
    actions: tuple[ActionPlan, ...]
    #: the job's ``secrets:`` (name → value): written to the board's overlay, masked
    #: in its logs and results
    secrets: dict[str, str] = field(default_factory=dict)
    #: the job's ``environment:`` (LAVA exports it in the test shell: ``/lava-<id>/environment``)
    environment: dict[str, Any] = field(default_factory=dict)
    #: what loading the file noticed without refusing it (``line L, column C: ...``)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The whole plan as JSON-safe data; ``from_dict`` gives an equal plan back."""
        out: dict[str, Any] = {
            "job_name": self.job_name,
            "format": self.format,
            "priority": self.priority,
            "timeouts": self.timeouts.to_dict(),
            "roles": [r.to_dict() for r in self.roles],
            "subjobs": [s.to_dict() for s in self.subjobs],
            "actions": [a.to_dict() for a in self.actions],
        }
        # only when there are some: plans without keep their shape
        if self.secrets:
            out["secrets"] = dict(self.secrets)
        if self.environment:
            out["environment"] = dict(self.environment)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobPlan:
        """Back from ``to_dict`` (e.g. a plan read from the store)."""
        return cls(
            job_name=str(d["job_name"]),
            format=str(d["format"]),
            priority=int(d["priority"]),
            timeouts=Timeouts.from_dict(d["timeouts"]),
            roles=tuple(RolePlan.from_dict(r) for r in d.get("roles") or ()),
            subjobs=tuple(SubJobPlan.from_dict(s) for s in d.get("subjobs") or ()),
            actions=tuple(ActionPlan.from_dict(a) for a in d.get("actions") or ()),
            secrets={str(k): str(v) for k, v in (d.get("secrets") or {}).items()},
            environment=dict(d.get("environment") or {}),
            warnings=tuple(str(w) for w in d.get("warnings") or ()),
        )

    def role(self, name: str) -> RolePlan:
        """The role ``name`` (KeyError if the job has none)."""
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(f"job {self.job_name!r} has no role {name!r}")

    def subjob(self, role: str, index: int) -> SubJobPlan:
        """The sub-job ``role[index]`` (KeyError if the job has none)."""
        for sub in self.subjobs:
            if sub.role == role and sub.index == index:
                return sub
        raise KeyError(f"job {self.job_name!r} has no sub-job {role}[{index}]")

    def subjob_dict(self, role: str, index: int) -> dict[str, Any]:
        """One sub-job with the job's name and timeouts: the body of a sub-job assignment."""
        body = self.subjob(role, index).to_dict()
        body["job_name"] = self.job_name
        body["timeouts"] = self.timeouts.to_dict()
        if self.secrets:
            body["secrets"] = dict(self.secrets)
        if self.environment:
            body["environment"] = dict(self.environment)
        return body


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def build_plan(
    *,
    job_name: str,
    fmt: str,
    priority: int,
    timeouts: Timeouts,
    roles: list[RolePlan],
    actions: list[ActionPlan],
) -> JobPlan:
    """Expand roles x count into sub-jobs, each with the actions of its role."""
    subjobs = []
    for role in roles:
        mine = tuple(a for a in actions if a.applies_to(role.name))
        for i in range(role.count):
            subjobs.append(
                SubJobPlan(
                    role=role.name,
                    index=i,
                    device_type=role.device_type,
                    device=role.device,
                    tags=role.tags,
                    is_slave=role.is_slave,
                    essential=role.essential,
                    actions=mine,
                    context=dict(role.context),
                )
            )
    return JobPlan(
        job_name=job_name,
        format=fmt,
        priority=priority,
        timeouts=timeouts,
        roles=tuple(roles),
        subjobs=tuple(subjobs),
        actions=tuple(actions),
    )
