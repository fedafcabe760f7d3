"""Every validation rule, table-driven: one change to a valid job -> exactly these problems."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from job_seeds import seed_2014, seed_yaml

from schemas.job import JobPlan, JobValidationError, load_job

KNOWN_COMMANDS = (
    "boot_linaro_image, deploy_linaro_image, deploy_linaro_kernel, lava_command_run, "
    "lava_test_shell, submit_results, submit_results_on_host"
)
KNOWN_2014_TOP = (
    "actions, device_group, health_check, job_name, logging_level, metadata, notify, "
    "notify_on_incomplete, priority, tags, timeout"
)
KNOWN_GROUP = "count, device, device_type, is_slave, role, tags"
KNOWN_ROLE = (
    "connection, context, count, device, device_type, environment, essential, expect_role, "
    "host_role, is_slave, request, tags, timeout"
)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set the value at a dotted path (``a.b[2].c``); ``DELETE`` removes it."""

    def mutate(doc: dict[str, Any]) -> None:
        parts: list[str | int] = []
        for piece in path.split("."):
            name, *indexes = piece.split("[")
            if name:
                parts.append(name)
            parts.extend(int(i.rstrip("]")) for i in indexes)
        target: Any = doc
        for part in parts[:-1]:
            target = target[part]
        if value is DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value

    return mutate


DELETE = object()

R = "protocols.lava-multinode.roles"

