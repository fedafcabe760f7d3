"""The current LAVA job format (YAML): ``protocols: lava-multinode: roles``, ``timeouts``.

Normalised into ``schemas.jobmodel.JobPlan``. Keys LAVA users put in their
files (``visibility``, ``metadata``, ``notify``, ``context``, ``namespace``,
``failure_retry``, boot ``prompts``...) are accepted; the keys lavamq relies
on (roles, timeouts, images, test definitions) are checked strictly.
"""

from __future__ import annotations

import logging
from typing import Any

from marshmallow import Schema, validate

from schemas.jobmodel import (
    DEFAULT_ACTION_TIMEOUT,
    DEFAULT_MULTINODE_TIMEOUT,
    DEFINITION_SOURCES,
    FORMAT_YAML,
    ActionPlan,
    Anything,
    Flag,
    JobPlan,
    Problems,
    RolePlan,
    Text,
    TextList,
    Timeouts,
    Whole,
    action_roles,
    build_plan,
    check_device_choice,
    check_group_size,
    check_mapping,
    check_role_name,
    count_field,
    definition_entry,
    definition_name,
    image_entry,
    is_number,
    join,
    jsonable,
    kind_of,
    known_list,
    listed,
    priority_value,
    role_plan,
)

log = logging.getLogger(__name__)

UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
ACTION_TYPES = ("boot", "command", "deploy", "test")

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

_COMMON_ACTION_KEYS = {
    "role": Anything(),
    "timeout": Anything(),
    "namespace": Text(),
    "connection-namespace": Text(),
    "protocols": Anything(),
    "repeat": Whole(validate=validate.Range(min=1, error="must be at least {min}")),
    "failure_retry": Whole(validate=validate.Range(min=1, error="must be at least {min}")),
}

TestActionSchema = Schema.from_dict(
    {
        **_COMMON_ACTION_KEYS,
        "definitions": Anything(),
        "docker": Anything(),
        "interactive": Anything(),
        "monitors": Anything(),
        "skip_install": Anything(),
        "lava-signal": Text(),
        "stage": Whole(),
    },
    name="TestActionSchema",
)

CommandActionSchema = Schema.from_dict(
    {**_COMMON_ACTION_KEYS, "name": Text(required=True)}, name="CommandActionSchema"
)

DefinitionSchema = Schema.from_dict(
    {
        "from": Text(
            required=True,
            validate=validate.OneOf(
                DEFINITION_SOURCES,
                error="unsupported source {input!r} (known: " + ", ".join(DEFINITION_SOURCES) + ")",
            ),
        ),
        "repository": Anything(required=True),
        "path": Text(),
        "name": Text(),
        "revision": Text(),
        "branch": Text(),
        "parameters": Anything(),
        "params": Anything(),
        "history": Flag(),
        "lava-signal": Text(),
        "skip_install": Anything(),
    },
    name="DefinitionSchema",
)


def timeout_seconds(value: Any, location: str, problems: Problems) -> float | None:
    """A LAVA timeout block (``{minutes: 5}``) in seconds; None if invalid."""
    if not isinstance(value, dict):
        problems.add(location, f"must be a mapping like {{minutes: 5}} (got {kind_of(value)})")
        return None
    units = [k for k in value if k in UNITS]
    ok = True
    for key in value:
        if key not in UNITS and key != "skip":
            problems.add(location, f"unknown key {key!r} (known: {known_list([*UNITS, 'skip'])})")
            ok = False
    if "skip" in value and not isinstance(value["skip"], bool):
        problems.add(join(location, "skip"), "must be true or false")
        ok = False
    if len(units) != 1:
        got = f" (got {', '.join(units)})" if units else ""
        problems.add(location, f"give exactly one of days, hours, minutes, seconds{got}")
        return None
    amount = value[units[0]]
    if not is_number(amount) or amount <= 0:
        problems.add(join(location, units[0]), "must be a positive number")
        return None
    return float(amount) * UNITS[units[0]] if ok else None


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
    roles, role_names, multinode = _protocols(data.get("protocols"), problems)
    if multinode is not None:
        timeouts = Timeouts(
            job=timeouts.job,
            action=timeouts.action,
            multinode=multinode,
            connection=timeouts.connection,
        )
    actions = _actions(data.get("actions"), role_names, timeouts, action_timeouts, problems)
    if problems:
        return None
    return build_plan(
        job_name=top["job_name"],
        fmt=FORMAT_YAML,
        priority=priority,
        timeouts=timeouts,
        roles=roles,
        actions=actions,
    )


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


