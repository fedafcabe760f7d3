"""LAVA's own dispatcher on a MultiNode job: one ``lava-run`` per node, LAVA's coordinator.

The anchor of ``bench/qemu.py --anchor``. LAVA comes from its source tree, as
LAVA's CI runs it:

* ``LAVA_TREE``: a LAVA source tree (``git archive`` of github.com/Linaro/lava:
  ``lava/dispatcher/lava-run``, ``lava/coordinator/``, ``lava_common/``,
  ``etc/dispatcher-config/device-types/``); or ``LAVA_MIRROR``, a clone of that
  repository, whose HEAD is extracted into the bench's work directory;
* ``LAVA_PYTHON``: an interpreter with LAVA's dependencies (default
  ``/usr/bin/python3`` with Debian's ``lava-dispatcher`` installed, which
  brings them);
* the coordinator's configuration is the one ``lava-run`` reads,
  ``/etc/lava-coordinator/lava-coordinator.conf`` (its port and poll delay:
  LAVA's default is 3 s);
* ``LAVA_RUN_LOCK``: a lock file that others who run LAVA's coordinator on that
  port hold meanwhile (taken without waiting: busy is an error).

The job is split one sub-job per node as lava-server splits it; each node's
device configuration is LAVA's ``qemu.jinja2`` rendered by LAVA's own template
environment from a device dictionary (TCG, 512 MiB, a MAC of its own), as
lava-server renders it. The coordinator binds 0.0.0.0 whatever it is told: it
runs with ``bind`` pointed at 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import MissingPiece

CONF = Path("/etc/lava-coordinator/lava-coordinator.conf")

#: the coordinator of the tree, on loopback (argv: tree)
COORDINATOR = """\
import runpy, socket, sys
_bind = socket.socket.bind
socket.socket.bind = lambda s, a: _bind(s, ('127.0.0.1', a[1]))
tree = sys.argv.pop(1)
sys.argv[0] = tree + '/lava/coordinator/lava-coordinator'
runpy.run_path(sys.argv[0], run_name='__main__')
"""

#: one device configuration per node from LAVA's qemu template (argv: tree, out dir, n)
RENDER = """\
import pathlib, sys
import jinja2, yaml
from lava_common.jinja import create_device_templates_env
tree, out, count = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
types = pathlib.Path(tree) / 'etc' / 'dispatcher-config' / 'device-types'
env = create_device_templates_env(loader=jinja2.FileSystemLoader([str(out), str(types)]))
for n in range(count):
    (out / f'qemu-{n}.jinja2').write_text(
        "{% extends 'qemu.jinja2' %}\\n{% set no_kvm = True %}\\n{% set memory = 512 %}\\n"
        f"{{% set mac_addr = '52:54:00:12:34:{0x60 + n:02x}' %}}\\n"
    )
    text = env.get_template(f'qemu-{n}.jinja2').render(arch='amd64')
    yaml.safe_load(text)
    (out / f'qemu-{n}.yaml').write_text(text)