CASES_2014: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        "count-zero",
        _set("device_group[1].count", 0),
        ["device_group[1].count: must be at least 1"],
    ),
    (
        "count-not-number",
        _set("device_group[0].count", "two"),
        ["device_group[0].count: must be a whole number (got a string)"],
    ),
    (
        "count-huge",
        _set("device_group[0].count", 5000),
        ["device_group[0].count: must be at most 1000"],
    ),
    (
        "action-role-missing",
        _set("actions[3].parameters.role", "omap5"),
        ["actions[3].parameters.role: no role named 'omap5' (roles: omap3, omap4)"],
    ),
    (
        "device-needs-count-1",
        _set("device_group[0]", {"role": "omap4", "count": 2, "device": "panda01"}),
        ["device_group[0]: 'device' names one board, so 'count' must be 1 (got 2)"],
    ),
    (
        "duplicate-role",
        _set(
            "device_group",
            [
                {"role": "omap3", "device_type": "beaglexm"},
                {"role": "omap4", "device_type": "panda"},
                {"role": "omap4", "device_type": "panda"},
            ],
        ),
        ["device_group[2].role: duplicate role 'omap4'"],
    ),
    (
        "unknown-command",
        _set("actions[0].command", "deploy_foo"),
        [f"actions[0].command: unknown command 'deploy_foo' (known: {KNOWN_COMMANDS})"],
    ),
    ("timeout-zero", _set("timeout", 0), ["timeout: must be a positive number of seconds"]),
    ("timeout-negative", _set("timeout", -5), ["timeout: must be a positive number of seconds"]),
    ("timeout-string", _set("timeout", "900"), ["timeout: must be a positive number of seconds"]),
    ("timeout-bool", _set("timeout", True), ["timeout: must be a positive number of seconds"]),
    ("timeout-missing", _set("timeout", DELETE), ["timeout: is required"]),
    (
        "action-timeout-negative",
        _set("actions[2].parameters.timeout", -1),
        ["actions[2].parameters.timeout: must be a positive number of seconds"],
    ),
    (
        "unknown-top-key",
        _set("colour", "blue"),
        [f"top level: unknown key 'colour' (known: {KNOWN_2014_TOP})"],
    ),
    (
        "unknown-group-key",
        _set("device_group[0].board", "x"),
        [f"device_group[0]: unknown key 'board' (known: {KNOWN_GROUP})"],
    ),
    (
        "device-and-device-type",
        _set("device_group[1].device", "beagle01"),
        ["device_group[1]: give 'device_type' or 'device', not both"],
    ),
    (
        "neither-device-nor-type",
        _set("device_group[1].device_type", DELETE),
        ["device_group[1]: needs 'device_type' (any board of a type) or 'device' (one board)"],
    ),
    (
        "role-missing",
        _set("device_group[1].role", DELETE),
        [
            "device_group[1].role: is required",
            "actions[1].parameters.role: no role named 'omap3' (roles: omap4)",
        ],
    ),
    (
        "role-with-space",
        _set("device_group[1].role", "omap 3"),
        [
            "device_group[1].role: role names are 1 to 100 characters without spaces, "
            "'<', '>', '=' or ':' (got 'omap 3')",
            "actions[1].parameters.role: no role named 'omap3' (roles: omap 3, omap4)",
        ],
    ),
    ("empty-group", _set("device_group", []), ["device_group: must list at least one role"]),
    (
        "group-not-list",
        _set("device_group", {"role": "x"}),
        ["device_group: must be a list of roles (got a mapping)"],
    ),
    ("no-actions", _set("actions", []), ["actions: must list at least one action"]),
    ("actions-missing", _set("actions", DELETE), ["actions: is required"]),
    (
        "is-slave-string",
        _set("device_group[0].is_slave", "yes"),
        ["device_group[0].is_slave: must be true or false (got a string)"],
    ),
    (
        "tags-not-list",
        _set("device_group[0].tags", "usb-flash"),
        ["device_group[0].tags: must be a list of strings (got a string)"],
    ),
    (
        "tag-not-string",
        _set("device_group[0].tags", ["ok", 3]),
        ["device_group[0].tags[1]: must be a non-empty string (got a number)"],
    ),
    (
        "logging-level",
        _set("logging_level", "LOUD"),
        ["logging_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"],
    ),
    (
        "priority",
        _set("priority", "urgent"),
        ["priority: must be high, medium, low or a whole number from 0 to 100 (got 'urgent')"],
    ),
    (
        "unknown-parameter",
        _set("actions[0].parameters.imagee", "x"),
        [
            "actions[0].parameters: unknown key 'imagee' (known: bootloadertype, customize, "
            "hwpack, image, login_commands, login_prompt, password, password_prompt, role, "
            "rootfs, rootfstype, target_type, username)"
        ],
    ),
    (
        "deploy-without-image",
        _set("actions[0].parameters.image", DELETE),
        ["actions[0].parameters: needs 'image' (or both 'hwpack' and 'rootfs')"],
    ),
    (
        "image-url-scheme",
        _set("actions[0].parameters.image", "ftp://x/y.img"),
        [
            "actions[0].parameters.image: unsupported URL 'ftp://x/y.img': scheme 'ftp' "
            "(known: file://, http://, https://)"
        ],
    ),
    (
        "image-relative-without-a-directory",
        _set("actions[0].parameters.image", "images/y.img"),
        [
            "actions[0].deploy.images.image.url: 'images/y.img' is relative to the job "
            "file's directory, which this submission does not have: give the file itself "
            "(lavamq run FILE, lavamq submit FILE) or an absolute file:// URL"
        ],
    ),
    (
        "testdef-unknown-key",
        _set("actions[2].parameters.testdef_repos[0].tesdef", "x.yaml"),
        [
            "actions[2].parameters.testdef_repos[0]: unknown key 'tesdef' (known: branch, "
            "bzr-repo, git-repo, parameters, revision, testdef, url)"
        ],
    ),
    (
        "testdef-bzr",
        _set("actions[2].parameters.testdef_repos[0]", {"bzr-repo": "lp:x", "testdef": "a.yaml"}),
        [
            "actions[2].parameters.testdef_repos[0].bzr-repo: Bazaar repositories are not "
            "supported (use 'git-repo')"
        ],
    ),
    (
        "test-without-definitions",
        _set("actions[2].parameters", {"timeout": 60}),
        ["actions[2].parameters: needs 'testdef_repos' or 'testdef_urls'"],
    ),
    (
        "command-run-needs-commands",
        _set("actions[3]", {"command": "lava_command_run", "parameters": {}}),
        ["actions[3].parameters.commands: is required"],
    ),
    (
        "single-node-job",
        _set("device_type", "panda"),
        ["device_type: lavamq runs MultiNode jobs: describe the devices in 'device_group' instead"],
    ),
    (
        "action-not-mapping",
        _set("actions[1]", "deploy_linaro_image"),
        ["actions[1]: must be a mapping (got a string)"],
    ),
]

