"""Parsing a job file's text (JSON or YAML) within bounds, before any rule is checked.

Job files come from anyone who may submit, so the parser is bounded: at most
``MAX_JOB_BYTES``, ``MAX_JOB_VALUES`` values once YAML aliases are expanded
(counted on the composed document, nothing built yet), ``MAX_JOB_DEPTH``
levels, and no integer Python could not print (``MAX_INT_DIGITS``). Every
refusal is a located problem (``line L, column C`` or ``file``). Test
definitions (``schemas.testdef``) are read with the same parser.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import yaml

from schemas.job_checks import JobValidationError, Problems

#: job files are small; a bigger file is a mistake (or an attack on the parser)
MAX_JOB_BYTES = 4 * 1024 * 1024
#: values (mappings, lists, keys, scalars) a job may hold once YAML aliases are
#: expanded: the examples hold about 100; an alias bomb of 2 KB holds billions
MAX_JOB_VALUES = 100_000
#: how deeply a job's mappings and lists may nest (the examples: 9)
MAX_JOB_DEPTH = 64
#: the longest integer a job may write: Python's own limit on converting an
#: integer to and from decimal text (``sys.int_info.default_max_str_digits``),
#: past which printing it anywhere later would fail
MAX_INT_DIGITS = 4300
_INT_BOUND = 10**MAX_INT_DIGITS


#: libyaml's parser when PyYAML was built with it (several times faster), else pure Python
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LavaYamlLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that keeps the last of duplicate keys, as PyYAML does for LAVA, and
    remembers where each duplicate was (for a warning naming its line and column)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[Any, yaml.Mark]] = []


def _construct_mapping(loader: _LavaYamlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
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
            loader.duplicates.append((key, key_node.start_mark))
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


def duplicate_warning(key: Any, where: str) -> str:
    """The warning for a duplicate key: the last one is used, as LAVA's loader does."""
    return f"{where}: duplicate key {key!r}: the last one is used (as LAVA does)"


def _marked(duplicates: list[tuple[Any, yaml.Mark]]) -> list[str]:
    return [
        duplicate_warning(key, f"line {mark.line + 1}, column {mark.column + 1}")
        for key, mark in duplicates
    ]


def _too_long(digits: int) -> str:
    return f"an integer of {digits} digits: a job file may write at most {MAX_INT_DIGITS}"


def _construct_int(loader: _LavaYamlLoader, node: yaml.ScalarNode) -> int:
    """YAML's int, refused (at its line) past ``MAX_INT_DIGITS`` in any base."""
    digits = sum(c.isalnum() for c in str(node.value))
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(None, None, _too_long(digits), node.start_mark)
    value: int = yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    if abs(value) >= _INT_BOUND:  # 0x, 0o, 0b and sexagesimal hold more than they write
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of more than {MAX_INT_DIGITS} digits", node.start_mark
        )
    return value


_LavaYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)
_LavaYamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _JsonObjects:
    """``object_pairs_hook`` keeping the last of duplicate keys (as Python's json and
    LAVA 2014 do) and remembering them."""

    def __init__(self) -> None:
        self.duplicates: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                self.duplicates.append(key)
            out[key] = value
        return out


def _json_duplicates(text: str, keys: list[str]) -> list[str]:
    """Where the JSON document's duplicate keys are (``line L, column C``), found by
    reading it as YAML, which holds JSON; the key alone when that reading fails."""
    try:
        loader = _LavaYamlLoader(text)
        try:
            loader.get_single_data()
        finally:
            loader.dispose()
        found = _marked(loader.duplicates)
    except (yaml.YAMLError, RecursionError):
        found = []
    return found or [duplicate_warning(key, "file") for key in keys]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


class _LongInt(ValueError):
    """A JSON integer past ``MAX_INT_DIGITS`` (its text, to find its place)."""


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongInt(text)
    return int(text)


def _place(text: str, number: str) -> str:
    """``line L, column C`` of ``number`` written as a JSON number in ``text``."""
    found = re.search(r"(?<![\w.\"])" + re.escape(number) + r"(?![\w.])", text)
    if found is None:
        return "file"
    line = text.count("\n", 0, found.start()) + 1
    column = found.start() - text.rfind("\n", 0, found.start())
    return f"line {line}, column {column}"


def read_job_bytes(path: str) -> bytes:
    """A job file's bytes; one past ``MAX_JOB_BYTES`` is refused with its real size
    (only as much as the limit allows is ever read)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JOB_BYTES + 1)
            if len(data) > MAX_JOB_BYTES:
                size = os.fstat(handle.fileno()).st_size
                # a pipe or a growing file has no size to tell
                shown = f"{size}" if size > MAX_JOB_BYTES else f"more than {MAX_JOB_BYTES}"
                raise JobValidationError(
                    [f"file: is {shown} bytes; a job file may be at most {MAX_JOB_BYTES}"], path
                )
    except OSError as exc:
        raise JobValidationError([f"file: cannot read it ({exc.strerror or exc})"], path) from None
    return data


def parse_document(
    text: str | bytes, problems: Problems, warnings: list[str] | None = None
) -> tuple[Any, str]:
    """Parse JSON or YAML text; returns (data, "json"|"yaml"), or (None, ...) with problems.

    A duplicate key is not a problem: the last one is used, as LAVA's YAML loader and
    Python's json do, and ``warnings`` gets a line naming it and where it is."""
    warnings = warnings if warnings is not None else []
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
        objects = _JsonObjects()
        try:
            data = json.loads(
                text,
                object_pairs_hook=objects,
                parse_constant=_no_constant,
                parse_int=_json_int,
            )
        except json.JSONDecodeError as exc:
            problems.add(f"line {exc.lineno}, column {exc.colno}", exc.msg)
            return None, "json"
        except _LongInt as exc:
            number = str(exc.args[0])
            problems.add(_place(text, number), _too_long(len(number.lstrip("-"))))
            return None, "json"
        except ValueError as exc:
            problems.add("file", str(exc))
            return None, "json"
        except RecursionError:
            problems.add("file", "is nested too deeply")
            return None, "json"
        if not _within_bounds(data, _json_children, lambda _: "file", problems):
            return None, "json"
        if objects.duplicates:
            warnings.extend(_json_duplicates(text, objects.duplicates))
        return data, "json"
    try:
        data = _load_yaml_bounded(text, problems, warnings)
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


def _load_yaml_bounded(text: str, problems: Problems, warnings: list[str]) -> Any:
    """Compose the YAML document, check its bounds, and only then construct it."""
    loader = _LavaYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if not _within_bounds(node, _yaml_children, _yaml_where, problems):
            return None
        data = loader.construct_document(node)
        warnings.extend(_marked(loader.duplicates))
        return data
    finally:
        loader.dispose()
