"""The current LAVA job format (YAML): ``protocols: lava-multinode: roles``, ``timeouts``.

Normalised into ``schemas.jobmodel.JobPlan``. Keys LAVA users put in their
files (``visibility``, ``metadata``, ``notify``, ``context``, ``namespace``,
``failure_retry``, boot ``prompts``...) are accepted; the keys lavamq relies
on (roles, timeouts, images, test definitions) are checked strictly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from marshmallow import Schema, validate

from schemas.job_checks import (
    Anything,
    Flag,
    Problems,
    Text,
    TextList,
    check_device_choice,
    check_group_size,
    check_mapping,
    check_role_name,
    count_field,
    join,
    jsonable,
    kind_of,
    known_list,
    priority_value,
    role_plan,
)
from schemas.job_yaml_actions import timeout_seconds, yaml_actions
from schemas.job_yaml_roles import check_role_actions
from schemas.jobmodel import (
    DEFAULT_ACTION_TIMEOUT,
    DEFAULT_MULTINODE_TIMEOUT,
    FORMAT_YAML,
    JobPlan,
    RolePlan,
    Timeouts,
    build_plan,
)

log = logging.getLogger(__name__)


#: names in ``timeouts: actions:`` that set the timeout of one of our action kinds
ACTION_TIMEOUT_NAMES = {
    "deploy": "deploy",
    "boot": "boot",
    "test": "test",
    "lava-test-shell": "test",
    "lava-test-retry": "test",
    "command": "command",
}

JobYamlSchema = Schema.from_dict(
    {
        "job_name": Text(required=True, validate=validate.Length(max=200)),
        "timeouts": Anything(),
        "priority": Anything(),
        "protocols": Anything(),
        "actions": Anything(required=True),
        "visibility": Anything(),
        "context": Anything(),
        "metadata": Anything(),
        "notify": Anything(),
        "tags": TextList(),
        "secrets": Anything(),
        "environment": Anything(),
        "reboot_to_fastboot": Flag(),
        "description": Text(),
    },
    name="JobYamlSchema",
)

TimeoutsSchema = Schema.from_dict(
    {
        "job": Anything(),
        "action": Anything(),
        "actions": Anything(),
        "connection": Anything(),
        "connections": Anything(),
    },
    name="TimeoutsSchema",
)

MultinodeSchema = Schema.from_dict(
    {"roles": Anything(required=True), "timeout": Anything()}, name="MultinodeSchema"
)

RoleSchema = Schema.from_dict(
    {
        "device_type": Text(),
        "device": Text(),
        "count": count_field(),
        "tags": TextList(),
        "context": Anything(),
        "environment": Anything(),
        "essential": Flag(),
        "is_slave": Flag(),
        "timeout": Anything(),
        "expect_role": Text(),
        "host_role": Text(),
        "connection": Text(),
        "request": Text(),
    },
    name="RoleSchema",
)


def load_yaml_job(data: dict[str, Any], problems: Problems, source: str) -> JobPlan | None:
    """Validate and normalise a parsed current-LAVA job; None if ``problems`` were found."""
    if "device_type" in data:
        problems.add(
            "device_type",
            "lavamq runs MultiNode jobs: describe the devices in "
            "'protocols: lava-multinode: roles' instead",
        )
        data = {k: v for k, v in data.items() if k != "device_type"}
    top = check_mapping(JobYamlSchema(), data, "", problems, what="a job (a YAML mapping)")
    if top is None:
        return None
    priority = priority_value(data.get("priority"), "priority", problems)
    timeouts, action_timeouts = _timeouts(data.get("timeouts"), problems)
    context = data.get("context")
    if context is not None and not isinstance(context, dict):
        problems.add("context", "must be a mapping")
    context = jsonable(context or {}, "context", problems) if isinstance(context, dict) else {}
    roles, role_names, multinode = _protocols(data.get("protocols"), context, problems)
    if multinode is not None:
        timeouts = Timeouts(
            job=timeouts.job,
            action=timeouts.action,
            multinode=multinode,
            connection=timeouts.connection,
        )
    before = len(problems)
    actions = yaml_actions(data.get("actions"), role_names, timeouts, action_timeouts, problems)
    if len(problems) == before:
        # on the whole list only: an action left out as invalid would read as missing
        check_role_actions(roles, actions, problems)
    secrets = _secrets(data.get("secrets"), problems)
    environment = _environment(data.get("environment"), problems)
    if problems:
        return None
    plan = build_plan(
        job_name=top["job_name"],
        fmt=FORMAT_YAML,
        priority=priority,
        timeouts=timeouts,
        roles=roles,
        actions=actions,
    )
    return replace(plan, secrets=secrets, environment=environment)


def _environment(value: Any, problems: Problems) -> dict[str, Any]:
    """LAVA's job ``environment:``: names (shell variables) to values; a mapping or list
    value is exported flattened (``A_B``, ``A_0``), as LAVA's overlay does."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add("environment", f"must map names to values (got {kind_of(value)})")
        return {}
    for name in value:
        if not isinstance(name, str) or not _SECRET_NAME.match(name):
            problems.add(
                f"environment.{name}",
                "the name must be a shell variable name (letters, digits, '_')",
            )
    return jsonable(value, "environment", problems) if not problems else {}


