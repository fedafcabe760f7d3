"""Test definition fields end to end with `lavamq run`, checked against what LAVA 2026.07
recorded for the same job (tests/lava_jobs/testdef-fields.yaml): install (deps, git-repos,
steps), params overridden by the job's parameters, parse: pattern + fixupdict, metadata."""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from lab import GitRepo, lavamq_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JOBS = Path(__file__).resolve().parents[1] / "lava_jobs"

#: what LAVA 2026.07 recorded for the board's definition of testdef-fields.yaml
LAVA_FIELDS = {
    "install-ran-here": "pass",
    "install-saw-params": "pass",
    "git-repo-string-form": "pass",
    "git-repo-mapping-form": "pass",
    "param-from-the-job": "pass",
    "param-default": "pass",
    "testdef-metadata": "pass",
    "definition-git-kept": "pass",
    "git-repo-git-kept": "pass",
    "check-one": "pass",
    "check-two": "fail",
    "check-three": "skip",
    "check-four": "pass",
}
#: and for its `from: url` definition (a tar archive) with `expected: [from-url-archive,
#: never-reported]`: the case not expected fails, the one never reported fails
LAVA_FROM_URL = {"from-url-archive": "pass", "not-expected": "fail", "never-reported": "fail"}


def lavamq_run(job: Path, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], Path]:
    """``lavamq run --keep --json``: exit code, bundle, kept workspace."""
    proc = lavamq_in(tmp_path, "run", str(job), "--keep", "--json", *args)
    kept = [line for line in proc.stderr.splitlines() if line.startswith("workspace kept: ")]
    assert kept, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), Path(kept[-1].split(": ", 1)[1])


def job_log(workspace: Path, node: str) -> list[str]:
    (log,) = (workspace / "dispatcher" / "jobs").glob(f"*.{node}.*/job.log")
    return [json.loads(line)["message"] for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture
def fields_job(tmp_path: Path) -> Path:
    """testdef-fields.yaml with its two repositories made here: the definitions (from: git)
    and the tools its definition clones with install: git-repos (branches main, other)."""
    tools = GitRepo(tmp_path / "tools.git")
    tools.commit("main", {"hello.txt": "hi\n"})
    main = tools.git("rev-parse", "--abbrev-ref", "HEAD")
    tools.git("checkout", "-qb", "other")
    tools.commit("other", {"branch.txt": "other\n"})
    tools.git("checkout", "-q", main)
    defs = GitRepo(tmp_path / "defs")
    files = {}
    for src in (JOBS / "testdef-fields").iterdir():
        text = src.read_text(encoding="utf-8")
        files[src.name] = text.replace("file:///nonexistent/tools.git", tools.url)
    defs.commit("definitions", files)
    # from: url: a tar archive whose top directory LAVA's strip-components drops
    archive = tmp_path / "defs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(JOBS / "testdef-fields" / "url-def.yaml", arcname="top/url-def.yaml")
    text = (JOBS / "testdef-fields.yaml").read_text(encoding="utf-8")
    text = text.replace("file:///nonexistent/testdef-fields", defs.url)
    text = text.replace("file:///nonexistent/tools.git", tools.url)
    text = text.replace("file:///nonexistent/defs.tar.gz", archive.as_uri())
    job = tmp_path / "testdef-fields.yaml"
    job.write_text(text, encoding="utf-8")
    return job


def runs_of(bundle: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    node = next(n for n in bundle["nodes"] if n["role"] == role)
    return {r["name"]: r for r in node["test_runs"]}


def test_every_test_definition_field_works_as_on_lava(fields_job: Path, tmp_path: Path) -> None:
    rc, bundle, ws = lavamq_run(fields_job, tmp_path)
    # the install that fails makes the job incomplete, as LAVA's "Unable to start test stage"
    assert rc == 1
    board = runs_of(bundle, "board")
    got = {c["name"]: c["result"] for c in board["0_fields"]["cases"]}
    assert got == LAVA_FIELDS
    assert {c["name"]: c["result"] for c in board["1_from-url"]["cases"]} == LAVA_FROM_URL
    # the definition's own test run, with where it came from (as LAVA's lava/0_fields)
    lava = {c["name"]: c for c in board["lava"]["cases"]}
    assert lava["0_fields"]["result"] == "pass"
    extra = lava["0_fields"]["extra"]
    assert extra["path"] == "fields.yaml" and extra["repository"].startswith("file://")
    assert extra["revision"] == "unspecified" and len(extra["commit_id"]) == 40
    board_node = next(n for n in bundle["nodes"] if n["role"] == "board")
    assert board_node["state"] == "complete"
    # a local board is the host: install deps skipped, saying so
    said = job_log(ws, board_node["node"])
    assert any(
        "install deps (lavamq-no-such-package, lavamq-debian-package) skipped: "
        "a local board is the dispatcher host" in line
        for line in said
    ), said
    # the install whose last step fails: its run never starts, the next definition runs
    other = runs_of(bundle, "other")
    assert "0_install-fails" not in other
    assert {c["name"]: c["result"] for c in other["1_after"]["cases"]} == {
        "after-install-fail": "pass"
    }
    failed = {c["name"]: c for c in other["lava"]["cases"]}["0_install-fails"]
    assert failed["result"] == "fail"
    assert failed["extra"]["reason"] == "install.sh exited 1: its run steps did not run"
    other_node = next(n for n in bundle["nodes"] if n["role"] == "other")
    assert other_node["state"] == "incomplete"
    assert "0_install-fails" in other_node["message"], other_node


def test_install_deps_run_the_package_manager_where_the_host_config_allows_it(
    fields_job: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # the host's package manager, as the board sees it: an apt-get that records its calls,
    # outside /tmp (a board with a private root has its own /tmp)
    shared = Path(tempfile.mkdtemp(prefix="lavamq-apt-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    bin_dir = shared / "bin"
    bin_dir.mkdir()
    calls = shared / "apt-get.calls"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "apt-get").chmod(0o755)
    devices = tmp_path / "devices.toml"
    devices.write_text(
        f"""
[host]
name = "deps-lab"

[[device]]
name = "allowed-01"
device_type = "local"
settings = {{network = "none", install_packages = true, env = {{PATH = "{bin_dir}:/usr/bin:/bin"}}}}

[[device]]
name = "host-02"
device_type = "local"
settings = {{network = "none"}}
"""
    )
    rc, bundle, _ = lavamq_run(fields_job, tmp_path, "--device-config", str(devices))
    assert rc == 1  # the other role's install still fails
    board = runs_of(bundle, "board")
    assert {c["name"]: c["result"] for c in board["0_fields"]["cases"]} == LAVA_FIELDS
    # deps, and deps-debian for the deploy's os: debian
    assert calls.read_text().splitlines() == [
        "update -q",
        "install -y -q lavamq-no-such-package lavamq-debian-package",
    ]


def test_skip_install_leaves_the_parts_it_names_out(fields_job: Path, tmp_path: Path) -> None:
    text = fields_job.read_text(encoding="utf-8").replace(
        "      name: install-fails\n", "      name: install-fails\n      skip_install: [steps]\n"
    )
    fields_job.write_text(text, encoding="utf-8")
    _, bundle, _ = lavamq_run(fields_job, tmp_path)
    other_node = next(n for n in bundle["nodes"] if n["role"] == "other")
    assert other_node["state"] == "complete", other_node
    other = runs_of(bundle, "other")
    assert {c["name"]: c["result"] for c in other["0_install-fails"]["cases"]} == {
        "never-runs": "pass"
    }