CASES_YAML: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    ("count-zero", _set(f"{R}.omap4.count", 0), [f"{R}.omap4.count: must be at least 1"]),
    (
        "action-role-missing",
        _set("actions[2].boot.role", ["omap4", "omap5"]),
        ["actions[2].boot.role: no role named 'omap5' (roles: omap3, omap4)"],
    ),
    (
        "device-needs-count-1",
        _set(f"{R}.omap4", {"device": "panda01", "count": 2}),
        [f"{R}.omap4: 'device' names one board, so 'count' must be 1 (got 2)"],
    ),
    (
        "unknown-action",
        _set("actions[0]", {"flash": {"role": ["omap4"]}}),
        ["actions[0]: unknown action 'flash' (known: boot, command, deploy, test)"],
    ),
    (
        "two-action-keys",
        _set("actions[0].boot", {"method": "minimal"}),
        [
            "actions[0]: must have exactly one key, one of boot, command, deploy, test "
            "(got 'deploy', 'boot')"
        ],
    ),
    (
        "unknown-role-key",
        _set(f"{R}.omap3.board", "x"),
        [f"{R}.omap3: unknown key 'board' (known: {KNOWN_ROLE})"],
    ),
    (
        "unknown-top-key",
        _set("colour", "blue"),
        [
            "top level: unknown key 'colour' (known: actions, context, description, "
            "environment, job_name, metadata, notify, priority, protocols, reboot_to_fastboot, "
            "secrets, tags, timeouts, visibility)"
        ],
    ),
    (
        "timeout-not-positive",
        _set("timeouts.action", {"minutes": 0}),
        ["timeouts.action.minutes: must be a positive number"],
    ),
    (
        "timeout-two-units",
        _set("timeouts.action", {"minutes": 1, "seconds": 5}),
        [
            "timeouts.action: give exactly one of days, hours, minutes, seconds "
            "(got minutes, seconds)"
        ],
    ),
    (
        "timeout-unknown-unit",
        _set("actions[3].test.timeout", {"mins": 3}),
        [
            "actions[3].test.timeout: unknown key 'mins' (known: days, hours, minutes, seconds, "
            "skip)",
            "actions[3].test.timeout: give exactly one of days, hours, minutes, seconds",
        ],
    ),
    (
        "action-longer-than-job",
        _set("actions[3].test.timeout", {"hours": 2}),
        ["actions[3].test.timeout: 7200 seconds is longer than the job timeout (3600 seconds)"],
    ),
    (
        "multinode-timeout",
        _set("protocols.lava-multinode.timeout", {"seconds": -3}),
        ["protocols.lava-multinode.timeout.seconds: must be a positive number"],
    ),
    (
        "no-protocols",
        _set("protocols", DELETE),
        ["protocols: is required: lavamq runs MultiNode jobs (add 'lava-multinode: roles: ...')"],
    ),
    ("no-job-name", _set("job_name", DELETE), ["job_name: is required"]),
    (
        "definition-bzr",
        _set("actions[3].test.definitions[0].from", "bzr"),
        ["actions[3].test.definitions[0].from: unsupported source 'bzr' (known: git, inline, url)"],
    ),
    (
        "definition-unknown-key",
        _set("actions[3].test.definitions[0].revison", "v1"),
        [
            "actions[3].test.definitions[0]: unknown key 'revison' (known: branch, "
            "compression, expected, from, headers, history, lava-signal, name, parameters, "
            "params, path, recursive, repository, revision, skip_install, strip-components)"
        ],
    ),
    (
        "git-definition-needs-path",
        _set("actions[3].test.definitions[0].path", DELETE),
        ["actions[3].test.definitions[0].path: is required for a git test definition"],
    ),
    (
        "inline-needs-metadata",
        _set(
            "actions[3].test.definitions[0]",
            {"from": "inline", "name": "x", "path": "x.yaml", "repository": {"run": {}}},
        ),
        [
            "actions[3].test.definitions[0].repository: "
            "an inline definition needs a 'metadata' mapping"
        ],
    ),
    (
        "unknown-test-key",
        _set("actions[3].test.defintions", []),
        [
            "actions[3].test: unknown key 'defintions' (known: connection-namespace, definitions, "
            "docker, failure_retry, interactive, lava-signal, monitors, namespace, protocols, "
            "repeat, role, skip_install, stage, timeout)"
        ],
    ),
    (
        "monitors-not-supported",
        _set("actions[3].test", {"monitors": [{"name": "x"}]}),
        ["actions[3].test: lavamq runs test definitions only ('monitors' tests are not supported)"],
    ),
    (
        "compression-zip",
        _set("actions[0].deploy.images.rootfs.compression", "zip"),
        [
            "actions[0].deploy.images.rootfs.compression: unsupported compression 'zip' "
            "(known: bz2, gz, xz, zst, zstd)"
        ],
    ),
    (
        "checksum-not-hex",
        _set("actions[0].deploy.images.rootfs.sha256sum", "not-a-sum"),
        ["actions[0].deploy.images.rootfs.sha256sum: must be a hexadecimal checksum string"],
    ),
    (
        "image-needs-url",
        _set("actions[1].deploy.images.rootfs", {"compression": "gz"}),
        ["actions[1].deploy.images.rootfs.url: is required"],
    ),
    (
        "expect-role-unknown",
        _set(f"{R}.omap3.expect_role", "host"),
        [f"{R}.omap3.expect_role: no role named 'host' (roles: omap3, omap4)"],
    ),
    (
        "essential-not-bool",
        _set(f"{R}.omap3.essential", "yes"),
        [f"{R}.omap3.essential: must be true or false (got a string)"],
    ),
    (
        "priority-out-of-range",
        _set("priority", 101),
        ["priority: must be high, medium, low or a whole number from 0 to 100 (got 101)"],
    ),
    (
        "failure-retry",
        _set("actions[2].boot.failure_retry", 0),
        ["actions[2].boot.failure_retry: must be a whole number, at least 1"],
    ),
    (
        "prompts-not-strings",
        _set("actions[2].boot.prompts", [1]),
        ["actions[2].boot.prompts: must be a string or a list of non-empty strings"],
    ),
    (
        "command-needs-name",
        _set("actions[2]", {"command": {"role": ["omap4"]}}),
        ["actions[2].command.name: is required"],
    ),
    (
        "single-node-job",
        _set("device_type", "qemu"),
        [
            "device_type: lavamq runs MultiNode jobs: describe the devices in "
            "'protocols: lava-multinode: roles' instead"
        ],
    ),
]


