"""Job files: LAVA 2014 JSON and current LAVA YAML, loaded into one ``JobPlan``.

``load_job`` parses the text (JSON or YAML, detected), recognises the format
from its shape, validates every rule and reports every problem at once as a
``JobValidationError`` whose ``problems`` are ``location: message`` lines.
A syntax error names its line and column. Nothing else escapes for a bad file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from schemas.job_checks import (
    JobValidationError,
    Problems,
    kind_of,
)
from schemas.job_json import load_2014
from schemas.job_paths import job_dir, resolve_paths
from schemas.job_yaml import load_yaml_job
from schemas.jobmodel import (
    FORMAT_2014,
    FORMAT_YAML,
    ActionPlan,
    JobPlan,
    RolePlan,
    SubJobPlan,
    Timeouts,
)

__all__ = [
    "FORMAT_2014",
    "FORMAT_YAML",
    "MAX_JOB_BYTES",
    "ActionPlan",
    "JobPlan",
    "JobValidationError",
    "RolePlan",
    "SubJobPlan",
    "Timeouts",
    "detect_format",
    "load_job",
    "load_job_file",
    "parse_document",
]

log = logging.getLogger(__name__)

#: job files are small; a bigger file is a mistake (or an attack on the parser)
MAX_JOB_BYTES = 4 * 1024 * 1024
#: values (mappings, lists, keys, scalars) a job may hold once YAML aliases are
#: expanded: the examples hold about 100; an alias bomb of 2 KB holds billions
MAX_JOB_VALUES = 100_000
#: how deeply a job's mappings and lists may nest (the examples: 9)
MAX_JOB_DEPTH = 64


#: libyaml's parser when PyYAML was built with it (several times faster), else pure Python
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictYamlLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that reports duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


def parse_document(text: str | bytes, problems: Problems) -> tuple[Any, str]:
    """Parse JSON or YAML text; returns (data, "json"|"yaml"), or (None, ...) with problems."""
    if isinstance(text, bytes):
        if len(text) > MAX_JOB_BYTES:
            problems.add("file", f"is {len(text)} bytes; a job file may be at most {MAX_JOB_BYTES}")
            return None, "yaml"
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problems.add("file", f"is not UTF-8 text (bad byte at offset {exc.start})")
            return None, "yaml"
    if len(text) > MAX_JOB_BYTES:
        problems.add(
            "file", f"is {len(text)} characters; a job file may be at most {MAX_JOB_BYTES}"
        )
        return None, "yaml"
    text = text.removeprefix("\ufeff")
    stripped = text.lstrip()
    if not stripped:
        problems.add("file", "is empty")
        return None, "yaml"
    if stripped[0] in "{[":
        try:
            data = json.loads(text, object_pairs_hook=_json_object, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            problems.add(f"line {exc.lineno}, column {exc.colno}", exc.msg)
            return None, "json"
        except _DuplicateKey as exc:
            problems.add("file", f"duplicate key {exc.args[0]!r} in a JSON object")
            return None, "json"
        except ValueError as exc:
            problems.add("file", str(exc))
            return None, "json"
        except RecursionError:
            problems.add("file", "is nested too deeply")
            return None, "json"
        if not _within_bounds(data, _json_children, lambda _: "file", problems):
            return None, "json"
        return data, "json"
    try:
        data = _load_yaml_bounded(text, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            problems.add(f"line {mark.line + 1}, column {mark.column + 1}", what)
        else:
            problems.add("file", what)
        return None, "yaml"
    except yaml.YAMLError as exc:
        problems.add("file", f"invalid YAML: {exc}")
        return None, "yaml"
    except RecursionError:
        problems.add("file", "is nested too deeply")
        return None, "yaml"
    return data, "yaml"


def _json_children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return list(value) if isinstance(value, list) else []


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _yaml_where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "file"


def _within_bounds(
    root: Any,
    children: Callable[[Any], list[Any]],
    where: Callable[[Any], str],
    problems: Problems,
) -> bool:
    """Count the values under ``root`` as they will be expanded (an aliased node once
    per use, counted once per node) and their depth, without expanding anything.

    False (with the problem, located at the first node past a limit) when the
    document holds more than ``MAX_JOB_VALUES`` values, nests deeper than
    ``MAX_JOB_DEPTH`` or refers to itself.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # iterative post-order: a deep document must not exhaust Python's stack
    stack: list[tuple[Any, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            total = 1 + sum(sizes[id(child)] for child in children(node))
            if total > MAX_JOB_VALUES:
                problems.add(
                    where(node),
                    f"holds more than {MAX_JOB_VALUES} values once its aliases are expanded "
                    "(a job file repeats what it means with YAML aliases only a few times)",
                )
                return False
            sizes[key] = total
            continue
        if key in sizes:
            continue  # an alias of a node already counted: its size is known
        if key in active:
            problems.add(where(node), "refers to itself (a YAML alias inside its own anchor)")
            return False
        if depth > MAX_JOB_DEPTH:
            problems.add(where(node), f"is nested more than {MAX_JOB_DEPTH} levels deep")
            return False
        active.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children(node))
    return True


def _load_yaml_bounded(text: str, problems: Problems) -> Any:
    """Compose the YAML document, check its bounds, and only then construct it."""
    loader = _StrictYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if not _within_bounds(node, _yaml_children, _yaml_where, problems):
            return None
        return loader.construct_document(node)
    finally:
        loader.dispose()


def detect_format(data: dict[str, Any], syntax: str) -> str:
    """Which of the two job formats a parsed mapping is written in."""
    if "device_group" in data or ("timeout" in data and "timeouts" not in data):
        return FORMAT_2014
    if "protocols" in data or "timeouts" in data:
        return FORMAT_YAML
    actions = data.get("actions")
    if isinstance(actions, list) and actions:
        first = actions[0]
        if isinstance(first, dict):
            if "command" in first:
                return FORMAT_2014
            if len(first) == 1:
                return FORMAT_YAML
    return FORMAT_2014 if syntax == "json" else FORMAT_YAML


def load_job(text: str | bytes, source: str = "<job>", *, base_dir: Path | None = None) -> JobPlan:
    """Load a job file's text (JSON or YAML) into a plan, or raise JobValidationError.

    Relative paths in it are taken from ``base_dir``, by default the directory
    of ``source`` when that is an absolute path (``schemas.job_paths``).
    """
    problems = Problems()
    data, syntax = parse_document(text, problems)
    plan: JobPlan | None = None
    if not problems:
        if not isinstance(data, dict):
            problems.add("file", f"must hold a job: a mapping of keys (got {kind_of(data)})")
        elif "run" in data and "metadata" in data and "actions" not in data:
            problems.add(
                "file",
                "is a LAVA test definition (metadata, run), not a job file: "
                "name it in a job's test definitions",
            )
        elif detect_format(data, syntax) == FORMAT_2014:
            plan = load_2014(data, problems, source)
        else:
            plan = load_yaml_job(data, problems, source)
    if plan is not None:
        plan = resolve_paths(plan, base_dir or job_dir(source), problems)
    if problems or plan is None:
        log.debug("%s: %d problem(s)", source, len(problems))
        raise JobValidationError(problems.items, source)
    log.debug("%s: %s job %r, %d sub-jobs", source, plan.format, plan.job_name, len(plan.subjobs))
    return plan


def load_job_file(path: str | os.PathLike[str]) -> JobPlan:
    """Read and load a job file; an unreadable file is reported like an invalid one."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            text = handle.read(MAX_JOB_BYTES + 1)
    except OSError as exc:
        raise JobValidationError(
            [f"file: cannot read it ({exc.strerror or exc})"], source
        ) from None
    return load_job(text, source=str(Path(source)), base_dir=Path(source).resolve().parent)
