from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from lab import GitRepo

from dispatcher.journal import Journal
from dispatcher.testdef import (
    PatternParser,
    fetch_test,
    parse_definition,
    validate_spec,
    write_run_script,
    write_runner,
)
from dispatcher.testdef_install import repo_target, write_install_script
from schemas.errors import JobError


def test_every_problem_of_a_definition_is_named() -> None:
    with pytest.raises(JobError) as info:
        parse_definition(
            {
                "metadata": [],
                "run": {"steps": "echo"},
                "parse": {"pattern": "(", "fixupdict": {"OK": "great"}},
                "params": {"1BAD": "x"},
                "colour": "blue",
            },
            "t.yaml",
        )
    msg = str(info.value)
    assert "colour" not in msg  # LAVA's schema allows extra keys: not a problem
    for part in (
        "metadata: must be a mapping",
        "run.steps: must be a list of strings (got str)",
        "parse.pattern: not a valid regular",
        "parse.fixupdict.OK: maps to 'great'",
        "params.1BAD: not a valid shell",
    ):
        assert part in msg, part


def test_keys_lava_does_not_know_are_ignored_as_lava_ignores_them(tmp_path: Path) -> None:
    definition = parse_definition(
        {"metadata": {"name": "x"}, "run": {"steps": ["true"]}, "colour": "blue"}, "t.yaml"
    )
    assert definition.run_steps == ["true"]
    assert definition.ignored_keys() == ["colour"]
    said: list[str] = []
    spec = {"from": "inline", "name": "x", "repository": definition.document}
    fetch_test(spec, 0, tmp_path, say=said.append)
    assert any("colour are not LAVA's (ignored, as LAVA)" in line for line in said), said


def test_pattern_parser_applies_fixupdict() -> None:
    p = PatternParser(
        r"(?P<test_case_id>\w+): (?P<result>\w+)(?: (?P<measurement>[\d.]+)"
        r" (?P<units>\w+))?",
        {"OK": "pass", "BAD": "fail"},
    )
    assert p.parse("boot: OK") == {"case": "boot", "result": "pass"}
    assert p.parse("net: BAD 3.5 ms") == {
        "case": "net",
        "result": "fail",
        "measurement": 3.5,
        "units": "ms",
    }
    assert p.parse("x: WEIRD") is None
    assert p.parse("nothing here") is None


def make_repo(tmp_path: Path) -> tuple[str, str]:
    """A repository whose first commit has smoke.yaml; returns (url, first revision)."""
    repo = GitRepo(tmp_path / "repo")
    first = repo.commit(
        "one",
        {
            "smoke.yaml": "metadata: {name: smoke}\nparams: {WHO: world}\n"
            "install: {deps: [curl], steps: ['echo installing']}\n"
            "run: {steps: ['echo hello $WHO', 'lava-test-case x --result pass']}\n"
        },
    )
    repo.commit("two", {"smoke.yaml": "metadata: {name: smoke}\nrun: {steps: ['echo v2']}\n"})
    return repo.url, first


def test_git_clone_at_revision_and_generated_run_script(tmp_path: Path) -> None:
    url, first = make_repo(tmp_path)
    said: list[str] = []
    spec = {
        "from": "git",
        "repository": url,
        "path": "smoke.yaml",
        "name": "smoke",
        "revision": first,
        "parameters": {"WHO": "lab"},
    }
    test = fetch_test(spec, 0, tmp_path / "overlay" / "tests", say=said.append)
    assert test.commit == first
    write_install_script(test, refused="the board is the host", say=said.append)
    write_run_script(test)
    assert "test definition smoke: install deps (curl) skipped: the board is the host" in said
    bin_dir = tmp_path / "overlay" / "bin"
    write_runner(tmp_path / "overlay")
    # a stand-in lava-test-case so that the script runs in a plain shell
    (bin_dir / "lava-test-case").write_text(
        '#!/bin/sh\necho "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=$1 RESULT=$3>"\n'
    )
    (bin_dir / "lava-test-case").chmod(0o755)
    out = subprocess.run(
        [str(bin_dir / "lava-test-runner")],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"),
    ).stdout.splitlines()
    # install.sh runs first, in the test's directory, as LAVA's does
    assert out[0] == str(test.directory)
    assert out.index("installing") < out.index(f"<LAVA_SIGNAL_STARTRUN 0_smoke {test.uuid}>")
    assert "installing" in out and "hello lab" in out
    assert "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass>" in out
    assert out[-2:] == [f"<LAVA_SIGNAL_ENDRUN 0_smoke {test.uuid}>", "<LAVA_TEST_RUNNER EXIT>"]


