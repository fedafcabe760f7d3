"""Job files: LAVA 2014 JSON and current LAVA YAML, loaded into one ``JobPlan``.

``load_job`` parses the text (JSON or YAML, detected), recognises the format
from its shape, validates every rule and reports every problem at once as a
``JobValidationError`` whose ``problems`` are ``location: message`` lines.
A syntax error names its line and column. Nothing else escapes for a bad file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from schemas.job_checks import (
    JobValidationError,
    Problems,
    kind_of,
)
from schemas.job_definitions import check_definitions
from schemas.job_json import load_2014
from schemas.job_parse import (
    MAX_JOB_BYTES,
    MAX_JOB_DEPTH,
    MAX_JOB_VALUES,
    parse_document,
    read_job_bytes,
)
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
    "MAX_JOB_DEPTH",
    "MAX_JOB_VALUES",
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
    warnings: list[str] = []
    data, syntax = parse_document(text, problems, warnings)
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
        check_definitions(plan, problems)
    if plan is not None and warnings:
        plan = replace(plan, warnings=tuple(warnings))
    if problems or plan is None:
        log.debug("%s: %d problem(s)", source, len(problems))
        raise JobValidationError(problems.items, source)
    log.debug("%s: %s job %r, %d sub-jobs", source, plan.format, plan.job_name, len(plan.subjobs))
    return plan


def load_job_file(path: str | os.PathLike[str]) -> JobPlan:
    """Read and load a job file; an unreadable file is reported like an invalid one."""
    source = os.fspath(path)
    text = read_job_bytes(source)
    return load_job(text, source=str(Path(source)), base_dir=Path(source).resolve().parent)
