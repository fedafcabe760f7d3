"""The actions of a current LAVA job (YAML): deploy, boot, test and command,
and LAVA's timeout blocks (``{minutes: 5}``).

Each action is checked for the keys lavamq relies on (images, test
definitions, roles, timeouts) and passed on as an ``ActionPlan``; keys LAVA
users write that lavamq does not use are accepted as they are.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, validate

from schemas.job_checks import (
    DEFINITION_SOURCES,
    Anything,
    Flag,
    Problems,
    Text,
    Whole,
    action_roles,
    check_mapping,
    check_repository_url,
    definition_entry,
    definition_name,
    image_entry,
    is_number,
    join,
    jsonable,
    kind_of,
    known_list,
    listed,
    timeout_problem,
)
from schemas.jobmodel import ActionPlan, Timeouts

UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
ACTION_TYPES = ("boot", "command", "deploy", "test")

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
        "recursive": Flag(),
        "lava-signal": Text(),
        "skip_install": Anything(),
        "expected": Anything(),
        "compression": Text(),
        "strip-components": Whole(validate=validate.Range(min=0, error="must be at least {min}")),
        "headers": Anything(),
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
    seconds = amount * UNITS[units[0]]  # exact for an int of any length
    too_long = timeout_problem(seconds)
    if too_long:
        problems.add(join(location, units[0]), too_long)
        return None
    return float(seconds) if ok else None


def yaml_actions(
    value: Any,
    role_names: list[str],
    timeouts: Timeouts,
    per_kind: dict[str, float],
    problems: Problems,
) -> list[ActionPlan]:
    """Every entry of ``actions:`` as an ``ActionPlan`` (the invalid ones reported)."""
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
    elif not check_repository_url(repository, source, join(loc, "repository"), problems):
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
    if "headers" in entry:
        problems.add(
            join(loc, "headers"),
            "not supported: lavamq fetches a test definition without extra HTTP headers",
        )
        return None
    expected = entry.get("expected")
    if expected is not None and (
        not isinstance(expected, list) or not all(isinstance(x, str) for x in expected)
    ):
        problems.add(join(loc, "expected"), "must be a list of test case names")
        return None
    for key in (
        "branch",
        "history",
        "recursive",
        "lava-signal",
        "skip_install",
        "expected",
        "compression",
        "strip-components",
    ):
        if key in item:
            out[key] = item[key]
    return out