"""

VERSION = "from lava_common.version import __version__; print(__version__)"


@dataclass(frozen=True)
class Lava:
    """Where LAVA is: its source tree and the interpreter that runs it."""

    tree: Path
    python: str
    version: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.tree)}

    def call(self, script: str, *args: str) -> str:
        out = subprocess.run(
            [self.python, "-c", script, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise MissingPiece(f"bench --anchor: LAVA in {self.tree} failed: {out.stderr[-800:]}")
        return out.stdout.strip()


def find_lava(work: Path) -> Lava:
    """LAVA_TREE, or the HEAD of LAVA_MIRROR extracted into ``work``; MissingPiece if neither."""
    python = os.environ.get("LAVA_PYTHON", "/usr/bin/python3")
    tree_env, mirror = os.environ.get("LAVA_TREE"), os.environ.get("LAVA_MIRROR")
    if tree_env:
        tree = Path(tree_env)
    elif mirror:
        tree = work / "lava"
        tree.mkdir()
        archive = subprocess.Popen(
            ["git", "-c", "safe.directory=*", f"--git-dir={mirror}", "archive", "HEAD"],
            stdout=subprocess.PIPE,
        )
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise MissingPiece(f"bench --anchor: LAVA_MIRROR={mirror}: git archive HEAD failed")
    else:
        raise MissingPiece(
            "bench --anchor: set LAVA_TREE to a LAVA source tree or LAVA_MIRROR to a clone of "
            "https://github.com/Linaro/lava (and LAVA_PYTHON to an interpreter with its "
            "dependencies: apt-get install lava-dispatcher)"
        )
    if not (tree / "lava" / "dispatcher" / "lava-run").is_file():
        raise MissingPiece(f"bench --anchor: {tree} has no lava/dispatcher/lava-run")
    lava = Lava(tree, python, "?")
    return Lava(tree, python, lava.call(VERSION))


def coordinator_conf() -> dict[str, Any]:
    """The configuration lava-run reads (where the coordinator is, its poll delay)."""
    try:
        conf = json.loads(CONF.read_text())
    except (OSError, ValueError):
        raise MissingPiece(
            f"bench --anchor: no {CONF}, which lava-run reads (apt-get install lava-coordinator "
            "installs LAVA's default)"
        ) from None
    return dict(conf)


@contextlib.contextmanager
def port_lock() -> Iterator[None]:
    """LAVA_RUN_LOCK, if set: others running LAVA's coordinator on the port hold it."""
    path = os.environ.get("LAVA_RUN_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MissingPiece(f"bench --anchor: {path} is held: LAVA runs; try again") from None
        yield


def split_for_lava(job: dict[str, Any], first_id: int) -> list[tuple[int, dict[str, Any]]]:
    """One LAVA sub-job per node, as lava-server splits a MultiNode job."""
    multinode = job["protocols"]["lava-multinode"]
    nodes = [
        (role, spec) for role, spec in multinode["roles"].items() for _ in range(spec["count"])
    ]
    ids = {first_id + i: role for i, (role, _) in enumerate(nodes)}
    out = []
    for i, (role, spec) in enumerate(nodes):
        sub = {k: v for k, v in job.items() if k not in ("protocols", "actions")}
        sub["device_type"] = spec["device_type"]
        sub["context"] = spec.get("context", {})
        sub["protocols"] = {
            "lava-multinode": {
                "role": role,
                "roles": {str(k): v for k, v in ids.items()},
                "group_size": len(nodes),
                "sub_id": i,
                "target_group": f"bench-{first_id}",
                "timeout": multinode["timeout"],
            }
        }
        sub["actions"] = []
        for action in job["actions"]:
            ((kind, body),) = action.items()
            if role in body.get("role", []):
                sub["actions"].append({kind: {**body, "role": role}})
        out.append((first_id + i, sub))
    return out


def lava_job_result(log: Path) -> str:
    """The ``job`` result lava-run logged (``pass``/``fail``), or ``no result``."""
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            msg = record.get("msg") if isinstance(record, dict) else None
            if isinstance(msg, dict) and msg.get("case") == "job":
                return str(msg.get("result"))
    return "no result"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def run_lava(lava: Lava, job_file: Path, work: Path) -> float:
    """LAVA's wall time for the job: the coordinator up to the last lava-run ended."""
    import yaml

    conf = coordinator_conf()
    port = int(conf.get("port", 3079))
    if _listening(port):
        raise MissingPiece(f"bench --anchor: something listens on 127.0.0.1:{port} already")
    job = yaml.safe_load(job_file.read_text())
    subjobs = split_for_lava(job, 90000 + (os.getpid() % 1000) * 10)
    devices = work / "devices"
    devices.mkdir()
    lava.call(RENDER, str(lava.tree), str(devices), str(len(subjobs)))
    start = time.time()
    coordinator = subprocess.Popen(
        [lava.python, "-c", COORDINATOR, str(lava.tree), "--config", str(CONF),
         "--logfile", str(work / "coordinator.log")],
        env=lava.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs: list[subprocess.Popen[bytes]] = []
    try:
        while not _listening(port):
            if coordinator.poll() is not None or time.time() - start > 30:
                raise MissingPiece("bench --anchor: LAVA's coordinator did not start")
            time.sleep(0.05)
        for n, (job_id, sub) in enumerate(subjobs):
            node = work / f"lava-{job_id}"
            node.mkdir()
            (node / "job.yaml").write_text(yaml.safe_dump(sub))
            with open(node / "lava.log", "wb") as out:
                runs.append(
                    subprocess.Popen(
                        [lava.python, str(lava.tree / "lava" / "dispatcher" / "lava-run"),
                         "--job-id", str(job_id), "--output-dir", str(node / "out"),
                         "--device", str(devices / f"qemu-{n}.yaml"), str(node / "job.yaml")],
                        env=lava.env(), stdout=out, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
        for proc in runs:
            proc.wait(timeout=900)
        end = time.time()
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
        coordinator.terminate()
        coordinator.wait(10)
    for node in sorted(work.glob("lava-*")):
        result = lava_job_result(node / "lava.log")
        if result != "pass":
            raise RuntimeError(f"LAVA's run of {node.name} ended {result}: see {node}/lava.log")
    return end - start
