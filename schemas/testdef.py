"""LAVA test definitions as data: the rules a definition must follow, with no I/O
but reading one file.

One set of rules for every place that checks a definition: ``lavamq validate``
and the coordinator (inline definitions, through ``schemas.job``), and the
dispatcher before it runs one (``dispatcher/testdef.py`` fetches, then loads
with these). A definition is LAVA's YAML: ``metadata``, ``install`` (``keys``,
``sources``, ``deps``, ``steps``, ``git-repos``), ``run: steps``, ``parse:
pattern`` (+ ``fixupdict``), ``params`` and ``parameters``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import JobError
from schemas.job_checks import Problems
from schemas.job_parse import MAX_JOB_BYTES, parse_document

RESULTS = ("pass", "fail", "skip", "unknown")
KNOWN_TOP_KEYS = {"metadata", "install", "run", "parse", "params", "parameters", "expected"}
#: what ``skip_install`` may name (LAVA's list; ``all`` is every other one)
SKIP_INSTALL = ("keys", "sources", "deps", "steps", "git-repos", "all")
#: the ``git-repos`` mapping keys whose value may name a parameter (as LAVA looks them up)
GIT_REPO_PARAM_KEYS = ("url", "branch", "destination")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TestDefinition:
    """A LAVA test definition, checked and normalised."""

    name: str
    source: str
    description: str = ""
    install_keys: list[str] = field(default_factory=list)
    install_sources: list[str] = field(default_factory=list)
    install_deps: list[str] = field(default_factory=list)
    install_steps: list[str] = field(default_factory=list)
    #: a URL (cloned into the URL's name without ``.git``) or ``{url, branch, destination}``
    install_git_repos: list[str | dict[str, str]] = field(default_factory=list)
    run_steps: list[str] = field(default_factory=list)
    parse_pattern: str | None = None
    fixupdict: dict[str, str] = field(default_factory=dict)
    #: ``params`` then ``parameters`` of the definition (its defaults)
    params: dict[str, str] = field(default_factory=dict)
    #: ``metadata`` as written (LAVA keeps ``os``, ``devices``, ``environment``)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the whole document as loaded (written back as ``testdef.yaml``)
    document: dict[str, Any] = field(default_factory=dict)

    def ignored_keys(self) -> list[str]:
        """Top-level keys no rule reads: LAVA's definition schema allows extra keys
        (``ALLOW_EXTRA``), so a definition written for LAVA may carry its own."""
        return sorted(str(k) for k in set(self.document) - KNOWN_TOP_KEYS)


def _or_empty(value: Any) -> Any:
    """``{}`` for a missing (None) section; anything else as written, to be checked."""
    return {} if value is None else value


def _str_list(value: Any, where: str, problems: list[str]) -> list[str]:
    """A list of strings, as LAVA's definition schema wants (``[str]``): a YAML ``- 1``
    or ``- true`` is a number or a boolean, not the shell line, and is refused."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list of strings (got {type(value).__name__})")
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        else:
            problems.append(f"{where}[{i}]: must be a string, got {type(item).__name__}")
    return out


def parse_definition(data: Any, source: str, *, name: str | None = None) -> TestDefinition:
    """Check a loaded YAML document; JobError listing every problem."""
    definition, problems = checked_definition(data, source, name=name)
    if definition is None:
        raise JobError(f"test definition {source}: " + "; ".join(problems))
    return definition


def definition_problems(data: Any) -> list[str]:
    """Every problem of a loaded definition (``where: what``, where inside the definition)."""
    return checked_definition(data, "<inline>")[1]


