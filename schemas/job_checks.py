"""The validation toolkit shared by both job file loaders.

``Problems`` collects every problem of a file as ``location: message`` lines
(``JobValidationError`` carries them), the strict marshmallow fields refuse
coercions LAVA users would not expect, ``check_mapping`` loads a mapping
collecting every error, and the normalisers for roles, images and test
definitions are shared by ``schemas.job_json`` (LAVA 2014) and
``schemas.job_yaml`` (current LAVA).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from marshmallow import Schema, ValidationError, fields, validate

from schemas.errors import JobError
from schemas.jobmodel import DEFAULT_PRIORITY, MAX_COUNT, RolePlan
from schemas.messages.base import flatten_errors

PRIORITY_NAMES = {"high": 100, "medium": 50, "low": 0}
COMPRESSIONS = {"gz": "gz", "xz": "xz", "bz2": "bz2", "zst": "zst", "zstd": "zst"}
URL_SCHEMES = ("file", "http", "https")
#: the longest timeout (job, action, connection, MultiNode) a job may set: longer
#: than any test run, far below what a deadline or a wait can hold (Python's
#: ``threading.TIMEOUT_MAX`` is about 292 years)
MAX_TIMEOUT_DAYS = 365
MAX_TIMEOUT_SECONDS = MAX_TIMEOUT_DAYS * 86400
DEFINITION_SOURCES = ("git", "inline", "url")

#: the location of problems with the job file's top-level mapping itself
TOP_LEVEL = "top level"

_ROLE_NAME = re.compile(r"^[^\s<>=:]{1,100}$")


class JobValidationError(JobError):
    """A job file with one or more problems; ``problems`` lists every one."""

    error_type = "job"

    def __init__(self, problems: Iterable[str], source: str = "<job>") -> None:
        self.problems: list[str] = list(problems) or ["invalid job file"]
        self.source = source
        count = len(self.problems)
        head = f"{source}: invalid job file ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))


# --------------------------------------------------------------------------- problems


class Problems:
    """Collects every problem of a job file as ``location: message`` lines."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, location: str, message: str) -> None:
        """Record one problem at ``location``."""
        self.items.append(f"{location}: {message}" if location else message)

    def extend(self, lines: Iterable[str]) -> None:
        """Record problems already written as ``location: message`` lines."""
        self.items.extend(lines)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def join(location: str, key: str | int) -> str:
    """The location of ``key`` inside ``location`` (``a.b``, ``a[2]``)."""
    if isinstance(key, int):
        return f"{location}[{key}]"
    return f"{location}.{key}" if location else key


#: what a problem calls a parsed value's type (``bool`` before ``int``: it is one)
_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a mapping"),
)


def kind_of(value: Any) -> str:
    """A user-facing name for the type of a parsed value."""
    for types, name in _KINDS:
        if isinstance(value, types):
            return name
    return type(value).__name__


def known_list(names: Iterable[str]) -> str:
    """Names for a 'known: ...' list, sorted."""
    return ", ".join(sorted(names))


# --------------------------------------------------------------------------- strict fields


class _Strict(fields.Field[Any]):
    default_error_messages = {"required": "is required", "null": "must not be null"}


class Text(_Strict):
    """A non-empty string (no coercion from numbers)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"must be a string (got {kind_of(value)})")
        if not value.strip():
            raise ValidationError("must not be empty")
        return value


class Whole(_Strict):
    """An integer; booleans and floats are refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"must be a whole number (got {kind_of(value)})")
        return value


class Flag(_Strict):
    """A real boolean: ``true``/``false``, not ``"yes"`` or ``1``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(f"must be true or false (got {kind_of(value)})")
        return value


class Seconds(_Strict):
    """A positive, finite number of seconds."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if not is_number(value) or value <= 0:
            raise ValidationError("must be a positive number of seconds")
        problem = timeout_problem(value)
        if problem:
            raise ValidationError(problem)
        return float(value)