def _problems(text: str) -> list[str]:
    with pytest.raises(JobValidationError) as info:
        load_job(text)
    return info.value.problems


def test_base_documents_are_valid() -> None:
    assert len(load_job(json.dumps(seed_2014())).subjobs) == 3
    assert len(load_job(yaml.safe_dump(seed_yaml())).subjobs) == 3


@pytest.mark.parametrize(("name", "mutate", "expected"), CASES_2014, ids=[c[0] for c in CASES_2014])
def test_2014_rule(
    name: str, mutate: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    doc = copy.deepcopy(seed_2014())
    mutate(doc)
    assert _problems(json.dumps(doc, indent=2)) == expected


@pytest.mark.parametrize(("name", "mutate", "expected"), CASES_YAML, ids=[c[0] for c in CASES_YAML])
def test_yaml_rule(
    name: str, mutate: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    doc = copy.deepcopy(seed_yaml())
    mutate(doc)
    assert _problems(yaml.safe_dump(doc, sort_keys=False)) == expected


#: PyYAML words syntax errors differently with and without libyaml
LIBYAML = bool(getattr(yaml, "__with_libyaml__", False))

SYNTAX_CASES = [
    (
        "json",
        '{\n  "timeout": 900,\n  "job_name": "x",\n  "device_group": ,\n}',
        ["line 4, column 19: Expecting value"],
    ),
    (
        "yaml",
        "job_name: x\nprotocols:\n  lava-multinode:\n    roles: [a\nactions: []\n",
        [
            "line 5, column 8: did not find expected ',' or ']'"
            if LIBYAML
            else "line 5, column 8: expected ',' or ']', but got ':'"
        ],
    ),
    (
        "yaml-indent",
        "a: b\n  c: d\n",
        [
            "line 2, column 4: mapping values are not allowed "
            + ("in this context" if LIBYAML else "here")
        ],
    ),
    ("json-nan", '{"timeout": NaN}', ["file: NaN is not a number in JSON"]),
    ("not-a-mapping", "[1, 2]", ["file: must hold a job: a mapping of keys (got a list)"]),
    ("scalar", "just words", ["file: must hold a job: a mapping of keys (got a string)"]),
    ("empty", "  \n", ["file: is empty"]),
    (
        "test-definition-not-job",
        "metadata:\n  name: smoke\nrun:\n  steps: [true]\n",
        [
            "file: is a LAVA test definition (metadata, run), not a job file: "
            "name it in a job's test definitions"
        ],
    ),
    (
        "python-tag",
        "job_name: !!python/object/apply:os.system ['true']\n",
        [
            "line 1, column 11: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'"
        ],
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "expected"), SYNTAX_CASES, ids=[c[0] for c in SYNTAX_CASES]
)
def test_syntax_errors_name_line_and_column(name: str, text: str, expected: list[str]) -> None:
    assert _problems(text) == expected


def test_a_duplicate_key_is_a_warning_and_the_last_one_wins() -> None:
    # as PyYAML loads a job for LAVA (and Python's json for LAVA 2014)
    text = yaml.safe_dump(seed_yaml(), sort_keys=False)
    text = text.replace("job_name:", "job_name: first\njob_name:", 1)
    plan = load_job(text, "dup.yaml")
    assert plan.job_name == seed_yaml()["job_name"]
    line = text.splitlines().index(f"job_name: {seed_yaml()['job_name']}") + 1
    assert plan.warnings == (
        f"line {line}, column 1: duplicate key 'job_name': the last one is used (as LAVA does)",
    )
    doc = seed_2014()
    text = json.dumps(doc, indent=1).replace('"timeout":', '"timeout": 7,\n "timeout":', 1)
    plan = load_job(text, "dup.json")
    assert plan.timeouts.action == doc["timeout"]
    assert plan.warnings == (
        "line 3, column 2: duplicate key 'timeout': the last one is used (as LAVA does)",
    )
    # the warnings travel with the plan (to the coordinator's receipt)
    assert JobPlan.from_dict(plan.to_dict()).warnings == plan.warnings


def test_not_utf8() -> None:
    with pytest.raises(JobValidationError) as info:
        load_job(b'{"timeout": "\xff"}')
    assert info.value.problems == ["file: is not UTF-8 text (bad byte at offset 13)"]


def test_every_problem_is_reported_at_once() -> None:
    doc = seed_2014()
    doc["timeout"] = 0
    doc["device_group"][1]["count"] = 0
    doc["actions"][0]["command"] = "deploy_foo"
    doc["actions"][3]["parameters"]["role"] = "omap5"
    problems = _problems(json.dumps(doc))
    assert problems == [
        "timeout: must be a positive number of seconds",
        "device_group[1].count: must be at least 1",
        f"actions[0].command: unknown command 'deploy_foo' (known: {KNOWN_COMMANDS})",
        "actions[3].parameters.role: no role named 'omap5' (roles: omap3, omap4)",
    ]
