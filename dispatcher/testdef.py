"""LAVA test definitions: fetch (git, inline, url), load, turn into run scripts.

A test definition is LAVA's YAML: ``metadata`` (name, format, description),
``install`` (``deps``: distro packages, ``steps``: shell lines, ``git-repos``),
``run: steps``, ``parse: pattern`` (+ ``fixupdict``) and ``params``. For
each definition the overlay gets a directory ``tests/<n>_<name>/`` holding
the fetched files, a ``uuid`` and a generated ``run.sh`` that frames the
steps with ``<LAVA_SIGNAL_STARTRUN ...>``/``<LAVA_SIGNAL_ENDRUN ...>`` as
LAVA does; ``bin/lava-test-runner`` runs them all in order and ends with
``<LAVA_TEST_RUNNER EXIT>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import InfrastructureError, JobError

log = logging.getLogger(__name__)

RESULTS = ("pass", "fail", "skip", "unknown")
RUNNER_EXIT = "<LAVA_TEST_RUNNER EXIT>"
KNOWN_TOP_KEYS = {"metadata", "install", "run", "parse", "params", "expected"}
_NAME_OK = re.compile(r"^[A-Za-z0-9_.+-]+$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Logger = Callable[[str], Any]


@dataclass
class TestDefinition:
    """A LAVA test definition, checked and normalised."""

    name: str
    source: str
    description: str = ""
    install_deps: list[str] = field(default_factory=list)
    install_steps: list[str] = field(default_factory=list)
    install_git_repos: list[dict[str, str]] = field(default_factory=list)
    run_steps: list[str] = field(default_factory=list)
    parse_pattern: str | None = None
    fixupdict: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def _or_empty(value: Any) -> Any:
    """``{}`` for a missing (None) section; anything else as written, to be checked."""
    return {} if value is None else value


def _str_list(value: Any, where: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list of strings")
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, (str, int, float)) and not isinstance(item, bool):
            out.append(str(item))
        else:
            problems.append(f"{where}[{i}]: must be a string, got {type(item).__name__}")
    return out


def parse_definition(data: Any, source: str, *, name: str | None = None) -> TestDefinition:
    """Check a loaded YAML document; JobError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise JobError(f"test definition {source}: must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - KNOWN_TOP_KEYS)
    if unknown:
        problems.append(
            f"unknown keys {', '.join(map(str, unknown))} "
            f"(known: {', '.join(sorted(KNOWN_TOP_KEYS))})"
        )
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
    repos: list[dict[str, str]] = []
    for i, entry in enumerate(install.get("git-repos") or []):
        if isinstance(entry, str):
            repos.append({"url": entry})
        elif isinstance(entry, dict) and isinstance(entry.get("url"), str):
            repos.append({k: str(v) for k, v in entry.items()})
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
    params = _or_empty(data.get("params"))
    if not isinstance(params, dict):
        problems.append("params: must be a mapping")
        params = {}
    for key in params:
        if not _PARAM_NAME.match(str(key)):
            problems.append(f"params.{key}: not a valid shell variable name")
    def_name = name or str(meta.get("name") or "") or Path(source).stem
    if problems:
        raise JobError(f"test definition {source}: " + "; ".join(problems))
    return TestDefinition(
        name=safe_name(def_name),
        source=source,
        description=str(meta.get("description") or ""),
        install_deps=_str_list(install.get("deps"), "install.deps", problems),
        install_steps=_str_list(install.get("steps"), "install.steps", problems),
        install_git_repos=repos,
        run_steps=steps,
        parse_pattern=pattern,
        fixupdict=fixup,
        params={str(k): "" if v is None else str(v) for k, v in params.items()},
    )


def safe_name(name: str) -> str:
    """A test run name usable in paths and signals (LAVA names cannot hold spaces)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name.strip()).strip("-")
    return name or "test"


#: the longest case name a result may carry (``TestResultSchema.case``)
MAX_CASE_CHARS = 200


def case_id(name: str) -> str:
    """A test case name for the results: :func:`safe_name`, made unique and short.

    When cleaning changed the name (``ü-sync✓`` and ``-sync`` both clean to
    ``sync``) or it is over :data:`MAX_CASE_CHARS`, a hash of the name as
    printed is appended, so two different names never become one and a long
    one is kept, truncated, instead of being dropped.
    """
    cleaned = safe_name(name)
    if cleaned == name and len(name) <= MAX_CASE_CHARS:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[: MAX_CASE_CHARS - len(digest) - 1]}-{digest}"


def load_definition_file(path: str | Path, *, name: str | None = None) -> TestDefinition:
    """Load and check a test definition file; JobError naming the file, line and problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"test definition {path}: no such file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise JobError(f"test definition {path}: {where}{exc}") from None
    return parse_definition(data, str(path), name=name)


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
            if not _PARAM_NAME.match(str(key)):
                problems.append(f"{where}.parameters.{key}: not a valid shell variable name")
    return problems


def _git(args: list[str], *, deadline: float | None, what: str, cwd: Path | None = None) -> None:
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.1)
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise InfrastructureError("git is not installed on this dispatcher host") from None
    except subprocess.TimeoutExpired:
        raise JobError(f"{what}: git {args[0]} timed out") from None
    if proc.returncode != 0:
        raise JobError(
            f"{what}: git {args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )


def git_clone(repo: str, dest: Path, *, revision: str | None, deadline: float | None) -> str:
    """Clone ``repo`` into ``dest`` (at ``revision`` when given); returns the commit id."""
    what = f"git repository {repo}"
    _git(["clone", "--quiet", repo, str(dest)], deadline=deadline, what=what)
    if revision:
        _git(
            ["checkout", "--quiet", revision],
            deadline=deadline,
            what=f"{what} @ {revision}",
            cwd=dest,
        )
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip()


@dataclass
class FetchedTest:
    """One definition fetched into the overlay: its directory, uuid and parameters."""

    index: int
    name: str
    directory: Path
    definition: TestDefinition
    uuid: str
    parameters: dict[str, str]
    commit: str = ""

    @property
    def testrun_id(self) -> str:
        return f"{self.index}_{self.name}"


def fetch_test(
    spec: dict[str, Any],
    index: int,
    tests_dir: Path,
    *,
    deadline: float | None = None,
    say: Logger = log.info,
) -> FetchedTest:
    """Fetch one definition into ``tests_dir/<index>_<name>`` and load it."""
    source = spec.get("from")
    name = safe_name(str(spec.get("name") or f"test{index}"))
    dest = tests_dir / f"{index}_{name}"
    if dest.exists():
        shutil.rmtree(dest)
    commit = ""
    if source == "git":
        repo = str(spec["repository"])
        say(
            f"cloning {repo} for test definition {name}"
            + (f" at {spec['revision']}" if spec.get("revision") else "")
        )
        commit = git_clone(repo, dest, revision=spec.get("revision"), deadline=deadline)
        shutil.rmtree(dest / ".git", ignore_errors=True)
        path = dest / str(spec.get("path") or "")
        if not path.is_file():
            raise JobError(f"test definition {name}: {spec.get('path')!r} not found in {repo}")
        definition = load_definition_file(path, name=name)
        say(f"test definition {name}: {repo} commit {commit} path {spec.get('path')}")
    elif source == "inline":
        dest.mkdir(parents=True)
        (dest / "inline.yaml").write_text(yaml.safe_dump(spec["repository"]), encoding="utf-8")
        definition = parse_definition(spec["repository"], f"inline definition {name}", name=name)
    elif source == "url":
        from dispatcher.download import fetch_image

        dest.mkdir(parents=True)
        url = str(spec["repository"])
        target = dest / (Path(url).name or "testdef.yaml")
        fetch_image(url, target, deadline=deadline, name=f"test definition {name}")
        definition = load_definition_file(target, name=name)
    else:
        raise JobError(f"test definition {name}: unknown source {source!r}")
    for repo_entry in definition.install_git_repos:
        sub = dest / repo_entry.get("destination", Path(repo_entry["url"].rstrip("/")).stem)
        say(f"test definition {name}: install git-repo {repo_entry['url']}")
        git_clone(repo_entry["url"], sub, revision=repo_entry.get("branch"), deadline=deadline)
    params = dict(definition.params)
    params.update(
        {str(k): "" if v is None else str(v) for k, v in (spec.get("parameters") or {}).items()}
    )
    run_uuid = str(_uuid.uuid4())
    (dest / "uuid").write_text(run_uuid + "\n", encoding="utf-8")
    return FetchedTest(index, name, dest, definition, run_uuid, params, commit)


def write_run_script(test: FetchedTest, *, install_deps: bool, say: Logger = log.info) -> Path:
    """Generate ``run.sh`` (and ``install.sh``) for one fetched test."""
    d = test.definition
    lines = [
        "#!/bin/sh",
        f"# generated by lavamq for test definition {test.name} ({d.source})",
        "###default parameters from test definition###",
    ]
    # as LAVA writes them: shell variables of run.sh (not exported), the job's last
    for key, value in d.params.items():
        lines.append(f"{key}={shlex.quote(value)}")
    lines += ["######", "###test parameters from job submission###"]
    for key, value in test.parameters.items():
        if d.params.get(key) != value:
            lines.append(f"{key}={shlex.quote(value)}")
    lines += [
        "######",
        f"export TESTRUN_ID={shlex.quote(test.testrun_id)}",
        'cd "$(dirname "$0")"',
        "UUID=$(cat uuid)",
        'echo "<LAVA_SIGNAL_STARTRUN $TESTRUN_ID $UUID>"',
    ]
    install = ["#!/bin/sh", "set -e", 'cd "$(dirname "$0")"']
    if d.install_deps:
        if install_deps:
            pkgs = " ".join(shlex.quote(p) for p in d.install_deps)
            install.append(f"lava-install-packages {pkgs}")
        else:
            say(
                f"test definition {test.name}: skipping install deps "
                f"({', '.join(d.install_deps)}): this device type does not install distro packages"
            )
    install.extend(d.install_steps)
    if len(install) > 3:
        (test.directory / "install.sh").write_text("\n".join(install) + "\n", encoding="utf-8")
        (test.directory / "install.sh").chmod(0o755)
        lines.append(
            './install.sh || echo "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=install RESULT=fail>"'
        )
    # as LAVA's run.sh: a failing step ends this definition (the next one still runs);
    # the EXIT trap names the step, so the run shows as failed where it stopped
    lines += [
        "set -e",
        'trap \'_lava_rc=$?; [ "$_lava_rc" -eq 0 ] || echo "<LAVA_SIGNAL_TESTEVENT '
        "stopped $TESTRUN_ID step $LAVA_STEP exit $_lava_rc>\"' EXIT",
    ]
    for number, step in enumerate(d.run_steps, 1):
        lines += [f"LAVA_STEP={number}", run_step(step)]
    lines += ["set +e", "trap - EXIT", 'echo "<LAVA_SIGNAL_ENDRUN $TESTRUN_ID $UUID>"']
    path = test.directory / "run.sh"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def run_step(step: str) -> str:
    """A step as LAVA writes it into run.sh: with ``--shell``/``--cmd``, ``$1`` stays ``$1``
    for the command (``\\$1``), not the run script's own argument."""
    if "--cmd" in step or "--shell" in step:
        return re.sub(r"\$(\d+)\b", r"\\$\1", step)
    return step


RUNNER_SCRIPT = """#!/bin/sh
# lava-test-runner (lavamq): run every test definition of this overlay in order.
overlay="${LAVA_OVERLAY:-$(cd "$(dirname "$0")/.." && pwd)}"
for t in "$overlay"/tests/*/; do
    [ -f "$t/run.sh" ] || continue
    sh "$t/run.sh"
done
echo "<LAVA_TEST_RUNNER EXIT>"
"""


def write_runner(overlay: Path) -> Path:
    """Write ``bin/lava-test-runner`` into the overlay."""
    path = overlay / "bin" / "lava-test-runner"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RUNNER_SCRIPT, encoding="utf-8")
    path.chmod(0o755)
    return path


class PatternParser:
    """Applies a definition's ``parse: pattern`` (+ ``fixupdict``) to console lines."""

    def __init__(self, pattern: str, fixupdict: dict[str, str] | None = None) -> None:
        self.regex = re.compile(pattern)
        self.fixupdict = dict(fixupdict or {})

    def parse(self, line: str) -> dict[str, Any] | None:
        m = self.regex.search(line)
        if m is None:
            return None
        groups = m.groupdict()
        case = (groups.get("test_case_id") or "").strip()
        result = (groups.get("result") or "").strip()
        result = self.fixupdict.get(result, result).lower()
        if not case or result not in RESULTS:
            return None
        rec: dict[str, Any] = {"case": case_id(case), "result": result}
        measurement = groups.get("measurement")
        if measurement:
            with contextlib.suppress(ValueError):
                rec["measurement"] = float(measurement)
        if groups.get("units"):
            rec["units"] = groups["units"].strip()
        return rec


def valid_name(name: str) -> bool:
    """True when ``name`` is usable as it is in paths and signals."""
    return bool(_NAME_OK.match(name))