class TextList(_Strict):
    """A list of non-empty strings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValidationError(f"must be a list of strings (got {kind_of(value)})")
        errors: dict[int, list[str]] = {}
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                errors[i] = [f"must be a non-empty string (got {kind_of(item)})"]
        if errors:
            raise ValidationError(errors)
        return list(value)


class Anything(fields.Raw):
    """Any value: accepted and passed through (checked for JSON safety later)."""

    default_error_messages = {"required": "is required", "null": "must not be null"}


def is_number(value: Any) -> bool:
    """A real, finite number (not a boolean, not NaN or infinity)."""
    if isinstance(value, bool):
        return False
    # an int is finite however long (float() of a 400-digit one would overflow)
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def timeout_problem(seconds: float) -> str | None:
    """Why a timeout of ``seconds`` is refused (past ``MAX_TIMEOUT_SECONDS``), or None."""
    if seconds > MAX_TIMEOUT_SECONDS:
        return f"is longer than {MAX_TIMEOUT_DAYS} days, the longest timeout a job may set"
    return None


def check_mapping(
    schema: Schema,
    data: Any,
    location: str,
    problems: Problems,
    *,
    accepted: Iterable[str] = (),
    what: str = "a mapping",
) -> dict[str, Any] | None:
    """Check unknown keys, then load ``data`` with ``schema`` collecting every error.

    Returns the valid part of the data (even when some fields were wrong, so
    that later cross-checks can still run), or None if ``data`` is not a mapping.
    """
    here = location or TOP_LEVEL
    if not isinstance(data, dict):
        problems.add(here, f"must be {what} (got {kind_of(data)})")
        return None
    known = {f.data_key or name for name, f in schema.fields.items()} | set(accepted)
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            problems.add(here, f"keys must be strings (got {key!r})")
        elif key not in known:
            problems.add(here, f"unknown key {key!r} (known: {known_list(known)})")
        else:
            clean[key] = value
    try:
        loaded: dict[str, Any] = schema.load(clean)
    except ValidationError as exc:
        problems.extend(flatten_errors(exc.messages, location))
        valid = exc.valid_data
        loaded = dict(valid) if isinstance(valid, dict) else {}
    return loaded


def roles_field(value: Any, location: str, problems: Problems) -> tuple[str, ...] | None:
    """An action's role limit: one role name or a list of them. None if invalid."""
    if isinstance(value, str) and value.strip():
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(dict.fromkeys(value))
    problems.add(location, "must be a role name or a non-empty list of role names")
    return None


def check_roles_exist(
    roles: tuple[str, ...], known: list[str], location: str, problems: Problems
) -> None:
    """Every role an action names is declared by the job."""
    if not known:
        return  # the missing roles are reported where they should be declared
    for name in roles:
        if name not in known:
            problems.add(location, f"no role named {name!r} (roles: {known_list(known) or 'none'})")


def check_role_name(name: str, location: str, problems: Problems) -> bool:
    """A role name fits what ``lava-group`` and the helpers can print and parse."""
    if not _ROLE_NAME.match(name):
        problems.add(
            location,
            f"role names are 1 to 100 characters without spaces, '<', '>', '=' or ':' "
            f"(got {name!r})",
        )
        return False
    return True


def priority_value(value: Any, location: str, problems: Problems) -> int:
    """A job's priority as a number (LAVA's names or 0 to 100)."""
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, str) and value.lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    problems.add(
        location, f"must be high, medium, low or a whole number from 0 to 100 (got {value!r})"
    )
    return DEFAULT_PRIORITY


# --------------------------------------------------------------------------- roles and actions


def count_field() -> Whole:
    """A role's ``count``: 1 if not given, from 1 to ``MAX_COUNT``."""
    return Whole(
        load_default=1,
        validate=[
            validate.Range(min=1, error="must be at least {min}"),
            validate.Range(max=MAX_COUNT, error="must be at most {max}"),
        ],
    )


def listed(value: Any, location: str, what: str, problems: Problems) -> list[Any]:
    """The entries of a required non-empty list of ``what``s; [] if invalid or absent.

    An absent list (None) is not reported here: the schema reports it as required.
    """
    if not isinstance(value, list):
        if value is not None:
            problems.add(location, f"must be a list of {what}s (got {kind_of(value)})")
        return []
    if not value:
        problems.add(location, f"must list at least one {what}")
        return []
    return value


def check_device_choice(
    entry: Mapping[str, Any], item: Mapping[str, Any], location: str, problems: Problems
) -> bool:
    """A role gives ``device_type`` or ``device`` (one of them), and a role naming
    one ``device`` has a count of 1. ``entry`` is the role as written, ``item``
    the loaded part of it. False if a problem was reported."""
    ok = True
    if "device_type" in entry and "device" in entry:
        problems.add(location, "give 'device_type' or 'device', not both")
        ok = False
    elif "device_type" not in entry and "device" not in entry:
        problems.add(location, "needs 'device_type' (any board of a type) or 'device' (one board)")
        ok = False
    count = item.get("count")
    if "device" in item and count is not None and count != 1:
        problems.add(location, f"'device' names one board, so 'count' must be 1 (got {count})")
        ok = False
    return ok


def role_plan(
    name: str, item: Mapping[str, Any], context: Mapping[str, Any] | None = None
) -> RolePlan:
    """The role ``name`` from its loaded, valid entry (``count`` present); ``context``
    is the job's, under the role's own."""
    return RolePlan(
        name=name,
        count=item["count"],
        device_type=item.get("device_type"),
        device=item.get("device"),
        tags=tuple(item.get("tags", ())),
        is_slave=item.get("is_slave", False),
        essential=item.get("essential", False),
        context={**(context or {}), **(item.get("context") or {})},
    )


def check_group_size(roles: list[RolePlan], location: str, problems: Problems) -> None:
    """The whole group stays within ``MAX_COUNT`` devices."""
    total = sum(r.count for r in roles)
    if total > MAX_COUNT:
        problems.add(location, f"the group has {total} devices; at most {MAX_COUNT}")


def action_roles(
    body: Mapping[str, Any], role_names: list[str], location: str, problems: Problems
) -> tuple[str, ...]:
    """The roles an action is limited to by its ``role`` key; () means every role."""
    if "role" not in body:
        return ()
    limited = roles_field(body["role"], join(location, "role"), problems)
    if limited is None:
        return ()
    check_roles_exist(limited, role_names, join(location, "role"), problems)
    return limited