def _protocols(value: Any, problems: Problems) -> tuple[list[RolePlan], list[str], float | None]:
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
    return _roles(roles_value, join(loc, "roles"), problems), declared, multinode


def _roles(value: Any, loc: str, problems: Problems) -> list[RolePlan]:
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
        if not ok or "count" not in item:
            continue
        roles.append(role_plan(name, item))
    check_group_size(roles, loc, problems)
    return roles


def _actions(
    value: Any,
    role_names: list[str],
    timeouts: Timeouts,
    per_kind: dict[str, float],
    problems: Problems,
) -> list[ActionPlan]:
    out: list[ActionPlan] = []
    for i, entry in enumerate(listed(value, "actions", "action", problems)):
        loc = f"actions[{i}]"
        if not isinstance(entry, dict):
            problems.add(
                loc,
                f"must be a mapping with one key, one of {', '.join(ACTION_TYPES)} "
                f"(got {kind_of(entry)})",
            )
            continue
        if len(entry) != 1:
            got = ", ".join(repr(k) for k in entry) or "none"
            problems.add(
                loc, f"must have exactly one key, one of {', '.join(ACTION_TYPES)} (got {got})"
            )
            continue
        kind, body = next(iter(entry.items()))
        if kind not in ACTION_TYPES:
            problems.add(loc, f"unknown action {kind!r} (known: {', '.join(ACTION_TYPES)})")
            continue
        action = _action(i, kind, body, role_names, timeouts, per_kind, problems)
        if action is not None:
            out.append(action)
    return out


def _action(
    index: int,
    kind: str,
    body: Any,
    role_names: list[str],
    timeouts: Timeouts,
    per_kind: dict[str, float],
    problems: Problems,
) -> ActionPlan | None:
    loc = f"actions[{index}].{kind}"
    before = len(problems)
    if not isinstance(body, dict):
        problems.add(loc, f"must be a mapping (got {kind_of(body)})")
        return None
    bad_keys = [k for k in body if not isinstance(k, str)]
    for key in bad_keys:
        problems.add(loc, f"keys must be strings (got {key!r})")
    roles = action_roles(body, role_names, loc, problems)
    timeout = per_kind.get(kind, timeouts.action)
    if "timeout" in body:
        timeout = timeout_seconds(body["timeout"], join(loc, "timeout"), problems) or timeout
        if timeouts.job is not None and timeout > timeouts.job:
            problems.add(
                join(loc, "timeout"),
                f"{timeout:g} seconds is longer than the job timeout ({timeouts.job:g} seconds)",
            )
    rest = {k: v for k, v in body.items() if isinstance(k, str) and k not in ("role", "timeout")}
    params: dict[str, Any] | None
    if kind == "deploy":
        params = _deploy(rest, loc, problems)
    elif kind == "boot":
        params = _boot(rest, loc, problems)
    elif kind == "test":
        params = _test(body, rest, loc, problems)
    else:
        checked = check_mapping(CommandActionSchema(), body, loc, problems)
        params = rest if checked is not None else None
    if params is None:
        return None
    _check_common(rest, loc, problems)
    params = jsonable(params, loc, problems)
    if len(problems) > before:
        return None
    return ActionPlan(
        kind=kind, name=kind, parameters=params, roles=roles, timeout=timeout, index=index
    )


def _check_common(rest: dict[str, Any], loc: str, problems: Problems) -> None:
    for key in ("namespace", "connection-namespace"):
        if key in rest and (not isinstance(rest[key], str) or not rest[key]):
            problems.add(join(loc, key), "must be a non-empty string")
    for key in ("repeat", "failure_retry"):
        value = rest.get(key)
        if key in rest and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.add(join(loc, key), "must be a whole number, at least 1")


