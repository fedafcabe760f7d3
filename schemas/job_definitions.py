"""A job's test definitions checked as the dispatcher will check them, at load time.

The dispatcher refuses a definition whose ``run: steps`` is not a list of
shell lines; before, ``lavamq validate`` and the coordinator took it and the
job failed only once it ran. Inline definitions are checked with the
dispatcher's own rules (``schemas.testdef``). Definitions fetched from
elsewhere are checked where they can be read: ``lavamq validate`` reads local
ones (``local_definition_problems``). Repository URLs are checked by the
loaders (``job_checks.check_repository_url``).
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from schemas.errors import JobError
from schemas.job_checks import Problems
from schemas.jobmodel import JobPlan
from schemas.testdef import definition_problems, load_definition_text


def _test_definitions(plan: JobPlan) -> list[tuple[str, dict[str, Any]]]:
    """(location, entry) of every test definition of the plan's test actions."""
    found = []
    for action in plan.actions:
        definitions = action.parameters.get("definitions")
        if action.kind != "test" or not isinstance(definitions, list):
            continue
        for i, entry in enumerate(definitions):
            if isinstance(entry, dict):
                found.append((f"actions[{action.index}].{action.kind}.definitions[{i}]", entry))
    return found


def check_definitions(plan: JobPlan, problems: Problems) -> None:
    """Add the problems the dispatcher would find in the plan's inline definitions."""
    for where, entry in _test_definitions(plan):
        repository = entry.get("repository")
        if entry.get("from") == "inline" and isinstance(repository, dict):
            for problem in definition_problems(repository):
                problems.add(f"{where}.repository", problem)


def local_definition_problems(plan: JobPlan) -> list[str]:
    """Problems of the definitions this machine can read: a ``url`` definition that is
    a local file, a ``git`` one in a local repository (at its revision or branch, or
    HEAD). Reads files: for ``lavamq validate`` on the user's own machine, never for a
    service checking someone else's job."""
    out: list[str] = []
    for where, entry in _test_definitions(plan):
        try:
            text = _local_text(entry)
            if text is not None:
                load_definition_text(text, f"{where} ({entry['repository']})")
        except JobError as exc:
            out.append(f"{where}: {exc.message}")
    return out


def _local_text(entry: dict[str, Any]) -> bytes | None:
    repository = entry.get("repository")
    if not isinstance(repository, str):
        return None
    if entry.get("from") == "url":
        parts = urlsplit(repository)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            return None
        path = Path(unquote(parts.path))
        try:
            if not path.is_file() or entry.get("compression") or tarfile.is_tarfile(path):
                return None  # an archive: its definition is read once unpacked
            return path.read_bytes()
        except OSError as exc:
            raise JobError(f"cannot read {path}: {exc.strerror or exc}") from None
    if entry.get("from") == "git" and Path(repository).is_dir() and entry.get("path"):
        revision = entry.get("revision") or entry.get("branch") or "HEAD"
        try:
            proc = subprocess.run(
                ["git", "-C", repository, "show", f"{revision}:{entry['path']}"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None  # no git here: the dispatcher's clone will tell
        if proc.returncode != 0:
            raise JobError(
                f"{entry['path']!r} is not in {repository} at {revision}: "
                + proc.stderr.decode(errors="replace").strip()
            )
        return bytes(proc.stdout)
    return None
