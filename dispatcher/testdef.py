"""LAVA test definitions: fetch (git, inline, url), load, turn into run scripts.

A test definition is LAVA's YAML: ``metadata`` (name, format, description),
``install`` (``keys``, ``sources``, ``deps``: distro packages, ``steps``: shell
lines, ``git-repos``), ``run: steps``, ``parse: pattern`` (+ ``fixupdict``) and
``params``. For each definition the overlay gets a directory
``tests/<n>_<name>/`` holding the fetched files, a ``uuid``, ``testdef.yaml``,
``testdef_metadata``, the ``install.sh`` and a generated ``run.sh`` that frames
the steps with ``<LAVA_SIGNAL_STARTRUN ...>``/``<LAVA_SIGNAL_ENDRUN ...>`` as
LAVA does; ``bin/lava-test-runner`` runs each definition's install.sh (a
failing one skips that definition's run.sh, as LAVA's runner does) and
run.sh in order, and ends with ``<LAVA_TEST_RUNNER EXIT>``.
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
import tarfile
import time
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import InfrastructureError, JobError
from schemas.lava_grammar import RUNNER_EXIT
from schemas.testdef import (
    GIT_REPO_PARAM_KEYS,
    KNOWN_TOP_KEYS,
    RESULTS,
    SKIP_INSTALL,
    TestDefinition,
    load_definition_file,
    parse_definition,
    safe_name,
    skipped_install,
    validate_spec,
)

__all__ = [
    "GIT_REPO_PARAM_KEYS",
    "KNOWN_TOP_KEYS",
    "RESULTS",
    "RUNNER_EXIT",
    "SKIP_INSTALL",
    "FetchedTest",
    "Logger",
    "PatternParser",
    "TestDefinition",
    "case_id",
    "fetch_test",
    "git_clone",
    "load_definition_file",
    "parameter_lines",
    "parse_definition",
    "safe_name",
    "skipped_install",
    "validate_spec",
    "write_run_script",
    "write_runner",
]

log = logging.getLogger(__name__)

_NAME_OK = re.compile(r"^[A-Za-z0-9_.+-]+$")

Logger = Callable[[str], Any]


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


def git_clone(
    repo: str,
    dest: Path,
    *,
    revision: str | None,
    deadline: float | None,
    recursive: bool = False,
    branch: str | None = None,
    shallow: bool = False,
) -> str:
    """Clone ``repo`` into ``dest`` as LAVA's GitHelper does: ``branch`` (``-b``), only the
    last commit when ``shallow`` (again in full when the server cannot), submodules when
    ``recursive``, then ``revision`` checked out; returns the commit id."""
    what = f"git repository {repo}"
    args = ["clone", "--quiet", *(["--recurse-submodules"] if recursive else [])]
    args += [*(["-b", branch] if branch else []), *(["--depth=1"] if shallow else [])]
    try:
        _git([*args, repo, str(dest)], deadline=deadline, what=what)
    except JobError as exc:
        if not shallow or "does not support shallow" not in exc.message:
            raise
        shutil.rmtree(dest, ignore_errors=True)
        args.remove("--depth=1")
        _git([*args, repo, str(dest)], deadline=deadline, what=what)
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
    #: the definition's defaults with the job's ``parameters`` over them
    parameters: dict[str, str]
    commit: str = ""
    #: the job's ``definitions`` entry (repository, path, revision, skip_install ...)
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def testrun_id(self) -> str:
        """The test run's name as LAVA writes it (``0_smoke``)."""
        return f"{self.index}_{self.name}"

    def run_extra(self) -> dict[str, str]:
        """What LAVA's ``lava`` result of this test run carries besides its uuid."""
        extra = {"uuid": self.uuid, "path": str(self.spec.get("path") or "")}
        if self.spec.get("from") != "inline":
            extra["repository"] = str(self.spec.get("repository") or "")
        extra["revision"] = str(self.spec.get("revision") or "unspecified")
        if self.commit:
            extra["commit_id"] = self.commit
        return extra


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
        # as LAVA: the branch (else the default one), only its last commit unless a
        # revision is to be checked out; the clone's .git kept unless history: false
        revision, branch = spec.get("revision"), spec.get("branch")
        at = " at ".join(str(x) for x in (branch, revision) if x)
        say(f"cloning {repo} for test definition {name}" + (f" at {at}" if at else ""))
        commit = git_clone(
            repo,
            dest,
            revision=revision,
            branch=branch,
            shallow=not revision,
            deadline=deadline,
            recursive=bool(spec.get("recursive")),
        )
        if spec.get("history") is False:
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
        definition = _fetch_url(spec, dest, name, deadline=deadline, say=say)
    else:
        raise JobError(f"test definition {name}: unknown source {source!r}")
    if ignored := definition.ignored_keys():
        say(f"test definition {name}: keys {', '.join(ignored)} are not LAVA's (ignored, as LAVA)")
    params = dict(definition.params)
    params.update(
        {str(k): "" if v is None else str(v) for k, v in (spec.get("parameters") or {}).items()}
    )
    run_uuid = str(_uuid.uuid4())
    (dest / "uuid").write_text(run_uuid + "\n", encoding="utf-8")
    test = FetchedTest(index, name, dest, definition, run_uuid, params, commit, dict(spec))
    write_metadata(test)
    return test