def checked_definition(
    data: Any, source: str, *, name: str | None = None
) -> tuple[TestDefinition | None, list[str]]:
    """The definition, or None and every problem found in it."""
    problems: list[str] = []
    if not isinstance(data, dict):
        return None, [f"must be a mapping, got {type(data).__name__}"]
    meta = _or_empty(data.get("metadata"))
    if not isinstance(meta, dict):
        problems.append("metadata: must be a mapping")
        meta = {}
    run = data.get("run")
    steps: list[str] = []
    if not isinstance(run, dict) or "steps" not in run:
        problems.append("run.steps: missing (a test definition needs run: steps: [...])")
    else:
        steps = _str_list(run.get("steps"), "run.steps", problems)
    install = _or_empty(data.get("install"))
    if not isinstance(install, dict):
        problems.append("install: must be a mapping")
        install = {}
    repos: list[str | dict[str, str]] = []
    raw_repos = install.get("git-repos") or []
    if not isinstance(raw_repos, list):
        problems.append("install.git-repos: must be a list of URLs or {url: ...} mappings")
        raw_repos = []
    for i, entry in enumerate(raw_repos):
        if isinstance(entry, str) and entry:
            repos.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("url"), str) and entry["url"]:
            unknown_keys = sorted(set(map(str, entry)) - set(GIT_REPO_PARAM_KEYS))
            if unknown_keys:
                problems.append(
                    f"install.git-repos[{i}]: unknown keys {', '.join(unknown_keys)} "
                    f"(known: {', '.join(GIT_REPO_PARAM_KEYS)})"
                )
            repos.append({str(k): str(v) for k, v in entry.items()})
        else:
            problems.append(f"install.git-repos[{i}]: must be a URL or a mapping with 'url'")
    parse = _or_empty(data.get("parse"))
    pattern = None
    fixup: dict[str, str] = {}
    if not isinstance(parse, dict):
        problems.append("parse: must be a mapping")
    else:
        pattern = parse.get("pattern")
        if pattern is not None:
            try:
                compiled = re.compile(str(pattern))
                if "test_case_id" not in compiled.groupindex or "result" not in compiled.groupindex:
                    problems.append(
                        "parse.pattern: needs the named groups "
                        "(?P<test_case_id>...) and (?P<result>...)"
                    )
            except re.error as exc:
                problems.append(f"parse.pattern: not a valid regular expression ({exc})")
            pattern = str(pattern)
        raw_fix = parse.get("fixupdict") or {}
        if not isinstance(raw_fix, dict):
            problems.append("parse.fixupdict: must be a mapping")
        else:
            fixup = {str(k): str(v) for k, v in raw_fix.items()}
            for k, v in fixup.items():
                if v not in RESULTS:
                    problems.append(
                        f"parse.fixupdict.{k}: maps to {v!r}, not one of {', '.join(RESULTS)}"
                    )
    params: dict[Any, Any] = {}
    for section in ("params", "parameters"):
        block = _or_empty(data.get(section))
        if not isinstance(block, dict):
            problems.append(f"{section}: must be a mapping")
            continue
        for key in block:
            if not PARAM_NAME.match(str(key)):
                problems.append(f"{section}.{key}: not a valid shell variable name")
        params.update(block)
    def_name = name or str(meta.get("name") or "") or Path(source).stem
    lists = {
        part: _str_list(install.get(part), f"install.{part}", problems)
        for part in ("keys", "sources", "deps", "steps")
    }
    if problems:
        return None, problems
    return TestDefinition(
        name=safe_name(def_name),
        source=source,
        description=str(meta.get("description") or ""),
        install_keys=lists["keys"],
        install_sources=lists["sources"],
        install_deps=lists["deps"],
        install_steps=lists["steps"],
        install_git_repos=repos,
        run_steps=steps,
        parse_pattern=pattern,
        fixupdict=fixup,
        params={str(k): "" if v is None else str(v) for k, v in params.items()},
        metadata=dict(meta),
        document=dict(data),
    ), []


def safe_name(name: str) -> str:
    """A test run name usable in paths and signals (LAVA names cannot hold spaces)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name.strip()).strip("-")
    return name or "test"


def load_definition_file(path: str | Path, *, name: str | None = None) -> TestDefinition:
    """Load and check a test definition file; JobError naming the file, line and problem."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_JOB_BYTES + 1)
    except FileNotFoundError:
        raise JobError(f"test definition {path}: no such file") from None
    except OSError as exc:
        raise JobError(f"test definition {path}: cannot read it ({exc.strerror or exc})") from None
    return load_definition_text(raw, str(path), name=name)


def load_definition_text(
    raw: str | bytes, source: str, *, name: str | None = None
) -> TestDefinition:
    """Parse (bounded, as a job file is: ``schemas.job_parse``) and check a definition."""
    problems = Problems()
    data, _ = parse_document(raw, problems)
    if problems:
        raise JobError(f"test definition {source}: " + "; ".join(problems.items))
    return parse_definition(data, source, name=name)


def validate_spec(spec: Any, where: str) -> list[str]:
    """Problems of one ``definitions`` entry of a test action (no I/O)."""
    if not isinstance(spec, dict):
        return [f"{where}: must be a mapping"]
    problems: list[str] = []
    source = spec.get("from")
    repo = spec.get("repository")
    if source not in ("git", "inline", "url"):
        problems.append(f"{where}.from: must be git, inline or url (got {source!r})")
    elif source == "inline":
        if not isinstance(repo, dict):
            problems.append(f"{where}.repository: an inline definition must be a mapping")
        else:
            try:
                parse_definition(repo, f"{where} (inline)", name=spec.get("name"))
            except JobError as exc:
                problems.append(exc.message)
    else:
        if not isinstance(repo, str) or not repo:
            problems.append(f"{where}.repository: missing")
        if source == "git" and not spec.get("path"):
            problems.append(f"{where}.path: missing (the test definition file in the repository)")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        problems.append(f"{where}.parameters: must be a mapping")
    else:
        for key in params:
            if not PARAM_NAME.match(str(key)):
                problems.append(f"{where}.parameters.{key}: not a valid shell variable name")
    skip = spec.get("skip_install")
    if skip is not None and (
        not isinstance(skip, list) or not all(isinstance(x, str) for x in skip)
    ):
        problems.append(f"{where}.skip_install: must be a list of {', '.join(SKIP_INSTALL)}")
    elif skip is not None and set(skip) - set(SKIP_INSTALL):
        bad = ", ".join(sorted(set(skip) - set(SKIP_INSTALL)))
        problems.append(f"{where}.skip_install: unknown {bad} (known: {', '.join(SKIP_INSTALL)})")
    return problems


def skipped_install(spec: dict[str, Any]) -> set[str]:
    """The install parts ``skip_install`` names (``all``: every one), as LAVA reads it."""
    skip = set(spec.get("skip_install") or ())
    return set(SKIP_INSTALL[:-1]) if "all" in skip else skip
