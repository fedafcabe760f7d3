"""``lavamq run`` on real QEMU VMs: the examples in one command, LAVA's job shape, every ending.

Each run is the real command (``lavamq run FILE``) in a process of its own,
started from another directory than the checkout so that the job files'
relative paths are seen to resolve against the files themselves. After every
ending (complete, a failed boot, Ctrl-C, ``--timeout``) nothing may be left:
no process naming the run's workspace (QEMU, vde_switch, board shells), and
no workspace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from lab import IMAGES, LAVAMQ, ROOT, require_qemu

from device_agent.vmnet import process_cmdline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADER = re.compile(r"^embedded lab in (\S+), boards:$", re.M)


@pytest.fixture(autouse=True)
def _qemu() -> None:
    require_qemu("lavamq run on QEMU")


def lavamq_run(args: list[str], cwd: Path, timeout: float = 300, **kw: Any) -> tuple[int, str]:
    proc = subprocess.run(
        [*LAVAMQ, "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    return proc.returncode, proc.stdout + proc.stderr


def workspace_of(output: str) -> Path:
    found = HEADER.search(output)
    assert found, output[-3000:]
    return Path(found.group(1))


def left_behind(workspace: Path) -> list[str]:
    """Every process whose command line names the workspace, and the workspace itself."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            cmd = process_cmdline(int(entry))
            if any(str(workspace) in part for part in cmd):
                found.append(f"pid {entry}: {' '.join(cmd)[:200]}")
    if workspace.exists():
        found.append(f"{workspace} still exists")
    return found


def cleaned_up(workspace: Path) -> None:
    left = left_behind(workspace)
    for line in left:
        if line.startswith("pid "):
            os.kill(int(line.split()[1].rstrip(":")), signal.SIGKILL)
    assert not left, left


def cases(bundle: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (node["node"], case["name"]): case["result"]
        for node in bundle["nodes"]
        for run in node["test_runs"]
        for case in run["cases"]
    }


def test_the_qemu_examples_run_in_one_command(tmp_path: Path) -> None:
    # from elsewhere than the checkout: the job file's own directory counts
    for example, nodes in (("qemu-client-server", 2), ("qemu-network", 3)):
        job = ROOT / "examples" / example / "job.yaml"
        code, output = lavamq_run([str(job), "--json"], cwd=tmp_path)
        workspace = workspace_of(output)
        bundle = json.loads(output[output.index("{\n") : output.rindex("}") + 1])
        assert code == 0 and bundle["job"]["passed"], output[-4000:]
        assert len(bundle["nodes"]) == nodes
        assert all(result == "pass" for result in cases(bundle).values())
        # the header says which kind of board each node got, and why
        for i in range(1, nodes + 1):
            assert f"  qemu-0{i}  qemu VM: qemu-system-x86_64 is installed" in output
        cleaned_up(workspace)
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


def test_a_job_in_lavas_qemu_shape_runs_on_vms(tmp_path: Path) -> None:
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
    code, output = lavamq_run([str(job), "--json", "--keep"], cwd=tmp_path)
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
    cleaned_up(workspace)


def test_a_vm_that_never_shows_its_prompt_fails_naming_it(tmp_path: Path) -> None:
    job = lava_shaped_job(
        tmp_path,
        **{
            "    - 'root@lava-dut:~# '": "    - 'never-this-prompt# '",
            "    timeout:\n      minutes: 2\n    auto_login": "    timeout:\n      seconds: 20\n"
            "    auto_login",
        },
    )
    code, output = lavamq_run([str(job)], cwd=tmp_path)
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
    cleaned_up(workspace_of(output))


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


def test_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*LAVAMQ, "run", str(blocking_job(tmp_path))],
        cwd=tmp_path,
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
    cleaned_up(workspace)


def test_timeout_leaves_nothing_behind(tmp_path: Path) -> None:
    code, output = lavamq_run([str(blocking_job(tmp_path)), "--timeout", "30"], cwd=tmp_path)
    assert code == 1, output[-3000:]
    assert "waited 30 s for job 1 to end" in output, output[-3000:]
    assert output.count("lava-wait never-sent ...") == 2, output[-3000:]
    cleaned_up(workspace_of(output))


def test_without_qemu_it_says_what_to_install_and_local_boards_are_asked_for(
    tmp_path: Path,
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
    no_qemu = {**os.environ, "PATH": str(tmp_path / "empty")}
    code, output = lavamq_run([str(job)], cwd=tmp_path, env=no_qemu)
    assert code == 1
    assert "qemu-system-x86_64 is not installed: install the Debian package qemu-system-x86" in (
        output
    )
    assert "--boards local" in output and "embedded lab in" not in output
    code, output = lavamq_run([str(job), "--boards", "local"], cwd=tmp_path, env=no_qemu)
    assert code == 0, output[-3000:]
    assert "  qemu-01  local board: emulates qemu (--boards local)" in output
    cleaned_up(workspace_of(output))
