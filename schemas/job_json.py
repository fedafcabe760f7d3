"""LAVA's 2014 MultiNode job format (JSON): ``device_group`` and ``command`` actions.

Normalised into ``schemas.jobmodel.JobPlan``. The top-level ``timeout`` is both
the default action timeout and the MultiNode operation timeout, as in 2014;
the boot that 2014's ``lava_test_shell`` did implicitly is made explicit.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from marshmallow import Schema, validate

from schemas.job_checks import (
    Anything,
    Flag,
    Problems,
    Seconds,
    Text,
    TextList,
    Whole,
    action_roles,
    check_device_choice,
    check_group_size,
    check_mapping,
    check_repository_url,
    check_role_name,
    count_field,
    definition_entry,
    definition_name,
    image_entry,
    join,
    jsonable,
    known_list,
    listed,
    priority_value,
    role_plan,
)
from schemas.jobmodel import (
    FORMAT_2014,
    ActionPlan,
    JobPlan,
    RolePlan,
    Timeouts,
    build_plan,
)

log = logging.getLogger(__name__)

LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Job2014Schema = Schema.from_dict(
    {
        "timeout": Seconds(required=True),
        "job_name": Text(),
        "logging_level": Text(
            validate=validate.OneOf(
                LOGGING_LEVELS, error=f"must be one of {', '.join(LOGGING_LEVELS)}"
            )
        ),
        "device_group": Anything(required=True),
        "actions": Anything(required=True),
        "priority": Anything(),
        "health_check": Flag(),
        "notify": TextList(),
        "notify_on_incomplete": TextList(),
        "tags": TextList(),
        "metadata": Anything(),
    },
    name="Job2014Schema",
)

DeviceGroupSchema = Schema.from_dict(
    {
        "role": Text(required=True),
        "count": count_field(),
        "device_type": Text(),
        "device": Text(),
        "tags": TextList(),
        "is_slave": Flag(),
    },
    name="DeviceGroupSchema",
)

Action2014Schema = Schema.from_dict(
    {"command": Text(required=True), "parameters": Anything(), "metadata": Anything()},
    name="Action2014Schema",
)

_LOGIN = {
    "login_prompt": Text,
    "password_prompt": Text,
    "username": Text,
    "password": Text,
    "login_commands": TextList,
}

#: the image keys of each deploy command, in the order they are reported
DEPLOY_IMAGE_KEYS = {
    "deploy_linaro_image": ("image", "hwpack", "rootfs"),
    "deploy_linaro_kernel": (
        "kernel",
        "ramdisk",
        "dtb",
        "rootfs",
        "nfsrootfs",
        "bootloader",
        "firmware",
        "image",
    ),
}


def _params(name: str, spec: dict[str, Any]) -> type[Schema]:
    built = {
        key: (factory() if isinstance(factory, type) else factory) for key, factory in spec.items()
    }
    built["role"] = Anything()
    return Schema.from_dict(built, name=name)


PARAMETER_SCHEMAS: dict[str, type[Schema]] = {
    "deploy_linaro_image": _params(
        "DeployLinaroImageParameters",
        {
            "image": Anything,
            "hwpack": Anything,
            "rootfs": Anything,
            "rootfstype": Text,
            "bootloadertype": Text,
            "target_type": Text,
            "customize": Anything,
            **_LOGIN,
        },
    ),
    "deploy_linaro_kernel": _params(
        "DeployLinaroKernelParameters",
        {
            **{key: Anything for key in DEPLOY_IMAGE_KEYS["deploy_linaro_kernel"]},
            "bootloadertype": Text,
            "target_type": Text,
            "overlays": TextList,
            **_LOGIN,
        },
    ),
    "boot_linaro_image": _params(
        "BootLinaroImageParameters",
        {
            "options": TextList,
            "boot_cmds": TextList,
            "interactive_boot_cmds": Flag,
            "test_image_prompt": Text,
            "repeat": Whole,
        },
    ),
    "lava_test_shell": _params(
        "LavaTestShellParameters",
        {
            "testdef_repos": Anything,
            "testdef_urls": TextList,
            "timeout": Seconds,
            "skip_install": Text,
            "repeat": Whole,
            "repeat_count": Whole,
        },
    ),
    "lava_command_run": _params(
        "LavaCommandRunParameters",
        {
            "commands": TextList(required=True),
            "parser": Text,
            "fixupdict": Anything,
            "iterations": Whole,
            "timeout": Seconds,
        },
    ),
    "submit_results": _params(
        "SubmitResultsParameters", {"server": Text, "stream": Text, "token": Text}
    ),
    "submit_results_on_host": _params(
        "SubmitResultsOnHostParameters", {"server": Text, "stream": Text, "token": Text}
    ),
}

COMMAND_KINDS = {
    "deploy_linaro_image": "deploy",
    "deploy_linaro_kernel": "deploy",
    "boot_linaro_image": "boot",
    "lava_test_shell": "test",
    "lava_command_run": "command",
    "submit_results": "submit",
    "submit_results_on_host": "submit",
}

TestdefRepoSchema = Schema.from_dict(
    {
        "git-repo": Text(),
        "bzr-repo": Text(),
        "url": Text(),
        "testdef": Text(),
        "revision": Text(),
        "branch": Text(),
        "parameters": Anything(),
    },
    name="TestdefRepoSchema",
)


def load_2014(data: dict[str, Any], problems: Problems, source: str) -> JobPlan | None:
    """Validate and normalise a parsed 2014 job; None if ``problems`` were found."""
    for key in ("device_type", "target"):
        if key in data:
            problems.add(
                key,
                "lavamq runs MultiNode jobs: describe the devices in 'device_group' instead",
            )
            data = {k: v for k, v in data.items() if k != key}
    top = check_mapping(Job2014Schema(), data, "", problems, what="a job (a JSON object)")
    if top is None:
        return None
    priority = priority_value(data.get("priority"), "priority", problems)
    default_timeout = top.get("timeout", 1.0)
    roles, role_names = _device_group(data.get("device_group"), problems)
    actions = _actions(data.get("actions"), role_names, default_timeout, problems)
    if problems:
        return None
    actions = insert_implicit_boots(actions, role_names, default_timeout)
    job_name = top.get("job_name") or _name_from_source(source)
    timeouts = Timeouts(
        job=None, action=default_timeout, multinode=default_timeout, connection=None
    )
    return build_plan(
        job_name=job_name,
        fmt=FORMAT_2014,
        priority=priority,
        timeouts=timeouts,
        roles=roles,
        actions=actions,
    )


def _name_from_source(source: str) -> str:
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.strip("<>") or "job"


def _device_group(value: Any, problems: Problems) -> tuple[list[RolePlan], list[str]]:
    """The valid roles, and every role name declared (so that an action naming a
    role whose entry has a problem is not reported a second time)."""
    value = listed(value, "device_group", "role", problems)
    declared = list(
        dict.fromkeys(
            e["role"] for e in value if isinstance(e, dict) and isinstance(e.get("role"), str)
        )
    )
    roles: list[RolePlan] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        loc = f"device_group[{i}]"
        item = check_mapping(DeviceGroupSchema(), entry, loc, problems)
        if item is None:
            continue
        ok = True
        name = item.get("role")
        if name is not None:
            if not check_role_name(name, join(loc, "role"), problems):
                ok = False
            elif name in seen:
                problems.add(join(loc, "role"), f"duplicate role {name!r}")
                ok = False
            seen.add(name)
        else:
            ok = False
        if not check_device_choice(entry, item, loc, problems):
            ok = False
        if not ok or name is None or "count" not in item:
            continue
        roles.append(role_plan(name, item))
    check_group_size(roles, "device_group", problems)
    return roles, declared


def _actions(
    value: Any, role_names: list[str], default_timeout: float, problems: Problems
) -> list[ActionPlan]:
    out: list[ActionPlan] = []
    for i, entry in enumerate(listed(value, "actions", "action", problems)):
        loc = f"actions[{i}]"
        item = check_mapping(Action2014Schema(), entry, loc, problems)
        if item is None or "command" not in item:
            continue
        command = item["command"]
        if command not in COMMAND_KINDS:
            problems.add(
                join(loc, "command"),
                f"unknown command {command!r} (known: {known_list(COMMAND_KINDS)})",
            )
            continue
        action = _action(
            i, command, entry.get("parameters", {}), role_names, default_timeout, problems
        )
        if action is not None:
            out.append(action)
    return out


def _action(
    index: int,
    command: str,
    raw: Any,
    role_names: list[str],
    default_timeout: float,
    problems: Problems,
) -> ActionPlan | None:
    loc = f"actions[{index}].parameters"
    before = len(problems)
    params = check_mapping(PARAMETER_SCHEMAS[command](), raw, loc, problems)
    if params is None:
        return None
    roles = action_roles(params, role_names, loc, problems)
    kind = COMMAND_KINDS[command]
    timeout = params.get("timeout", default_timeout)
    rest = {k: v for k, v in raw.items() if k in params and k not in ("role", "timeout")}
    normalised: dict[str, Any]
    if kind == "deploy":
        normalised = _deploy(command, rest, loc, problems)
    elif kind == "test":
        normalised = _test_shell(rest, loc, problems)
    elif kind == "command":
        normalised = dict(rest)
    else:
        normalised = dict(rest)
    normalised = jsonable(normalised, loc, problems)
    if len(problems) > before:
        return None
    return ActionPlan(
        kind=kind, name=command, parameters=normalised, roles=roles, timeout=timeout, index=index
    )


def _deploy(command: str, params: dict[str, Any], loc: str, problems: Problems) -> dict[str, Any]:
    keys = DEPLOY_IMAGE_KEYS[command]
    images: dict[str, Any] = {}
    for key in keys:
        if key in params:
            entry = image_entry(params[key], join(loc, key), problems, explicit=False)
            if entry is not None:
                images[key] = entry
    given = [k for k in keys if k in params]
    if command == "deploy_linaro_image":
        if "image" in params and ("hwpack" in params or "rootfs" in params):
            problems.add(loc, "give 'image', or 'hwpack' and 'rootfs', not both")
        elif "image" not in params and not ("hwpack" in params and "rootfs" in params):
            problems.add(loc, "needs 'image' (or both 'hwpack' and 'rootfs')")
    elif "kernel" not in params:
        problems.add(join(loc, "kernel"), "is required")
    rest = {k: v for k, v in params.items() if k not in given}
    return {"images": images, **rest}


def _test_shell(params: dict[str, Any], loc: str, problems: Problems) -> dict[str, Any]:
    definitions: list[dict[str, Any]] = []
    repos = params.get("testdef_repos", [])
    if not isinstance(repos, list):
        problems.add(join(loc, "testdef_repos"), "must be a list")
        repos = []
    for i, repo in enumerate(repos):
        rloc = f"{loc}.testdef_repos[{i}]"
        item = check_mapping(TestdefRepoSchema(), repo, rloc, problems)
        if item is None:
            continue
        sources = [k for k in ("git-repo", "bzr-repo", "url") if k in repo]
        if len(sources) != 1:
            problems.add(rloc, "needs exactly one of 'git-repo' or 'url'")
            continue
        if "bzr-repo" in item:
            problems.add(
                join(rloc, "bzr-repo"), "Bazaar repositories are not supported (use 'git-repo')"
            )
            continue
        parameters = repo.get("parameters", {})
        if not isinstance(parameters, dict):
            problems.add(join(rloc, "parameters"), "must be a mapping of names to values")
            continue
        if not all(k in item for k in sources):
            continue  # the field itself was reported
        source = "git" if "git-repo" in item else "url"
        url = item["git-repo" if source == "git" else "url"]
        if isinstance(url, str) and not check_repository_url(
            url, source, join(rloc, sources[0]), problems
        ):
            continue
        if "git-repo" in item:
            path = item.get("testdef", "lavatest.yaml")
            definitions.append(
                definition_entry(
                    source="git",
                    repository=item["git-repo"],
                    path=path,
                    name=definition_name(path),
                    revision=item.get("revision"),
                    parameters=parameters,
                )
            )
        else:
            definitions.append(_url_definition(item["url"], parameters, item.get("revision")))
    for i, url in enumerate(params.get("testdef_urls", [])):
        where = f"{loc}.testdef_urls[{i}]"
        if isinstance(url, str) and not check_repository_url(url, "url", where, problems):
            continue
        definitions.append(_url_definition(url, {}, None))
    if "testdef_repos" not in params and "testdef_urls" not in params:
        problems.add(loc, "needs 'testdef_repos' or 'testdef_urls'")
    rest = {k: v for k, v in params.items() if k not in ("testdef_repos", "testdef_urls")}
    return {"definitions": definitions, **rest}


def _url_definition(url: str, parameters: dict[str, Any], revision: str | None) -> dict[str, Any]:
    return definition_entry(
        source="url",
        repository=url,
        path=None,
        name=definition_name(url),
        revision=revision,
        parameters=parameters,
    )


def insert_implicit_boots(
    actions: list[ActionPlan], role_names: list[str], default_timeout: float
) -> list[ActionPlan]:
    """Make 2014's implicit boot explicit: deploy -> boot -> test for every role.

    Before the first test of each role that had no boot, insert a
    ``boot_linaro_image`` for the same roles as that role's deploy (or for the
    roles that need it). ``index`` is then renumbered to the position in the plan.
    """
    booted: set[str] = set()
    tested: set[str] = set()
    last_deploy: dict[str, ActionPlan] = {}
    out: list[ActionPlan] = []
    for action in actions:
        targets = list(action.roles) if action.roles else list(role_names)
        if action.kind == "boot":
            booted.update(targets)
        elif action.kind == "deploy":
            for role in targets:
                last_deploy[role] = action
        elif action.kind == "test":
            need = [r for r in role_names if r in targets and r not in booted and r not in tested]
            groups: dict[tuple[str, ...] | None, list[str]] = {}
            for role in need:
                deploy = last_deploy.get(role)
                groups.setdefault(deploy.roles if deploy else None, []).append(role)
            for group in groups.values():
                boot_roles = () if set(group) == set(role_names) else tuple(group)
                out.append(
                    ActionPlan(
                        kind="boot",
                        name="boot_linaro_image",
                        parameters={},
                        roles=boot_roles,
                        timeout=default_timeout,
                        index=action.index,
                    )
                )
            booted.update(need)
            tested.update(targets)
        out.append(action)
    return [replace(a, index=position) for position, a in enumerate(out)]
