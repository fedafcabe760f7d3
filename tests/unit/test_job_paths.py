"""Local paths in job files: resolved against the job file's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.job import JobPlan, JobValidationError, SubJobPlan, load_job, load_job_file

JOB = """\
job_name: paths
timeouts: {job: {minutes: 5}}
protocols:
  lava-multinode:
    roles:
      a: {device_type: qemu, count: 1, context: {arch: amd64}}
context: {memory: 256, arch: i386}
actions:
- deploy:
    role: [a]
    to: tmpfs
    images:
      kernel: {url: %(kernel)s, image_arg: '-kernel {kernel}'}
      initrd: {url: %(initrd)s, compression: gz}
      remote: {url: 'https://images.example.org/rootfs.img'}
- boot:
    role: [a]
- test:
    role: [a]
    definitions:
    - {from: git, repository: %(repo)s, path: t.yaml, name: local}
    - {from: git, repository: 'git@git.example.org:lab/tests.git', path: t.yaml, name: scp}
    - {from: url, repository: %(url)s, name: byurl}
"""


def subjob(plan: JobPlan) -> tuple[SubJobPlan, dict[str, Any], list[dict[str, Any]]]:
    (sub,) = plan.subjobs
    deploy, _boot, test = sub.actions
    return sub, deploy.parameters["images"], test.parameters["definitions"]


def test_relative_locations_resolve_against_the_job_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "repo" / "examples" / "x"
    jobs.mkdir(parents=True)
    (jobs / "job.yaml").write_text(
        JOB
        % {
            "kernel": "../../images/vmlinuz",
            "initrd": "file:../../images/initramfs.cpio.gz",
            "repo": "../..",
            "url": "defs/t.yaml",
        }
    )
    # whatever the current directory: the job file's own directory counts
    monkeypatch.chdir(tmp_path)
    sub, images, definitions = subjob(load_job_file("repo/examples/x/job.yaml"))
    root = tmp_path / "repo"
    assert images["kernel"]["url"] == (root / "images" / "vmlinuz").as_uri()
    assert images["kernel"]["image_arg"] == "-kernel {kernel}"
    assert images["initrd"]["url"] == (root / "images" / "initramfs.cpio.gz").as_uri()
    assert images["remote"]["url"] == "https://images.example.org/rootfs.img"
    assert [d["repository"] for d in definitions] == [
        str(root),
        "git@git.example.org:lab/tests.git",
        (jobs / "defs" / "t.yaml").as_uri(),
    ]
    # the role's context over the job's
    assert sub.context == {"memory": 256, "arch": "amd64"}


def test_an_absolute_source_gives_the_directory_and_plain_text_has_none(tmp_path: Path) -> None:
    text = JOB % {
        "kernel": "vmlinuz",
        "initrd": "/srv/images/initrd.gz",
        "repo": "tests",
        "url": "https://example.org/t.yaml",
    }
    _, images, definitions = subjob(load_job(text, str(tmp_path / "job.yaml")))
    assert images["kernel"]["url"] == (tmp_path / "vmlinuz").as_uri()
    assert images["initrd"]["url"] == "file:///srv/images/initrd.gz"
    assert definitions[0]["repository"] == str(tmp_path / "tests")
    with pytest.raises(JobValidationError) as info:
        load_job(text, "xmlrpc")
    assert info.value.problems == [
        f"actions[{i}].{where}: {what!r} is relative to the job file's directory, which this "
        "submission does not have: give the file itself (lavamq run FILE, lavamq submit FILE) "
        "or an absolute file:// URL"
        for i, where, what in (
            (0, "deploy.images.kernel.url", "vmlinuz"),
            (2, "test.definitions[0].repository", "tests"),
        )
    ]