def test_git_errors_are_job_errors_naming_the_repository(tmp_path: Path) -> None:
    url, _ = make_repo(tmp_path)
    with pytest.raises(JobError, match=r"git repository .*repo @ deadbeef: git checkout failed"):
        fetch_test(
            {
                "from": "git",
                "repository": url,
                "path": "smoke.yaml",
                "name": "s",
                "revision": "deadbeef",
            },
            0,
            tmp_path / "t",
        )
    with pytest.raises(JobError, match=r"'nope\.yaml' not found"):
        fetch_test(
            {"from": "git", "repository": url, "path": "nope.yaml", "name": "s"}, 1, tmp_path / "t"
        )
    with pytest.raises(JobError, match="git clone failed"):
        fetch_test(
            {
                "from": "git",
                "repository": (tmp_path / "missing").as_uri(),
                "path": "x.yaml",
                "name": "s",
            },
            2,
            tmp_path / "t",
        )


def test_journal_accepts_a_subjob_once_and_survives_reopening(tmp_path: Path) -> None:
    a = {"subjob_id": 5, "job_id": 1, "device": "d1"}
    j = Journal(tmp_path / "journal.sqlite")
    assert j.accept(a) is True
    assert j.accept(a) is False
    j.set_state(5, "running")
    j.close()
    j = Journal(tmp_path / "journal.sqlite")
    assert j.accept(a) is False
    assert [e["subjob_id"] for e in j.unfinished()] == [5]
    j.set_state(5, "incomplete", error_type="infrastructure", message="restarted")
    assert j.unfinished() == []
    assert (j.get(5) or {}).get("message") == "restarted"


def test_run_sh_is_written_as_lava_writes_it(tmp_path: Path) -> None:
    spec = {
        "from": "inline",
        "name": "steps",
        "repository": {
            "metadata": {"name": "steps", "format": "Lava-Test Test Definition 1.0"},
            "run": {"steps": ["echo $1", "echo x --shell echo $1 $23", "false", "echo never"]},
        },
    }
    test = fetch_test(spec, 0, tmp_path)
    text = write_run_script(test).read_text()
    lines = text.splitlines()
    # after the parameters: set -e, then each step (with --shell, $<digit> stays for it)
    assert lines.index("set -e") < lines.index("echo $1")
    assert "echo x --shell echo \\$1 \\$23" in lines
    assert lines.index("false") < lines.index('echo "<LAVA_SIGNAL_ENDRUN $TESTRUN_ID $UUID>"')
    proc = subprocess.run(["sh", str(test.directory / "run.sh")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "<LAVA_SIGNAL_TESTEVENT stopped 0_steps step 3 exit 1>" in proc.stdout
    assert "ENDRUN" not in proc.stdout and "never" not in proc.stdout
    assert "x --shell echo $1 $23" in proc.stdout


def test_git_repos_targets_as_lava_looks_them_up(tmp_path: Path) -> None:
    spec = {
        "from": "inline",
        "name": "repos",
        "parameters": {"URL": "file:///job/tools.git"},
        "repository": {
            "metadata": {"name": "repos"},
            "params": {"URL": "file:///default/tools.git", "DEST": "here"},
            "install": {"git-repos": ["https://example.org/a/b.git", {"url": "URL"}]},
            "run": {"steps": ["true"]},
        },
    }
    test = fetch_test(spec, 0, tmp_path)
    string_form, mapping = test.definition.install_git_repos
    assert repo_target(string_form, test) == ("https://example.org/a/b.git", None, "b")
    # a value naming a parameter is the job's value (over the definition's default)
    assert repo_target(mapping, test) == ("file:///job/tools.git", None, "tools")
    assert repo_target({"url": "x.git", "destination": "DEST"}, test)[2] == "here"
    for bad in ("../escape", "a/b", ".."):
        with pytest.raises(JobError, match="not a directory name inside the test's directory"):
            repo_target({"url": "file:///x.git", "destination": bad}, test)


def test_bad_install_fields_are_named() -> None:
    with pytest.raises(JobError) as err:
        parse_definition(
            {
                "metadata": {"name": "x"},
                "install": {"deps": "curl", "git-repos": [{"url": "u", "depth": 1}, 3]},
                "run": {"steps": ["true"]},
            },
            "x.yaml",
        )
    text = err.value.message
    assert "install.deps: must be a list of strings" in text
    assert "install.git-repos[0]: unknown keys depth" in text
    assert "install.git-repos[1]: must be a URL or a mapping with 'url'" in text
    assert validate_spec({"from": "inline", "repository": {}, "skip_install": ["dep"]}, "d")[
        -1
    ].startswith("d.skip_install: unknown dep")


def test_a_definitions_clone_keeps_its_history_as_lavas_does(tmp_path: Path) -> None:
    url, _ = make_repo(tmp_path)
    spec = {"from": "git", "repository": url, "path": "smoke.yaml", "name": "smoke"}
    test = fetch_test(spec, 0, tmp_path / "kept")
    # no revision: only the last commit, as LAVA's shallow clone; its .git kept
    count = subprocess.run(
        ["git", "rev-list", "--count", "HEAD"],
        cwd=test.directory,
        capture_output=True,
        text=True,
        check=True,
    )
    assert count.stdout.strip() == "1"
    gone = fetch_test({**spec, "history": False}, 0, tmp_path / "gone")
    assert (test.directory / ".git").is_dir() and not (gone.directory / ".git").exists()