def _fetch_url(
    spec: dict[str, Any], dest: Path, name: str, *, deadline: float | None, say: Logger
) -> TestDefinition:
    """``from: url``: as LAVA, a tar archive (any compression) unpacked into the test's
    directory, ``strip-components`` leading parts dropped, ``path`` the definition in it;
    a URL of a plain YAML file is that definition."""
    from dispatcher.download import fetch_image

    dest.mkdir(parents=True)
    url = str(spec["repository"])
    comp = spec.get("compression")
    download = dest.parent / f".{dest.name}.download"
    say(f"fetching test definition {name} from {url}")
    fetch_image(url, download, compression=comp, deadline=deadline, name=f"test definition {name}")
    try:
        if tarfile.is_tarfile(download):
            _untar(download, dest, int(spec.get("strip-components") or 0), name)
            target = dest / str(spec.get("path") or "")
            if not target.is_file():
                raise JobError(
                    f"test definition {name}: {spec.get('path')!r} not found in the archive {url}"
                )
        else:
            target = dest / (Path(str(spec.get("path") or "")).name or "testdef.yaml")
            shutil.move(download, target)
    finally:
        download.unlink(missing_ok=True)
    return load_definition_file(target, name=name)


def _untar(archive: Path, dest: Path, strip: int, name: str) -> None:
    """Unpack ``archive`` into ``dest`` without its first ``strip`` path parts; members
    that would land outside ``dest`` (or are links, devices) are a JobError."""
    try:
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                parts = Path(member.name).parts[strip:]
                if not parts:
                    continue
                member.name = str(Path(*parts))
                members.append(member)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise JobError(f"test definition {name}: cannot unpack its archive: {exc}") from None


def write_metadata(test: FetchedTest) -> None:
    """``testdef.yaml`` and ``testdef_metadata`` in the test's directory, as LAVA writes
    them: the definition's ``os``, ``devices``, ``environment``, where it came from."""
    meta = test.definition.metadata
    summary: dict[str, Any] = {
        "os": meta.get("os", ""),
        "devices": meta.get("devices", ""),
        "environment": meta.get("environment", ""),
        "branch_vcs": str(test.spec.get("from") or ""),
        "project_name": str(meta.get("name") or test.name),
    }
    if test.commit:
        summary["commit_id"] = test.commit
    (test.directory / "testdef.yaml").write_text(
        yaml.safe_dump(test.definition.document, sort_keys=False), encoding="utf-8"
    )
    (test.directory / "testdef_metadata").write_text(
        yaml.safe_dump(summary, sort_keys=False), encoding="utf-8"
    )


def parameter_lines(test: FetchedTest) -> list[str]:
    """The parameters as LAVA writes them at the top of run.sh and install.sh: shell
    variables (not exported), the definition's defaults, then the job's, which win."""
    d = test.definition
    lines = ["###default parameters from test definition###"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in d.params.items()]
    lines += ["######", "###test parameters from job submission###"]
    lines += [
        f"{key}={shlex.quote(value)}"
        for key, value in test.parameters.items()
        if d.params.get(key) != value
    ]
    return [*lines, "######"]


def write_run_script(test: FetchedTest) -> Path:
    """Generate ``run.sh`` for one fetched test."""
    d = test.definition
    lines = [
        "#!/bin/sh",
        f"# generated by lavamq for test definition {test.name} ({d.source})",
        *parameter_lines(test),
        f"export TESTRUN_ID={shlex.quote(test.testrun_id)}",
        'cd "$(dirname "$0")"',
        "UUID=$(cat uuid)",
        'echo "<LAVA_SIGNAL_STARTRUN $TESTRUN_ID $UUID>"',
    ]
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


#: as LAVA's lava-test-runner: each definition of ``lava-test-runner.conf`` in order,
#: its install.sh first (run by sh, without -e: its last command's status counts; a
#: failure skips that definition's run.sh and is told), then its run.sh
RUNNER_SCRIPT = """#!/bin/sh
# lava-test-runner (lavamq): run every test definition of this overlay in order.
overlay="${LAVA_OVERLAY:-$(cd "$(dirname "$0")/.." && pwd)}"
# (a for loop, not `while read`: the steps keep the console as their stdin)
for t in $(cat "$overlay/lava-test-runner.conf"); do
    [ -f "$overlay/tests/$t/run.sh" ] || continue
    if [ -f "$overlay/tests/$t/install.sh" ]; then
        /bin/sh "$overlay/tests/$t/install.sh"
        rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "<LAVA_SIGNAL_TESTEVENT install-failed $t exit $rc>"
            continue
        fi
    fi
    sh "$overlay/tests/$t/run.sh"
done
echo "<LAVA_TEST_RUNNER EXIT>"
"""


def _index_order(run_id: str) -> tuple[int, str]:
    index = run_id.split("_", 1)[0]
    return (int(index) if index.isdigit() else 1 << 30, run_id)


def write_runner(overlay: Path, run_ids: list[str] | None = None) -> Path:
    """Write ``bin/lava-test-runner`` and ``lava-test-runner.conf`` (the test runs in
    order; by default every directory of ``tests/`` in index order) into the overlay."""
    if run_ids is None:
        found = [d.name for d in (overlay / "tests").glob("*_*") if d.is_dir()]
        run_ids = sorted(found, key=_index_order)
    (overlay / "lava-test-runner.conf").write_text(
        "".join(f"{r}\n" for r in run_ids), encoding="utf-8"
    )
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
        """The result a console line gives under the definition's pattern, or None."""
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
