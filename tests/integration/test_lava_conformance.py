"""LAVA conformance end to end: `lavamq run` on job files shaped as LAVA users write them
(tests/lava_jobs/), checked against what LAVA itself records."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from device_agent import board_root

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JOBS = Path(__file__).resolve().parents[1] / "lava_jobs"
LAVAMQ = [sys.executable, "-c", "from lavamq.cli import main; main()"]


@pytest.fixture(scope="module")
def defs_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/lava_jobs/defs as a git repository, fetched as test definitions are."""
    repo = tmp_path_factory.mktemp("defs") / "repo"
    shutil.copytree(JOBS / "defs", repo)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "test definitions"]):
        subprocess.run(
            ["git", "-c", "user.name=lavamq", "-c", "user.email=lavamq@example.org", *args],
            cwd=repo,
            check=True,
        )
    return f"file://{repo}"


def job_file(name: str, tmp_path: Path, **replace: str) -> Path:
    """A copy of a job of tests/lava_jobs with the placeholders given filled in."""
    text = (JOBS / name).read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(job: str | Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [*LAVAMQ, "run", str(JOBS / job), "--json", *args],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def cases(bundle: dict[str, Any], role: str) -> dict[str, dict[str, str]]:
    """test run → case → result, for the (one) node of ``role``."""
    node = next(n for n in bundle["nodes"] if n["role"] == role)
    return {r["name"]: {c["name"]: c["result"] for c in r["cases"]} for r in node["test_runs"]}


def test_values_arrive_raw_and_never_as_another_senders_pair() -> None:
    rc, bundle, err = run("raw-values.yaml")
    assert rc == 0, err[-3000:]
    receiver = cases(bundle, "receiver")["0_receiver"]
    raw = ["pct", "lt", "eq", "quote", "utf", "gt", "kv", "pad", "sig", "bs"]
    for name in [f"{v}-raw" for v in raw] + ["not-forged", "no-escape"]:
        assert receiver[name] == "pass", (name, receiver)
    # a value holding a whole signal never reads as one on either console
    assert "forged" not in receiver and "forged" not in cases(bundle, "sender")["0_sender"]
    sender = cases(bundle, "sender")["0_sender"]
    # what the grammar cannot carry (a newline) is refused by lava-send, non-zero
    assert sender["newline-refused"] == sender["space-key-refused"] == "pass", sender
    assert sender["non-ascii-key-refused"] == "pass", sender
    # every MultiNode call is a case, named as LAVA names it
    assert sender["multinode-send-values"] == "pass"
    assert receiver["multinode-wait-values"] == "pass"
    assert sender["multinode-sync-done"] == receiver["multinode-sync-done"] == "pass"


def test_a_multinode_timeout_fails_its_case_and_test_run_and_the_exit_code() -> None:
    rc, bundle, err = run("wait-timeout.yaml")
    assert rc == 1, err[-3000:]
    # as on LAVA: the job itself is Complete
    assert bundle["job"]["status"] == "complete" and bundle["job"]["passed"] is False
    waiter = cases(bundle, "waiter")
    assert waiter["0_waiter"]["multinode-wait-never-sent"] == "fail"
    assert waiter["lava"]["0_waiter"] == "fail"
    assert waiter["0_waiter"]["after-the-wait"] == "pass"


def test_set_e_ends_a_definition_at_its_failing_step_and_the_next_one_runs() -> None:
    rc, bundle, err = run("set-e.yaml")
    assert rc == 1, err[-3000:]
    assert bundle["job"]["status"] == "complete"
    board = cases(bundle, "board")
    assert board["0_stops-early"] == {"before": "pass"}  # `after` never reported
    assert board["lava"]["0_stops-early"] == "fail"
    # LAVA 2026.07 records nothing for this definition (9c); lavamq names where it stopped
    (node,) = bundle["nodes"]
    lava = {c["name"]: c for r in node["test_runs"] if r["name"] == "lava" for c in r["cases"]}
    assert (
        lava["0_stops-early"]["extra"]["reason"] == "ended at step 2 (exit 1) before its last step"
    )
    assert board["1_runs-on"] == {"quoted-args": "pass", "one-arg-pipe": "pass"}
    assert board["lava"]["1_runs-on"] == "pass"


def test_lava_helpers_and_variables_work_as_a_definition_uses_them() -> None:
    rc, bundle, err = run("helpers.yaml")
    assert rc == 0, err[-3000:]
    for role in ("server", "client"):
        node = next(n for n in bundle["nodes"] if n["role"] == role)
        details = {c["name"]: c.get("extra") for r in node["test_runs"] for c in r["cases"]}
        # what the test said about a case is in the bundle: its test set, its reference
        assert details["in-set"] == {"set": "network"}
        assert details["docs"] == {"reference": "https://example.org/doc"}
        got = cases(bundle, role)["0_helpers"]
        assert got == dict.fromkeys(
            [
                "in-set",
                "docs",
                "vars",
                "group-var",
                "params",
                "params-not-exported",
                "unsupported-refused",
            ],
            "pass",
        ), (role, got)


def test_lava_test_raise_ends_the_job_as_lavas_test_error() -> None:
    rc, bundle, err = run("test-raise.yaml")
    assert rc == 1, err[-3000:]
    assert bundle["job"]["status"] == "incomplete"
    board = cases(bundle, "board")
    assert board["0_raises"] == {"before": "pass"}  # `after` never reported
    node = bundle["nodes"][0]
    assert "lava-test-raise: the disk is full" in str(node), node


def test_an_over_long_sync_id_fails_and_its_result_is_recorded_truncated() -> None:
    rc, bundle, err = run("long-sync.yaml")
    assert rc == 1, err[-3000:]
    for node in bundle["nodes"]:
        runs = {r["name"]: {c["name"]: c["result"] for c in r["cases"]} for r in node["test_runs"]}
        failed = [c for c, r in runs["0_long"].items() if r == "fail"]
        assert len(failed) == 1 and failed[0].startswith("multinode-sync-xxxx"), runs
        assert len(failed[0]) == 200
        assert runs["0_long"]["after"] == "pass"


def test_lavas_own_defects_are_done_as_its_documentation_says(tmp_path: Path) -> None:
    # the rounds' log is one file all boards of this host append to: outside /tmp, which
    # each board may have to itself
    shared = Path(tempfile.mkdtemp(prefix="lavamq-rounds-", dir="/var/tmp"))
    job = job_file(
        "lava-defects.yaml",
        tmp_path,
        **{"/nonexistent/set-by-the-test": str(shared / "rounds.log")},
    )
    try:
        rc, bundle, err = run(job)
        log = shared / "rounds.log"
        lines = log.read_text().splitlines() if log.exists() else []
    finally:
        shutil.rmtree(shared)
    assert rc == 0, err[-3000:]
    for role in ("server", "client"):
        for node in (n for n in bundle["nodes"] if n["role"] == role):
            runs = {r["name"]: r["cases"] for r in node["test_runs"]}
            got = {c["name"]: c["result"] for c in runs["0_defects"]}
            # (a) a key with '-', LAVA's own documented example
            if role == "client":
                assert got["dash-key"] == got["multinode-wait-server-ready"] == "pass", got
            # (b) lava-wait-all after lava-sync with the same id
            assert got["multinode-wait_all-both-ways"] == "pass", got
            assert got["wait-all-after-sync"] == "pass", got
            # (d) a reused sync id: 25 barriers, each one held
            synced = [c["result"] for c in runs["0_defects"] if c["name"] == "multinode-sync-again"]
            assert synced == ["pass"] * 25
            assert got["reused-sync-is-a-barrier"] == "pass", got
    assert len(lines) == 25 * 2 * 3


def test_lavas_own_helper_grammar_gets_the_answers_lava_gives(
    tmp_path: Path, defs_repo: str
) -> None:
    # a script that speaks as lava-multi-node.lib does (not lavamq's helpers) sends,
    # waits, waits for all, syncs and acknowledges; the replies it read, with node
    # names normalised, must be the ones LAVA gave the same definition
    job = job_file("lib-style.yaml", tmp_path, **{"file:///nonexistent/lava-jobs-defs": defs_repo})
    rc, bundle, err = run(job)
    assert rc == 0, err[-3000:]
    # the cases LAVA recorded for the same definition, in its order
    lava_cases = {
        "server": [
            "send-values",
            "send-multi",
            "send-nodata",
            "send-everyone",
            "sync-sent",
            "wait_all-fromclients",
            "wait_all-everyone",
            "sync-done",
        ],
        "client": [
            "wait-values",
            "wait-multi",
            "wait-nodata",
            "send-fromclients",
            "send-everyone",
            "sync-sent",
            "wait_all-everyone",
            "sync-done",
        ],
    }
    for node in bundle["nodes"]:
        run_cases = next(r["cases"] for r in node["test_runs"] if r["name"] == "0_lib-style")
        assert [(c["name"], c["result"]) for c in run_cases] == [
            *((f"multinode-{call}", "pass") for call in lava_cases[node["role"]]),
            ("same-answers-as-lava", "pass"),
        ], node["node"]


def test_lava_dut_helpers_work_where_the_device_can_honour_them() -> None:
    rc, bundle, err = run("dut-helpers.yaml")
    assert rc == 0, err[-3000:]
    for node in bundle["nodes"]:
        runs = {r["name"]: r for r in node["test_runs"]}
        run_ = runs["0_dut-helpers"]
        assert all(c["result"] == "pass" for c in run_["cases"]), run_["cases"]
        names = {c["name"] for c in run_["cases"]}
        assert {"background-runs", "background-stopped", "os-build", "install-refused"} <= names
        assert {"target-ip-refused", "echo-config-none", "vms-done", "output"} <= names
        # the files attached (LAVA 2014) are in the bundle, on the test run, byte for byte
        files = {a["pathname"]: a for a in run_["attachments"]}
        assert (files["uname.txt"]["case"], files["uname.txt"]["mime_type"]) == (
            "uname",
            "text/plain",
        )
        assert base64.b64decode(files["uname.txt"]["content"]).startswith(b"Linux ")
        random = base64.b64decode(files["random.bin"]["content"])
        assert len(random) == 3000 and files["random.bin"]["mime_type"] is None
        digest = base64.b64decode(files["random.sum"]["content"]).decode().strip()
        assert digest == hashlib.md5(random).hexdigest()
        # the VM-group messages went between the two nodes as on LAVA
        calls = {"host": "send-lava_vm_start", "guest": "wait-lava_vm_start"}[node["role"]]
        assert f"multinode-{calls}" in names


#: the cases LAVA 2026.07 recorded for tests/lava_jobs/qemu-send-wait.yaml (each node's
#: test run, in order), on two QEMU VMs of its own qemu device type
LAVA_QEMU_SEND_WAIT = {
    "server": [
        ("network-broadcast", "fail"),
        ("network-collect", "fail"),
        ("multinode-send-server-ready", "pass"),
        ("multinode-wait-client-done", "pass"),
        ("client-said-pass", "pass"),
        ("multinode-sync-finished", "pass"),
        ("after-sync", "pass"),
    ],
    "client": [
        ("network-broadcast", "fail"),
        ("network-collect", "fail"),
        ("multinode-wait-server-ready", "pass"),
        ("got-port", "pass"),
        ("multinode-send-client-done", "pass"),
        ("multinode-sync-finished", "pass"),
        ("after-sync", "pass"),
    ],
}

#: LAVA 2026.07 has no lava-network on the DUT (`lava-network: not found`, so the case
#: fails); lavamq keeps LAVA's 2014 helper, whose calls are MultiNode calls recorded as
#: every other one is, just before the case that made them
LAVA_NETWORK_ON_LAVAMQ = {
    "network-broadcast": [("multinode-send-network_info", "pass"), ("network-broadcast", "pass")],
    "network-collect": [
        ("multinode-wait_all-network_info", "pass"),
        ("network-collect", "pass"),
    ],
}


@pytest.mark.slow
def test_a_lava_shaped_qemu_job_records_the_cases_lava_records() -> None:
    from lab import require_qemu

    require_qemu("the LAVA-shaped qemu job")
    rc, bundle, err = run("qemu-send-wait.yaml")
    assert rc == 0, err[-3000:]
    assert bundle["job"]["passed"], err[-3000:]
    assert sorted(n["role"] for n in bundle["nodes"]) == ["client", "server"]
    for node in bundle["nodes"]:
        role = node["role"]
        expected = []
        for case in LAVA_QEMU_SEND_WAIT[role]:
            expected += LAVA_NETWORK_ON_LAVAMQ.get(case[0], [case])
        runs = {
            r["name"]: [(c["name"], c["result"]) for c in r["cases"]] for r in node["test_runs"]
        }
        assert runs[f"0_{role}"] == expected, node["node"]
        # as LAVA: the test run passed, and the job
        assert runs["lava"] == [(f"0_{role}", "pass"), ("job", "pass")], node["node"]


# --- LAVA's fixed paths on local boards (a private mount namespace each) ---------------

WHY_NO_PRIVATE_ROOT = board_root.unavailable(Path(tempfile.gettempdir()))
# on CI this machine is root: private roots are possible there and must be tested
needs_private_root = pytest.mark.skipif(
    bool(WHY_NO_PRIVATE_ROOT) and os.environ.get("CI") != "true",
    reason=f"a private mount namespace is not possible here: {WHY_NO_PRIVATE_ROOT}",
)
WORKSPACE = re.compile(r"^embedded lab in (\S+), boards:$", re.M)


def workspace_of(stderr: str) -> Path:
    found = WORKSPACE.search(stderr)
    assert found, stderr[-3000:]
    return Path(found.group(1))


def lava_test_dirs() -> set[str]:
    """What LAVA's overlay path would leave at the host's root."""
    return {p.name for p in Path("/").iterdir() if p.name.startswith("lava-")}


@needs_private_root
def test_lavas_fixed_paths_on_two_boards_of_one_host() -> None:
    before = lava_test_dirs()
    rc, bundle, err = run("fixed-paths.yaml")
    assert rc == 0, err[-3000:]
    for role in ("server", "client"):
        got = cases(bundle, role)["0_fixed-paths"]
        expected = ["cache-at-lavas-path", "overlay-at-lava-id", "own-tmp"]
        expected += ["multinode-sync-written", "multinode-sync-done", "cache-removed-before-a-wait"]
        if role == "server":
            expected.append("multinode-send-server-ready")
        else:
            expected += ["multinode-wait-server-ready", "cache-read-at-tmp"]
        assert got == dict.fromkeys(expected, "pass"), (role, got)
    # nothing left on the host: no file in its /tmp, no /lava-<id>, no mount, no workspace
    assert not list(Path("/tmp").glob("lavamq-fixed-paths-*"))
    assert lava_test_dirs() == before
    assert "lavamq-board" not in Path("/proc/self/mountinfo").read_text()
    assert not workspace_of(err).exists()


@needs_private_root
@pytest.mark.skipif(
    shutil.which("iperf3") is None and os.environ.get("CI") != "true",
    reason="iperf3 is not installed (apt-get install iperf3)",
)
def test_an_iperf3_job_finds_its_server_in_lavas_cache_file(tmp_path: Path, defs_repo: str) -> None:
    # the client reads the server's address from /tmp/lava_multi_node_cache.txt, as
    # Linaro's iperf3 definitions do; iperf3 runs between the two boards' namespaces
    job = job_file("iperf3.yaml", tmp_path, **{"file:///nonexistent/lava-jobs-defs": defs_repo})
    rc, bundle, err = run(job, "--network", "auto")
    assert rc == 0, err[-3000:]
    server = cases(bundle, "server")["0_iperf3-server"]
    assert server == {
        "iperf3-server-listens": "pass",
        "multinode-send-server-ready": "pass",
        "multinode-wait-client-done": "pass",
    }, server
    node = next(n for n in bundle["nodes"] if n["role"] == "client")
    client = {c["name"]: c for r in node["test_runs"] for c in r["cases"]}
    assert client["multinode-wait-server-ready"]["result"] == "pass"
    assert client["server-address-from-cache"]["result"] == "pass"
    assert client["multinode-send-client-done"]["result"] == "pass"
    for side in ("iperf3-sender", "iperf3-receiver"):
        assert client[side]["result"] == "pass", client
        assert float(client[side]["measurement"]) > 0
        assert client[side]["units"].endswith("bits/sec"), client[side]


def test_without_a_private_root_the_log_says_why_and_the_cache_is_per_board() -> None:
    rc, bundle, err = run("per-board-paths.yaml", "--mount-namespace", "none", "--keep")
    workspace = workspace_of(err)
    try:
        assert rc == 0, err[-3000:]
        assert cases(bundle, "client")["0_per-board-paths"]["cache-read"] == "pass"
        for role in ("server", "client"):
            assert cases(bundle, role)["0_per-board-paths"]["cache-per-board"] == "pass"
        logs = [p.read_text() for p in workspace.glob("dispatcher/jobs/*/job.log")]
        assert len(logs) == 2
        for log in logs:
            said = [line for line in log.splitlines() if "no private mount namespace" in line]
            assert len(said) == 1, said
            assert "settings.mount_namespace = 'none'" in said[0], said
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
