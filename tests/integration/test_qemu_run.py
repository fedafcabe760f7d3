"""``lavamq run`` on real QEMU VMs: the examples in one command, LAVA's job shape, every ending.

Each run is the real command (``lavamq run FILE``) in a process of its own,
started from another directory than the checkout so that the job files'
relative paths are seen to resolve against the files themselves. After every
ending (complete, a failed boot, Ctrl-C, ``--timeout``, QEMU missing) nothing
may be left (:class:`Footprint`): no process the run started (by pid), no
network link in the run's namespace, no temporary file, no workspace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import IMAGES, LAVAMQ, ROOT, require_qemu

from device_agent.vmnet import process_cmdline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADER = re.compile(r"^embedded lab in (\S+), boards:$", re.M)
IP = shutil.which("ip") or "/usr/sbin/ip"
#: the environment variable that marks a run's processes
MARK = "LAVAMQ_TEST_RUN_MARK"


@pytest.fixture(autouse=True)
def _qemu() -> None:
    require_qemu("lavamq run on QEMU")


class Footprint:
    """What one ``lavamq run`` leaves on the host, counted before and after it.

    The run goes in a network namespace of its own (``ip netns``), so the links
    counted there (tap devices, bridges) are the run's alone; its processes
    carry a marker in their environment, so every one it started (QEMU,
    vde_switch, board shells, daemonised or not) is found by pid; ``TMPDIR`` is
    a directory of its own, so every temporary file it made is in there.
    """

    def __init__(self) -> None:
        self.mark = f"lavamq-test-{uuid.uuid4().hex[:12]}"
        self.netns = self.mark
        # short: the VMs' switch sockets live under it (unix socket paths are short)
        self.tmp = Path(tempfile.mkdtemp(prefix="lmq-", dir="/tmp"))
        subprocess.run([IP, "netns", "add", self.netns], check=True)
        subprocess.run([IP, "netns", "exec", self.netns, IP, "link", "set", "lo", "up"], check=True)
        self.links_before = self.links()
        assert self.pids() == [] and not list(self.tmp.iterdir())

    def command(self, args: list[str]) -> list[str]:
        """``lavamq run ARGS`` in the run's network namespace."""
        return [IP, "netns", "exec", self.netns, *LAVAMQ, "run", *args]

    def env(self, **changes: str) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp), MARK: self.mark, **changes}

    def links(self) -> list[str]:
        out = subprocess.run(
            [IP, "netns", "exec", self.netns, IP, "-o", "link", "show"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sorted(line.split(":")[1].strip() for line in out.splitlines())

    def pids(self) -> list[int]:
        """Every process whose environment holds this run's marker."""
        needle = f"{MARK}={self.mark}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.append(int(entry))
        return found

    def left_behind(self, workspace: Path | None) -> list[str]:
        """The run's processes (by pid), links, temporary files and workspace still there."""
        found = [f"pid {pid}: {' '.join(process_cmdline(pid))[:200]}" for pid in self.pids()]
        if workspace is not None:
            for entry in os.listdir("/proc"):
                cmd = process_cmdline(int(entry)) if entry.isdigit() else []
                if any(str(workspace) in part for part in cmd):
                    found.append(f"pid {entry} names the workspace: {' '.join(cmd)[:200]}")
            if workspace.exists():
                found.append(f"{workspace} still exists")
        found += [f"link {name}" for name in self.links() if name not in self.links_before]
        found += [f"temporary file {path}" for path in sorted(self.tmp.rglob("*"))]
        return found

    def cleaned_up(self, workspace: Path | None) -> None:
        """Assert nothing is left (killing what is, so the next test starts clean)."""
        left = self.left_behind(workspace)
        for line in left:
            if line.startswith("pid "):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line.split()[1].rstrip(":")), signal.SIGKILL)
        assert not left, left

    def close(self) -> None:
        subprocess.run([IP, "netns", "del", self.netns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def footprint() -> Iterator[Footprint]:
    fp = Footprint()
    try:
        yield fp
    finally:
        fp.close()


def lavamq_run(
    fp: Footprint, args: list[str], cwd: Path, timeout: float = 300, **env: str
) -> tuple[int, str]:
    proc = subprocess.run(
        fp.command(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=fp.env(**env),
    )
    return proc.returncode, proc.stdout + proc.stderr


def workspace_of(output: str) -> Path:
    found = HEADER.search(output)
    assert found, output[-3000:]
    return Path(found.group(1))


def cases(bundle: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (node["node"], case["name"]): case["result"]
        for node in bundle["nodes"]
        for run in node["test_runs"]
        for case in run["cases"]
    }


def test_the_qemu_examples_run_in_one_command(tmp_path: Path, footprint: Footprint) -> None:
    # from elsewhere than the checkout: the job file's own directory counts
    for example, nodes in (("qemu-client-server", 2), ("qemu-network", 3)):
        job = ROOT / "examples" / example / "job.yaml"
        code, output = lavamq_run(footprint, [str(job), "--json"], cwd=tmp_path)
        workspace = workspace_of(output)
        bundle = json.loads(output[output.index("{\n") : output.rindex("}") + 1])
        assert code == 0 and bundle["job"]["passed"], output[-4000:]
        assert len(bundle["nodes"]) == nodes
        assert all(result == "pass" for result in cases(bundle).values())
        # the header says which kind of board each node got, and why
        for i in range(1, nodes + 1):
            assert f"  qemu-0{i}  qemu VM: qemu-system-x86_64 is installed" in output
        footprint.cleaned_up(workspace)
    assert ("qemu-01", "ping-every-peer") in cases(bundle)


def lava_shaped_job(tmp_path: Path, **changes: str) -> Path:
    """examples/qemu-lava/job.yaml with absolute paths (and ``changes``), in tmp_path."""
    text = (ROOT / "examples" / "qemu-lava" / "job.yaml").read_text()
    text = text.replace("file:../../images/", f"file://{IMAGES.resolve()}/")
    text = text.replace("repository: ../..", f"repository: {ROOT}")
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    job = tmp_path / "job.yaml"
    job.write_text(text)
    return job


def test_a_job_in_lavas_qemu_shape_runs_on_vms(tmp_path: Path, footprint: Footprint) -> None:
    sums = {
        name: digest
        for digest, name in (
            line.split() for line in (IMAGES / "SHA256SUMS").read_text().splitlines()
        )
    }
    job = lava_shaped_job(
        tmp_path,
        **{
            "          memory: 256\n": "          memory: 256\n          frobnicate: 1\n",
            # checked as LAVA checks it: the file as downloaded, before decompression
            "        compression: gz\n": "        compression: gz\n"
            f"        sha256sum: {sums['initramfs.cpio.gz']}\n",
        },
    )
    code, output = lavamq_run(footprint, [str(job), "--json", "--keep"], cwd=tmp_path)
    bundle = json.loads(output[output.index("{\n") : output.rindex("}") + 1])
    assert code == 0 and bundle["job"]["passed"], output[-4000:]
    workspace = workspace_of(output)
    logs = [p.read_text() for p in workspace.glob("dispatcher/jobs/*/job.log")]
    shutil.rmtree(workspace)
    assert len(logs) == 2
    assert all(f"initrd: sha256sum {sums['initramfs.cpio.gz']} verified" in log for log in logs)
    got = cases(bundle)
    # auto_login logged in and ran its login_commands; the prompt was the job's
    assert got[("qemu-01", "login-commands-ran")] == "pass"
    # lava-network, lava-send and lava-wait between the two VMs
    assert got[("qemu-02", "same-address-both-ways")] == "pass"
    assert got[("qemu-02", "client-ping-server")] == "pass"
    assert got[("qemu-01", "client-reached-server")] == "pass"
    # an unknown context key is a warning, not an error
    assert (
        "[qemu-01] warning: boot-qemu: context 'frobnicate' is not a qemu setting lavamq "
        "knows: ignored" in output
    )
    footprint.cleaned_up(workspace)


def test_a_vm_that_never_shows_its_prompt_fails_naming_it(
    tmp_path: Path, footprint: Footprint
) -> None:
    job = lava_shaped_job(
        tmp_path,
        **{
            "    - 'root@lava-dut:~# '": "    - 'never-this-prompt# '",
            "    timeout:\n      minutes: 2\n    auto_login": "    timeout:\n      seconds: 20\n"
            "    auto_login",
        },
    )
    code, output = lavamq_run(footprint, [str(job)], cwd=tmp_path)
    assert code == 1, output[-3000:]
    # the job's fault (its prompt or its timeout), as in LAVA
    assert "job: boot-qemu timed out booting qemu-0" in output, output[-3000:]
    # which prompt, how long, and what the console showed last (the image's real prompt)
    assert re.search(
        r"no 'never-this-prompt# ' on the console within the boot's \d+(\.\d+)? s; "
        r"the last console lines:",
        output,
    ), output[-3000:]
    assert "| root@lava-dut:~#" in output
    footprint.cleaned_up(workspace_of(output))


BLOCKING_JOB = """\
job_name: qemu endings
timeouts: {{job: {{minutes: 5}}, action: {{minutes: 3}}}}
protocols:
  lava-multinode:
    roles:
      waiter: {{device_type: qemu, count: 2}}
    timeout: {{minutes: 4}}
actions:
- deploy:
    to: tmpfs
    images:
      kernel: {{url: '{images}/vmlinuz'}}
      ramdisk: {{url: '{images}/initramfs.cpio.gz', compression: gz}}
- boot: {{method: qemu, prompts: ['lavamq-vm# ']}}
- test:
    definitions:
    - from: inline
      name: wait
      path: inline/wait.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: wait}}
        run:
          steps:
          - lava-test-case booted --result pass
          - lava-wait never-sent
"""


def blocking_job(tmp_path: Path) -> Path:
    job = tmp_path / "blocking.yaml"
    job.write_text(BLOCKING_JOB.format(images=IMAGES.resolve().as_uri()))
    return job


def test_ctrl_c_leaves_nothing_behind(tmp_path: Path, footprint: Footprint) -> None:
    proc = subprocess.Popen(
        footprint.command([str(blocking_job(tmp_path))]),
        cwd=tmp_path,
        env=footprint.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            # both VMs booted and waiting: the moment there is most to clean up
            if sum("lava-wait never-sent ..." in seen for seen in lines) == 2:
                break
        workspace = workspace_of("".join(lines))
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, "".join(lines) + rest
    footprint.cleaned_up(workspace)


def test_timeout_leaves_nothing_behind(tmp_path: Path, footprint: Footprint) -> None:
    code, output = lavamq_run(
        footprint, [str(blocking_job(tmp_path)), "--timeout", "30"], cwd=tmp_path
    )
    assert code == 1, output[-3000:]
    assert "waited 30 s for job 1 to end" in output, output[-3000:]
    assert output.count("lava-wait never-sent ...") == 2, output[-3000:]
    footprint.cleaned_up(workspace_of(output))


def test_without_qemu_it_says_what_to_install_and_local_boards_are_asked_for(
    tmp_path: Path, footprint: Footprint
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            """\
            job_name: qemu on local boards
            timeouts: {job: {minutes: 3}}
            protocols: {lava-multinode: {roles: {node: {device_type: qemu, count: 1}}}}
            actions:
            - boot: {method: qemu}
            - test:
                definitions:
                - from: inline
                  name: smoke
                  path: inline/smoke.yaml
                  repository:
                    metadata: {format: Lava-Test Test Definition 1.0, name: smoke}
                    run: {steps: [lava-test-case smoke --shell true]}
            """
        )
    )
    # no qemu-system-* on PATH: as on a host without the package
    no_qemu = str(tmp_path / "empty")
    code, output = lavamq_run(footprint, [str(job)], cwd=tmp_path, PATH=no_qemu)
    assert code == 1
    assert "qemu-system-x86_64 is not installed: install the Debian package qemu-system-x86" in (
        output
    )
    assert "--boards local" in output and "embedded lab in" not in output
    footprint.cleaned_up(None)  # refused before anything started
    code, output = lavamq_run(
        footprint, [str(job), "--boards", "local"], cwd=tmp_path, PATH=no_qemu
    )
    assert code == 0, output[-3000:]
    assert "  qemu-01  local board: emulates qemu (--boards local)" in output
    footprint.cleaned_up(workspace_of(output))
