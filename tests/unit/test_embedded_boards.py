"""Which board each node of ``lavamq run`` gets (QEMU VM or local board), and the test image."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lavamq.boards import describe_boards, plan_boards
from lavamq.qemu_image import ensure_images
from schemas.errors import InfrastructureError, JobError
from schemas.job import load_job, load_job_file

ROOT = Path(__file__).resolve().parents[2]


def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """PATH holds only these (fake) programs."""
    bin_dir = tmp_path / "-".join(("bin", *names))
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_qemu_roles_get_vms_when_qemu_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools(tmp_path, monkeypatch, "qemu-system-x86_64", "vde_switch")
    plan = load_job_file(ROOT / "examples" / "qemu-network" / "job.yaml")
    boards = plan_boards(plan, boards="auto", runtime=tmp_path / "ws")
    assert [(b.name, b.config["device_type"]) for b in boards] == [
        ("qemu-01", "qemu"),
        ("qemu-02", "qemu"),
        ("qemu-03", "qemu"),
    ]
    # the VMs' runtime files and switches live in the lab's workspace
    assert boards[0].config["settings"] == {
        "runtime_dir": str(tmp_path / "ws" / "qemu"),
        "vmnet_dir": str(tmp_path / "ws" / "vmnet"),
    }
    assert describe_boards(boards)[0] == "  qemu-01  qemu VM: qemu-system-x86_64 is installed"
    assert plan_boards(plan, boards="qemu")[0].reason == "--boards qemu"
    # other device types stay local boards whatever --boards says
    seed = load_job_file(ROOT / "examples" / "seed-multinode-local.yaml")
    assert {b.config["device_type"] for b in plan_boards(seed, boards="qemu")} == {"local"}


def test_without_qemu_auto_names_the_package_and_local_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools(tmp_path, monkeypatch, "vde_switch")
    plan = load_job_file(ROOT / "examples" / "qemu-client-server" / "job.yaml")
    for boards in ("auto", "qemu"):
        with pytest.raises(InfrastructureError) as info:
            plan_boards(plan, boards=boards)
        assert info.value.message == (
            "role server has device_type qemu but qemu-system-x86_64 is not installed: install "
            "the Debian package qemu-system-x86 (apt-get install qemu-system-x86), or run the "
            "job on local boards with --boards local"
        )
    local = plan_boards(plan, boards="local")
    assert [b.config["settings"]["emulates"] for b in local] == ["qemu", "qemu"]
    assert describe_boards(local)[1] == "  qemu-02  local board: emulates qemu (--boards local)"
    # the arch of the role's context picks the emulator and its package
    arm = load_job(
        (ROOT / "examples" / "qemu-lava" / "job.yaml")
        .read_text()
        .replace("arch: amd64", "arch: arm64"),
        str(ROOT / "examples" / "qemu-lava" / "job.yaml"),
    )
    with pytest.raises(InfrastructureError, match=r"qemu-system-aarch64 .* qemu-system-arm "):
        plan_boards(arm, boards="auto")
    tools(tmp_path, monkeypatch, "qemu-system-x86_64")
    with pytest.raises(InfrastructureError, match=r"vde_switch.*apt-get install vde2"):
        plan_boards(plan, boards="auto")


JOB = """\
job_name: images
protocols: {lava-multinode: {roles: {a: {device_type: qemu, count: 1}}}}
actions:
- deploy:
    images:
      kernel: {url: ../images/vmlinuz}
      ramdisk: {url: ../images/initramfs.cpio.gz}
"""


def checkout(tmp_path: Path, script: str) -> Path:
    """A checkout with a build script (as scripts/build-test-image.sh) and a job using it."""
    root = tmp_path / "checkout"
    (root / "scripts" / "initramfs").mkdir(parents=True)
    (root / "scripts" / "initramfs" / "init").write_text("#!/bin/sh\n")
    build = root / "scripts" / "build-test-image.sh"
    build.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    build.chmod(0o755)
    (root / "jobs").mkdir()
    (root / "jobs" / "job.yaml").write_text(JOB)
    return root


def test_a_missing_test_image_is_built_with_its_progress_shown(tmp_path: Path) -> None:
    root = checkout(
        tmp_path,
        """\
        echo "build-test-image: downloading" >&2
        mkdir -p images && touch images/vmlinuz images/initramfs.cpio.gz
        init=$(sha256sum scripts/initramfs/init | cut -d' ' -f1)
        echo "init=$init" > images/.stamp
        echo "build-test-image: built"
        """,
    )
    plan = load_job_file(root / "jobs" / "job.yaml")
    lines: list[str] = []
    ensure_images(plan, lines.append)
    assert lines[0].startswith("building the QEMU test image (")
    assert lines[1:] == ["  build-test-image: downloading", "  build-test-image: built"]
    lines.clear()
    ensure_images(plan, lines.append)
    assert lines == []  # built and up to date: nothing to do
    # the init script changed since: built again
    (root / "scripts" / "initramfs" / "init").write_text("#!/bin/sh\necho changed\n")
    ensure_images(plan, lines.append)
    assert lines and lines[0].startswith("building the QEMU test image")


def test_missing_images_fail_before_the_lab_starts(tmp_path: Path) -> None:
    root = checkout(tmp_path, 'echo "apt-get download failed" >&2\nexit 3\n')
    plan = load_job_file(root / "jobs" / "job.yaml")
    with pytest.raises(InfrastructureError, match=r"build-test-image.sh failed \(exit 3\)"):
        ensure_images(plan, lambda line: None)
    other = load_job(JOB.replace("../images/", "elsewhere/"), str(tmp_path / "job.yaml"))
    with pytest.raises(JobError) as info:
        ensure_images(other, lambda line: None)
    assert info.value.message == (
        "the job's images are missing: "
        f"actions[0].deploy.images.kernel: {tmp_path}/elsewhere/vmlinuz does not exist; "
        f"actions[0].deploy.images.ramdisk: {tmp_path}/elsewhere/initramfs.cpio.gz does not exist"
    )