#: a secret's name: a shell variable (the board sources ``/lava-<id>/secrets``)
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _secrets(value: Any, problems: Problems) -> dict[str, str]:
    """LAVA's ``secrets:`` (``dict[str: str]``); names are shell variables, values one line."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add("secrets", f"must map names to strings (got {kind_of(value)})")
        return {}
    out: dict[str, str] = {}
    for name, secret in value.items():
        where = f"secrets.{name}"
        if not isinstance(name, str) or not _SECRET_NAME.match(name):
            problems.add(where, "the name must be a shell variable name (letters, digits, '_')")
        elif not isinstance(secret, str):
            problems.add(where, f"must be a string (got {kind_of(secret)})")
        elif "\n" in secret or "\r" in secret:
            problems.add(where, "must be one line (the board reads NAME=value lines)")
        else:
            out[name] = secret
    return out


def _timeouts(value: Any, problems: Problems) -> tuple[Timeouts, dict[str, float]]:
    job: float | None = None
    action = DEFAULT_ACTION_TIMEOUT
    connection: float | None = None
    per_kind: dict[str, float] = {}
    if value is not None:
        block = check_mapping(TimeoutsSchema(), value, "timeouts", problems)
        if block is not None:
            if "job" in block:
                job = timeout_seconds(block["job"], "timeouts.job", problems)
            if "action" in block:
                action = timeout_seconds(block["action"], "timeouts.action", problems) or action
                if job is not None and action > job:
                    problems.add(
                        "timeouts.action",
                        f"{action:g} seconds is longer than the job timeout ({job:g} seconds)",
                    )
            if "connection" in block:
                connection = timeout_seconds(block["connection"], "timeouts.connection", problems)
            for key in ("actions", "connections"):
                named = block.get(key)
                if named is None:
                    continue
                if not isinstance(named, dict):
                    problems.add(f"timeouts.{key}", "must map names to timeouts")
                    continue
                for name, item in named.items():
                    seconds = timeout_seconds(item, f"timeouts.{key}.{name}", problems)
                    if key == "actions" and seconds is not None and name in ACTION_TIMEOUT_NAMES:
                        per_kind[ACTION_TIMEOUT_NAMES[name]] = seconds
    return Timeouts(
        job=job, action=action, multinode=DEFAULT_MULTINODE_TIMEOUT, connection=connection
    ), per_kind


def _protocols(
    value: Any, context: dict[str, Any], problems: Problems
) -> tuple[list[RolePlan], list[str], float | None]:
    if value is None:
        problems.add(
            "protocols",
            "is required: lavamq runs MultiNode jobs (add 'lava-multinode: roles: ...')",
        )
        return [], [], None
    if not isinstance(value, dict):
        problems.add("protocols", f"must be a mapping (got {kind_of(value)})")
        return [], [], None
    known = ("lava-multinode", "lava-lxc", "lava-vland", "lava-xnbd")
    for key in value:
        if key not in known:
            problems.add("protocols", f"unknown protocol {key!r} (known: {known_list(known)})")
    if "lava-multinode" not in value:
        problems.add("protocols.lava-multinode", "is required: lavamq runs MultiNode jobs")
        return [], [], None
    loc = "protocols.lava-multinode"
    block = check_mapping(MultinodeSchema(), value["lava-multinode"], loc, problems)
    if block is None:
        return [], [], None
    multinode = None
    if "timeout" in block:
        multinode = timeout_seconds(block["timeout"], join(loc, "timeout"), problems)
    roles_value = block.get("roles")
    declared = (
        [k for k in roles_value if isinstance(k, str)] if isinstance(roles_value, dict) else []
    )
    return _roles(roles_value, join(loc, "roles"), context, problems), declared, multinode


def _roles(value: Any, loc: str, context: dict[str, Any], problems: Problems) -> list[RolePlan]:
    if value is None:
        return []
    if not isinstance(value, dict):
        problems.add(loc, f"must map role names to roles (got {kind_of(value)})")
        return []
    if not value:
        problems.add(loc, "must list at least one role")
        return []
    roles: list[RolePlan] = []
    names = [k for k in value if isinstance(k, str)]
    for name, entry in value.items():
        if not isinstance(name, str):
            problems.add(loc, f"role names must be strings (got {name!r})")
            continue
        rloc = join(loc, name)
        ok = check_role_name(name, rloc, problems)
        item = check_mapping(RoleSchema(), entry, rloc, problems)
        if item is None:
            continue
        if not check_device_choice(entry, item, rloc, problems):
            ok = False
        if "timeout" in item:
            timeout_seconds(item["timeout"], join(rloc, "timeout"), problems)
        for key in ("expect_role", "host_role"):
            if key in item and item[key] not in names:
                problems.add(
                    join(rloc, key),
                    f"no role named {item[key]!r} (roles: {known_list(names)})",
                )
        if "context" in item and not isinstance(item["context"], dict):
            problems.add(join(rloc, "context"), "must be a mapping")
            ok = False
        elif "context" in item:
            item["context"] = jsonable(item["context"], join(rloc, "context"), problems)
        if not ok or "count" not in item:
            continue
        roles.append(role_plan(name, item, context))
    check_group_size(roles, loc, problems)
    return roles