def _deploy(params: dict[str, Any], loc: str, problems: Problems) -> dict[str, Any]:
    images: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    if "to" in params and (not isinstance(params["to"], str) or not params["to"]):
        problems.add(join(loc, "to"), "must be a deployment method name")
    for key, value in params.items():
        if key == "images":
            if not isinstance(value, dict) or not value:
                problems.add(join(loc, key), "must map image names to {url: ...}")
                continue
            for name, entry in value.items():
                iloc = join(join(loc, key), str(name))
                image = image_entry(entry, iloc, problems, explicit=True)
                if image is not None:
                    images[str(name)] = image
        elif isinstance(value, dict) and "url" in value:
            image = image_entry(value, join(loc, key), problems, explicit=True)
            if image is not None:
                images[key] = image
        else:
            rest[key] = value
    return {"images": images, **rest}


def _boot(params: dict[str, Any], loc: str, problems: Problems) -> dict[str, Any]:
    if "method" in params and (not isinstance(params["method"], str) or not params["method"]):
        problems.add(join(loc, "method"), "must be a boot method name")
    for key in ("prompts", "commands"):
        if key not in params:
            continue
        value = params[key]
        if key == "commands" and isinstance(value, str):
            continue  # a named command set from the device dictionary
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.add(join(loc, key), "must be a string or a list of non-empty strings")
    return dict(params)


def _test(
    body: dict[str, Any], rest: dict[str, Any], loc: str, problems: Problems
) -> dict[str, Any] | None:
    checked = check_mapping(TestActionSchema(), body, loc, problems)
    if checked is None:
        return None
    if "definitions" not in body:
        other = [k for k in ("interactive", "monitors") if k in body]
        if other:
            problems.add(
                loc, f"lavamq runs test definitions only ({other[0]!r} tests are not supported)"
            )
        else:
            problems.add(join(loc, "definitions"), "is required")
        return None
    value = body["definitions"]
    if not isinstance(value, list) or not value:
        problems.add(join(loc, "definitions"), "must be a non-empty list of test definitions")
        return None
    definitions = []
    for i, entry in enumerate(value):
        definition = _definition(entry, f"{loc}.definitions[{i}]", problems)
        if definition is not None:
            definitions.append(definition)
    others = {k: v for k, v in rest.items() if k != "definitions"}
    return {"definitions": definitions, **others}


def _definition(entry: Any, loc: str, problems: Problems) -> dict[str, Any] | None:
    item = check_mapping(DefinitionSchema(), entry, loc, problems)
    if item is None or "from" not in item or "repository" not in item:
        return None
    source = item["from"]
    repository = item["repository"]
    ok = True
    if source == "inline":
        if not isinstance(repository, dict):
            problems.add(
                join(loc, "repository"),
                "an inline definition is a mapping with 'metadata' and 'run'",
            )
            ok = False
        elif not isinstance(repository.get("metadata"), dict):
            problems.add(join(loc, "repository"), "an inline definition needs a 'metadata' mapping")
            ok = False
    elif not isinstance(repository, str) or not repository:
        problems.add(join(loc, "repository"), f"must be a {source} URL string")
        ok = False
    if source == "git" and "path" not in item and "path" not in entry:
        problems.add(join(loc, "path"), "is required for a git test definition")
        ok = False
    parameters: dict[str, Any] = {}
    for key in ("params", "parameters"):
        if key in entry:
            if not isinstance(entry[key], dict):
                problems.add(join(loc, key), "must be a mapping of names to values")
                ok = False
            else:
                parameters.update(entry[key])
    if not ok or any(k in entry and k not in item for k in ("path", "name", "revision")):
        return None
    path = item.get("path")
    name = item.get("name") or definition_name(path or (repository if source == "url" else "test"))
    out = definition_entry(
        source=source,
        repository=repository,
        path=path,
        name=name,
        revision=item.get("revision"),
        parameters=parameters,
    )
    for key in ("branch", "history", "lava-signal", "skip_install"):
        if key in item:
            out[key] = item[key]
    return out
