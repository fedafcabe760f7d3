"""``lavamq validate`` catches what a run would reject, and bad input never gets a traceback.

Each case was said to be valid (or crashed) before and failed only once the
job ran: ``run.steps`` that is not a list of strings, a timeout of 10^12 days, a
git URL with a space; a 5,000-digit integer gave "lavamq bug: ValueError" (the
limit on converting integers to text) in validate, run and submit; a 10 MB
file was said to be 4,194,305 bytes (the reader stops one past the limit);
``lavamq jobs | head -3`` ended with a BrokenPipeError traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from job_seeds import seed_2014, seed_yaml
from lab import GitRepo

from lavamq.cli import main
from schemas.errors import JobError
from schemas.job import MAX_JOB_BYTES, JobValidationError, load_job
from schemas.job_checks import MAX_TIMEOUT_DAYS
from schemas.job_parse import MAX_INT_DIGITS
from schemas.testdef import parse_definition

ROOT = Path(__file__).resolve().parents[2]
LAVAMQ = [sys.executable, "-c", "from lavamq.cli import main; main()"]
TEST = "actions[3].test.definitions[0]"


def with_definition(definition: dict[str, Any]) -> dict[str, Any]:
    job = seed_yaml()
    job["actions"][3]["test"]["definitions"] = [definition]
    return job


def inline(steps: Any) -> dict[str, Any]:
    return {
        "from": "inline",
        "name": "smoke",
        "path": "inline/smoke.yaml",
        "repository": {
            "metadata": {"format": "Lava-Test Test Definition 1.0", "name": "smoke"},
            "run": {"steps": steps},
        },
    }


def validate(tmp_path: Path, job: dict[str, Any] | str, name: str = "job.yaml") -> Any:
    path = tmp_path / name
    path.write_text(job if isinstance(job, str) else yaml.safe_dump(job))
    return CliRunner().invoke(main, ["validate", str(path)]), path


STEPS = [
    ("echo hello", "run.steps: must be a list of strings (got str)"),
    ({"echo": "hello"}, "run.steps: must be a list of strings (got dict)"),
    (["echo ok", ["echo", "x"]], "run.steps[1]: must be a string, got list"),
    (["echo ok", 3], "run.steps[1]: must be a string, got int"),
    ([None], "run.steps[0]: must be a string, got NoneType"),
]


@pytest.mark.parametrize(("steps", "problem"), STEPS)
def test_run_steps_that_the_dispatcher_refuses_are_refused_at_validate(
    tmp_path: Path, steps: Any, problem: str
) -> None:
    # what the dispatcher says when it runs the definition ...
    with pytest.raises(JobError, match=re.escape(problem)):
        parse_definition(inline(steps)["repository"], "smoke")
    # ... validate (and so the coordinator's submit) says first, at the definition
    result, path = validate(tmp_path, with_definition(inline(steps)))
    assert result.exit_code == 1, result.output
    assert f"{path}: {TEST}.repository: {problem}" in result.output.splitlines()


def test_a_local_definition_file_and_a_local_git_repository_are_checked(tmp_path: Path) -> None:
    """Definitions validate can read: a url one that is a local file, a git one in a
    local repository (at the revision the job names)."""
    bad = {"metadata": {"name": "x"}, "run": {"steps": "echo"}}
    good = {"metadata": {"name": "x"}, "run": {"steps": ["echo"]}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result, path = validate(
        tmp_path, with_definition({"from": "url", "repository": "bad.yaml", "name": "x"})
    )
    assert result.exit_code == 1, result.output
    assert f"{path}: {TEST}: test definition {TEST} (file://{tmp_path}/bad.yaml): " in (
        result.output
    )
    assert "run.steps: must be a list of strings (got str)" in result.output

    repo = GitRepo(tmp_path / "repo")
    good_rev = repo.commit("good", {"t.yaml": yaml.safe_dump(good)})
    repo.commit("bad", {"t.yaml": yaml.safe_dump(bad)})
    spec = {"from": "git", "repository": str(repo.path), "path": "t.yaml", "name": "x"}
    result, _ = validate(tmp_path, with_definition(spec))
    assert result.exit_code == 1 and "run.steps: must be a list of strings" in result.output
    result, _ = validate(tmp_path, with_definition({**spec, "revision": good_rev}))
    assert result.exit_code == 0, result.output
    result, _ = validate(tmp_path, with_definition({**spec, "path": "missing.yaml"}))
    assert result.exit_code == 1 and "'missing.yaml' is not in" in result.output


def test_a_timeout_of_ten_to_the_twelve_days_is_refused(tmp_path: Path) -> None:
    job = seed_yaml()
    job["timeouts"]["job"] = {"days": 10**12}
    job["actions"][3]["test"]["timeout"] = {"seconds": MAX_TIMEOUT_DAYS * 86400 + 1}
    result, path = validate(tmp_path, job)
    assert result.exit_code == 1, result.output
    longest = f"is longer than {MAX_TIMEOUT_DAYS} days, the longest timeout a job may set"
    assert f"{path}: timeouts.job.days: {longest}" in result.output
    assert f"{path}: actions[3].test.timeout.seconds: {longest}" in result.output
    job = seed_yaml()
    job["timeouts"]["job"] = {"days": MAX_TIMEOUT_DAYS}
    assert validate(tmp_path, job)[0].exit_code == 0
    old = seed_2014()
    old["timeout"] = 10**12 * 86400
    with pytest.raises(JobValidationError) as info:
        load_job(json.dumps(old), "old.json")
    assert info.value.problems == [f"timeout: {longest}"]


def test_a_git_url_with_a_space_is_refused(tmp_path: Path) -> None:
    spec = {"from": "git", "repository": "https://example.com/a b.git", "path": "t.yaml"}
    result, path = validate(tmp_path, with_definition(spec))
    assert result.exit_code == 1, result.output
    assert (
        f"{path}: {TEST}.repository: 'https://example.com/a b.git' holds a space, which a git "
        "URL cannot (write a space as %20)"
    ) in result.output
    old = seed_2014()
    old["actions"][2]["parameters"]["testdef_repos"][0]["git-repo"] = "git://h/a\tb.git"
    with pytest.raises(JobValidationError) as info:
        load_job(json.dumps(old), "old.json")
    assert (
        "actions[2].parameters.testdef_repos[0].git-repo: 'git://h/a\\tb.git' holds the "
        in (info.value.problems[0])
    )


HUGE = "9" * 5000


def huge_jobs() -> list[tuple[str, str, str]]:
    """(file name, text, located problem) with a 5,000-digit integer in several places."""
    text = yaml.safe_dump(seed_yaml(), sort_keys=False)
    digits = f"an integer of 5000 digits: a job file may write at most {MAX_INT_DIGITS}"
    return [
        ("priority.yaml", f"priority: {HUGE}\n" + text, f"line 1, column 11: {digits}"),
        ("timeout.yaml", text.replace("hours: 1", f"hours: {HUGE}"), digits),
        ("hex.yaml", f"priority: 0x{'f' * 4000}\n" + text,
         f"line 1, column 11: an integer of more than {MAX_INT_DIGITS} digits"),
        ("old.json", json.dumps(seed_2014()).replace('"timeout": 900', f'"timeout": {HUGE}'),
         f"line 1, column 13: {digits}"),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "problem"), huge_jobs())
def test_a_five_thousand_digit_integer_is_a_located_problem_in_validate(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    result, path = validate(tmp_path, text, name)
    assert result.exit_code == 1, result.output
    assert "bug" not in result.output
    assert any(
        line.startswith(f"{path}: ") and problem in line for line in result.output.splitlines()
    ), result.output


def test_a_five_thousand_digit_integer_in_run_and_submit(tmp_path: Path) -> None:
    """``lavamq run`` (its own process) and the coordinator's submit say the same."""
    name, text, problem = huge_jobs()[0]
    path = tmp_path / name
    path.write_text(text)
    proc = subprocess.run(
        [*LAVAMQ, "run", str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and problem in proc.stderr, proc.stderr
    # submit: the coordinator's validator loads it, in its worker
    from coordinator.validation import SubmissionValidator

    validator = SubmissionValidator()
    try:
        with pytest.raises(JobValidationError) as info:
            validator.load(text, name)
    finally:
        validator.close()
    assert info.value.problems == [problem]
    # a definition file with one: located, not a bug
    (tmp_path / "def.yaml").write_text(f"run:\n  steps: [{HUGE}]\n")
    result, _ = validate(
        tmp_path, with_definition({"from": "url", "repository": "def.yaml", "name": "x"})
    )
    assert result.exit_code == 1 and "line 2, column 11: an integer of 5000 digits" in result.output


def test_a_ten_megabyte_file_is_reported_with_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a" * (10 << 20))
    told = f"file: is {10 << 20} bytes; a job file may be at most {MAX_JOB_BYTES}"
    result = CliRunner().invoke(main, ["validate", str(big)])
    assert result.exit_code == 1 and f"{big}: {told}" in result.output, result.output
    submitted = CliRunner().invoke(main, ["submit", str(big), "--broker", "memory://"])
    assert submitted.exit_code == 1 and told in submitted.stderr, submitted.output
    proc = subprocess.run(
        [*LAVAMQ, "run", str(big)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 1 and told in proc.stderr, proc.stderr


FAKE_JOBS = """
import lavamq.commands.jobs as jobs

class Fake:
    def __init__(self, *args, **kwargs): pass
    def __enter__(self): return self
    def __exit__(self, *exc): pass
    def jobs(self, states, limit, key=None):
        return [{"id": i, "state": "complete", "priority": 50, "submit_time": 0.0,
                 "name": f"job-{i}"} for i in range(limit)]

jobs.CoordinatorClient = Fake
from lavamq.cli import main
main()
"""


def test_jobs_piped_to_head_ends_without_a_traceback() -> None:
    """``lavamq jobs | head -3`` with a coordinator that lists 5,000 jobs (a stand-in
    client: the listing and the entry point are the real ones)."""
    command = f"{sys.executable} -c '{FAKE_JOBS}' jobs --limit 5000 | head -3"
    proc = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.stderr == "", proc.stderr
    assert len(proc.stdout.splitlines()) == 3
    # and the exit code is a shell's for a reader that left (with ``set -o pipefail``)
    status = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} > /dev/null"],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert status.returncode == 141, status.stderr


def test_progress_lines_stop_quietly_once_the_reader_left() -> None:
    """``lavamq wait J | head``: the progress thread's write fails first; it stops
    printing (before: a BrokenPipeError traceback from the thread), and the
    command's own next line ends it at the entry point."""
    from lavamq.progress import ProgressPrinter

    written: list[str] = []

    def emit(line: str) -> None:
        if written:
            raise BrokenPipeError(32, "Broken pipe")
        written.append(line)

    printer = ProgressPrinter(7, emit)
    for n in range(3):
        printer.event({"kind": "job", "state": "running", "job_id": 7, "text": f"event {n}"})
    assert len(written) == 1 and len(printer.lines) == 3