# --------------------------------------------------------------------------- images


def compression_from_url(url: str) -> str | None:
    """The compression a URL's suffix names (``.gz``, ``.xz``...), if any."""
    path = urlsplit(url).path
    for suffix in ("gz", "xz", "bz2", "zst"):
        if path.endswith("." + suffix):
            return suffix
    return None


def local_path(location: str) -> str | None:
    """The path of a plain or ``file:`` (no ``//``) location; None for a URL."""
    if location.startswith("file://"):
        return None
    if location.startswith("file:"):
        return unquote(location[len("file:") :]) or None
    head = location.split("/", 1)[0]
    if ":" in head:  # a scheme, or git's user@host:path
        return None
    return location or None


def check_url(url: Any, location: str, problems: Problems) -> bool:
    """A URL string with a scheme the dispatcher can fetch, or a local path
    (resolved by ``schemas.job_paths``)."""
    if not isinstance(url, str) or not url.strip():
        problems.add(location, f"must be a URL string (got {kind_of(url)})")
        return False
    if local_path(url) is not None:
        return True
    scheme = urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        schemes = ", ".join(s + "://" for s in URL_SCHEMES)
        problems.add(
            location,
            f"unsupported URL {url!r}: {shown} (known: {schemes})",
        )
        return False
    return True


#: a space, a control character or DEL: no git or download URL holds one unescaped
_NOT_IN_URL = re.compile(r"[\s\x00-\x1f\x7f]")


def check_repository_url(url: str, source: str, location: str, problems: Problems) -> bool:
    """A ``git`` or ``url`` repository holds no space or control character (git cannot
    clone such a URL; before, it failed only when the job ran)."""
    bad = _NOT_IN_URL.search(url)
    if bad is None:
        return True
    what = "a space" if bad.group() == " " else f"the character {bad.group()!r}"
    problems.add(
        location, f"{url!r} holds {what}, which a {source} URL cannot (write a space as %20)"
    )
    return False


def image_entry(
    value: Any, location: str, problems: Problems, *, explicit: bool
) -> dict[str, Any] | None:
    """Normalise one image: a URL string or a mapping with ``url``.

    ``explicit`` is True when the file format has a ``compression`` key (YAML);
    an absent key then still means: infer from the URL's suffix.
    """
    if isinstance(value, str):
        if not check_url(value, location, problems):
            return None
        return {"url": value, "compression": compression_from_url(value)}
    if not isinstance(value, dict):
        problems.add(location, f"must be a URL or a mapping with 'url' (got {kind_of(value)})")
        return None
    entry: dict[str, Any] = {}
    ok = True
    for key, item in value.items():
        if not isinstance(key, str):
            problems.add(location, f"keys must be strings (got {key!r})")
            ok = False
        elif key not in ("url", "compression"):
            if key in ("md5sum", "sha256sum", "sha512sum") and (
                not isinstance(item, str) or not re.fullmatch(r"[0-9a-fA-F]+", item)
            ):
                problems.add(join(location, key), "must be a hexadecimal checksum string")
                ok = False
            else:
                entry[key] = item
    if "url" not in value:
        problems.add(join(location, "url"), "is required")
        return None
    if not check_url(value["url"], join(location, "url"), problems):
        return None
    entry["url"] = value["url"]
    if "compression" in value:
        comp = value["compression"]
        if comp is None or comp is False:
            entry["compression"] = None
        elif isinstance(comp, str) and comp in COMPRESSIONS:
            entry["compression"] = COMPRESSIONS[comp]
        else:
            problems.add(
                join(location, "compression"),
                f"unsupported compression {comp!r} (known: {known_list(COMPRESSIONS)})",
            )
            ok = False
    else:
        entry["compression"] = compression_from_url(value["url"])
    return entry if ok else None


# --------------------------------------------------------------------------- test definitions


def definition_name(path: str) -> str:
    """The default test name: the stem of the test definition file."""
    stem = PurePosixPath(urlsplit(path).path or path).stem
    return stem or "test"


def definition_entry(
    *,
    source: str,
    repository: Any,
    path: str | None,
    name: str,
    revision: str | None,
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """One normalised test definition, the shape the dispatcher runs from both formats."""
    return {
        "from": source,
        "repository": repository,
        "path": path,
        "name": name,
        "revision": revision,
        "parameters": parameters,
    }


# --------------------------------------------------------------------------- JSON safety


def jsonable(value: Any, location: str, problems: Problems, depth: int = 0) -> Any:
    """Copy pass-through data into plain JSON types; report what cannot be."""
    if depth > 50:
        problems.add(location, "is nested too deeply")
        return None
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.add(location, f"must be a finite number (got {value})")
            return None
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [jsonable(v, join(location, i), problems, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else str(k).lower() if isinstance(k, bool) else str(k)
            out[key] = jsonable(v, join(location, key), problems, depth + 1)
        return out
    problems.add(location, f"must be plain data (got {type(value).__name__})")
    return None
