"""Local paths in a job file, resolved against the job file's own directory.

A job file may name an image or a test definition repository by a plain
path (``images/vmlinuz``, ``../..``, ``/srv/images/rootfs.img``) or by a
``file:`` URL without ``//`` (``file:images/vmlinuz``). Relative ones are
taken relative to the directory of the job file, as the machine that read
the file sees it (``lavamq run FILE``, ``lavamq submit FILE``); every such
location leaves the loader absolute: images as ``file:///...`` URLs, git
repositories as absolute paths. A job given as text only (over XML-RPC, say)
has no directory: a relative location is then a problem of the file.

LAVA itself takes only absolute ``file://`` URLs and URLs of servers.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from schemas.job_checks import Problems, join, local_path
from schemas.jobmodel import ActionPlan, JobPlan


def job_dir(source: str) -> Path | None:
    """The directory of the job file named by ``source``, when it is an absolute path."""
    path = Path(source)
    return path.parent if path.is_absolute() else None


def _absolute(path: str, base: Path | None) -> Path | None:
    if os.path.isabs(path):
        return Path(os.path.normpath(path))
    if base is None:
        return None
    return Path(os.path.normpath(base / path))


def resolve_paths(plan: JobPlan, base: Path | None, problems: Problems) -> JobPlan:
    """The plan with every local image and repository location made absolute."""
    resolved = {id(a): _resolve_action(a, base, problems) for a in plan.actions}
    subjobs = tuple(
        replace(s, actions=tuple(resolved.get(id(a), a) for a in s.actions)) for s in plan.subjobs
    )
    return replace(plan, actions=tuple(resolved[id(a)] for a in plan.actions), subjobs=subjobs)


def _resolve_action(action: ActionPlan, base: Path | None, problems: Problems) -> ActionPlan:
    params: dict[str, Any] = dict(action.parameters)
    loc = f"actions[{action.index}].{action.kind}"
    images = params.get("images")
    if isinstance(images, dict):
        params["images"] = {
            name: _resolve_image(entry, join(join(loc, "images"), name), base, problems)
            for name, entry in images.items()
        }
    definitions = params.get("definitions")
    if isinstance(definitions, list):
        params["definitions"] = [
            _resolve_definition(d, f"{loc}.definitions[{i}]", base, problems)
            for i, d in enumerate(definitions)
        ]
    return replace(action, parameters=params)


def _resolve(location: str, where: str, base: Path | None, problems: Problems) -> Path | None:
    path = local_path(location)
    if path is None:
        return None
    absolute = _absolute(path, base)
    if absolute is None:
        problems.add(
            where,
            f"{location!r} is relative to the job file's directory, which this submission "
            "does not have: give the file itself (lavamq run FILE, lavamq submit FILE) or "
            "an absolute file:// URL",
        )
    return absolute


def _resolve_image(entry: Any, where: str, base: Path | None, problems: Problems) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        return entry
    absolute = _resolve(entry["url"], join(where, "url"), base, problems)
    return entry if absolute is None else {**entry, "url": absolute.as_uri()}


def _resolve_definition(entry: Any, where: str, base: Path | None, problems: Problems) -> Any:
    if not isinstance(entry, dict) or entry.get("from") not in ("git", "url"):
        return entry
    repository = entry.get("repository")
    if not isinstance(repository, str):
        return entry
    absolute = _resolve(repository, join(where, "repository"), base, problems)
    if absolute is None:
        return entry
    # git clones a directory path; a url definition is fetched like an image
    value = str(absolute) if entry["from"] == "git" else absolute.as_uri()
    return {**entry, "repository": value}
