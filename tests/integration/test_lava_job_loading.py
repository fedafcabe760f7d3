"""Job files load as LAVA loads them, end to end with `lavamq validate` and `lavamq run`
(tests/lava_jobs/): a duplicate key (the last wins, with a warning), secrets (written
for the test, masked everywhere), deploys without images, a test on a node never booted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lab import lavamq_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JOBS = Path(__file__).resolve().parents[1] / "lava_jobs"
#: the job's secret in tests/lava_jobs/secrets.yaml
SECRET = "b43614a9583f9c74b989914a91d1cfd9"


def kept(proc: subprocess.CompletedProcess[str]) -> Path:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("workspace kept: ")]
    assert lines, proc.stderr[-3000:]
    return Path(lines[-1].split(": ", 1)[1])


def job_logs(workspace: Path) -> dict[str, list[dict[str, Any]]]:
    """node → its job log's records."""
    return {
        log.parent.name.split(".")[1]: [
            json.loads(line) for line in log.read_text().splitlines() if line.strip()
        ]
        for log in (workspace / "dispatcher" / "jobs").glob("*/job.log")
    }


def cases(bundle: dict[str, Any]) -> dict[tuple[str, str], dict[str, str]]:
    """(role, test run) → case → result."""
    return {
        (n["role"], r["name"]): {c["name"]: c["result"] for c in r["cases"]}
        for n in bundle["nodes"]
        for r in n["test_runs"]
    }


def test_a_duplicate_key_loads_as_on_lava_with_a_warning(tmp_path: Path) -> None:
    job = JOBS / "duplicate-key.yaml"
    line = next(i for i, t in enumerate(job.read_text().splitlines(), 1) if "GREETING: last" in t)
    warning = (
        f"line {line}, column 9: duplicate key 'GREETING': the last one is used (as LAVA does)"
    )
    checked = lavamq_in(tmp_path, "validate", str(job))
    assert checked.returncode == 0, checked.stdout
    assert f"{job}: warning: {warning}" in checked.stdout.splitlines()
    as_json = json.loads(lavamq_in(tmp_path, "validate", "--json", str(job)).stdout)
    assert as_json[0]["plan"]["warnings"] == [warning]
    # run: said before anything starts, and the test sees the last value
    ran = lavamq_in(tmp_path, "run", str(job), "--json")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert f"duplicate-key.yaml: warning: {warning}" in ran.stderr
    assert cases(json.loads(ran.stdout))[("board", "0_last-wins")] == {"the-last-value": "pass"}
    # a LAVA 2014 JSON job: the same (Python's json keeps the last too), line and column named
    seed = Path(__file__).resolve().parents[2] / "examples" / "seed-simple-multinode.json"
    text = seed.read_text().replace('"job_name":', '"job_name": "first",\n  "job_name":', 1)
    dup = tmp_path / "dup.json"
    dup.write_text(text)
    checked = lavamq_in(tmp_path, "validate", str(dup))
    assert checked.returncode == 0, checked.stdout
    (json_warning,) = [w for w in checked.stdout.splitlines() if ": warning: " in w]
    assert json_warning.endswith("duplicate key 'job_name': the last one is used (as LAVA does)")
    assert ": warning: line " in json_warning


def test_secrets_are_written_for_the_test_and_masked_everywhere(tmp_path: Path) -> None:
    job = JOBS / "secrets.yaml"
    shown = json.loads(lavamq_in(tmp_path, "validate", "--json", str(job)).stdout)
    assert shown[0]["plan"]["secrets"] == {"API_USER": "*****", "API_KEY": "*****"}
    ran = lavamq_in(tmp_path, "run", str(job), "--json", "--keep")
    ws = kept(ran)
    # the definition sourced the secrets file (mode 0600), then lava-test-raise ended it
    assert ran.returncode == 1
    bundle = json.loads(ran.stdout)
    got = cases(bundle)[("board", "0_uses-secrets")]
    assert got["secrets-sourced"] == got["secrets-file-private"] == "pass", got
    # and the job's environment:, exported as LAVA's overlay does (flattened, booleans 1/0)
    assert got["environment-exported"] == got["environment-flattened"] == "pass", got
    assert "key-*****" in got and got["docs"] == "pass"
    (node,) = bundle["nodes"]
    assert node["message"] == "lava-test-raise: the service refused *****", node
    # masked in the bundle, the job log (console lines and results) and the progress lines
    assert SECRET not in ran.stdout and "kernel-ci" not in ran.stdout
    assert SECRET not in ran.stderr
    logs = job_logs(ws)
    text = json.dumps(logs)
    assert "the key is *****" in text and SECRET not in text and "kernel-ci" not in text
    # the secrets file was the job's only while its tests ran
    left = [p for p in ws.rglob("secrets") if p.is_file()]
    assert left == [], left


def test_deploys_without_images_deploy_nothing_on_a_local_board(tmp_path: Path) -> None:
    ran = lavamq_in(tmp_path, "run", str(JOBS / "no-url-deploys.yaml"), "--json", "--keep")
    assert ran.returncode == 0, ran.stderr[-3000:]
    for role in ("container", "installed"):
        assert cases(json.loads(ran.stdout))[(role, "0_ran")] == {
            "multinode-sync-deployed": "pass",
            "ran-after-the-deploy": "pass",
        }
    said = [r["message"] for records in job_logs(kept(ran)).values() for r in records]
    nothing = "a local board is the dispatcher host's shell: nothing is deployed"
    for what in ("deploy to docker (image debian:bookworm)", "deploy to lxc", "deploy to overlay"):
        assert f"{what}: {nothing}, the test shell runs on the host" in said, said


def test_a_deploy_the_device_cannot_do_and_a_test_never_booted_are_refused(
    tmp_path: Path,
) -> None:
    job = JOBS / "invalid" / "unsupported-deploys.yaml"
    problems = [
        "actions[0].deploy: to: docker is not supported on device type qemu (role vm): a qemu "
        "board boots the job's own images: deploy them with 'to: tmpfs' and "
        "'images: {kernel: {url: ...}, ...}'",
        "actions[2].test: role board (nodes board #0, board #1) is never booted before this "
        "test: add a boot action for it before the test",
    ]
    checked = lavamq_in(tmp_path, "validate", str(job))
    assert checked.returncode == 1
    assert [f"{job}: {p}" for p in problems] == checked.stdout.splitlines()[1:]
    ran = lavamq_in(tmp_path, "run", str(job), "--keep")
    assert ran.returncode != 0 and all(p in ran.stderr for p in problems), ran.stderr
    # refused before anything started: no lab, no workspace
    assert "embedded lab" not in ran.stderr and "workspace kept" not in ran.stderr
    assert not list(tmp_path.glob("lavamq-run-*"))
