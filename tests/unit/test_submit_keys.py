"""Submissions carry an idempotency key: the same key (same submitter) is the same job.

A client whose submit got no answer cannot know whether the job was made; with
the key it asks (``lavamq jobs --key K``) or simply submits again. Before, a
retry made a second job. The real broker and twenty racing clients are in
tests/integration/test_submit_reconnect.py; here the coordinator runs on
``memory://`` in this process, with the CLI, the RPC client and the lab
server's REST API in front of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from lab import memory_coordinator

from coordinator.rpc import CoordinatorClient
from coordinator.service import CoordinatorService
from coordinator.store import Store
from lavamq.cli import main
from lavamq.server_client import ServerClient
from schemas.errors import JobError
from server.app import create_app
from server.lab import Lab, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed-simple-multinode.yaml"
OTHER = ROOT / "examples" / "seed-simple-multinode.json"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorService]:
    with memory_coordinator(tmp_path) as service:
        assert service.store is not None
        devices = [
            {"name": "panda-01", "device_type": "panda", "tags": ["usb-flash"]},
            {"name": "panda-02", "device_type": "panda", "tags": ["usb-flash"]},
            {"name": "beagle-01", "device_type": "beaglexm", "tags": ["audio-loopback"]},
        ]
        service.store.register_host("lab", devices, time.time())
        yield service


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, [*args, "--broker", "memory://"])


def test_a_resubmit_with_the_same_key_is_the_same_job(coordinator: CoordinatorService) -> None:
    first = cli("submit", str(SEED), "--key", "nightly-42", "--json")
    assert first.exit_code == 0, first.output
    again = cli("submit", str(SEED), "--key", "nightly-42")
    assert again.exit_code == 0, again.output
    job = json.loads(first.stdout)["job_id"]
    assert json.loads(first.stdout)["again"] is False
    assert again.stdout.startswith(f"job {job} was submitted before with this key: ")
    assert "key nightly-42)" in again.stdout
    listed = json.loads(cli("jobs", "--key", "nightly-42", "--json").stdout)
    assert [(j["id"], j["key"]) for j in listed] == [(job, "nightly-42")]
    # without --key every submit gets a key of its own: two submits, two jobs
    a = json.loads(cli("submit", str(SEED), "--json").stdout)
    b = json.loads(cli("submit", str(SEED), "--json").stdout)
    assert a["job_id"] != b["job_id"] and a["key"] != b["key"]
    assert coordinator.store is not None
    assert len(coordinator.store.jobs(limit=100)) == 3


def test_jobs_with_an_unknown_key_says_a_resubmit_is_safe(coordinator: CoordinatorService) -> None:
    told = cli("jobs", "--key", "never-sent")
    assert told.exit_code == 0, told.output
    assert told.stdout.startswith("no job has key never-sent: ")
    assert "submitting again with the same key is safe" in told.stdout
    bad = cli("jobs", "--key", "not a key")
    assert bad.exit_code == 2 and "--key" in bad.output


def test_a_key_is_one_submitters_and_one_job_files(coordinator: CoordinatorService) -> None:
    with CoordinatorClient("memory://") as client:
        alice = client.submit(SEED.read_text(), str(SEED), "alice", key="k1")
        bob = client.submit(SEED.read_text(), str(SEED), "bob", key="k1")
        assert alice["job_id"] != bob["job_id"]
        assert client.submit(SEED.read_text(), str(SEED), "alice", key="k1")["again"] is True
        with pytest.raises(JobError, match=f"key 'k1' is job {alice['job_id']}'s, submitted "):
            client.submit(OTHER.read_text(), str(OTHER), "alice", key="k1")
        assert sorted(j["submitter"] for j in client.jobs(key="k1")) == ["alice", "bob"]


def test_the_store_keeps_one_job_per_submitter_and_key(tmp_path: Path) -> None:
    """Even a second submit that got past the coordinator's look-up (revision 0009's
    unique key) stores no second job."""
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    try:
        plan = {"job_name": "x", "subjobs": []}
        first = store.submit(plan, "job_name: x", "x.yaml", "alice", 1.0, key="k")
        second = store.submit(plan, "job_name: x", "x.yaml", "alice", 2.0, key="k")
        assert second.job_id == first.job_id
        assert len(store.jobs()) == 1
    finally:
        store.close()


def test_the_lab_servers_rest_api_takes_the_key(
    coordinator: CoordinatorService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lavamq submit --url`` sends its key in the REST body; ``GET /jobs?key=`` finds it."""
    lab = Lab(ServerSettings("memory://", coordinator.settings.db_url, str(tmp_path / "logs")))
    try:
        http = TestClient(create_app(lab))
        lab.users.add_user("carol")
        token = lab.users.create_token("carol")

        def request(
            self: ServerClient, method: str, path: str, body: Any = None, **q: Any
        ) -> bytes:
            params = {k: v for k, v in q.items() if v is not None}
            answer = http.request(
                method, f"/api/v1{path}", json=body, params=params,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            assert answer.status_code < 300, answer.text
            return answer.content

        monkeypatch.setattr(ServerClient, "_request", request)
        first = CliRunner().invoke(
            main, ["submit", str(SEED), "--url", "http://lab", "--key", "r1"]
        )
        again = CliRunner().invoke(
            main, ["submit", str(SEED), "--url", "http://lab", "--key", "r1", "--json"]
        )
        assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
        receipt = json.loads(again.stdout)
        assert receipt["again"] is True and receipt["key"] == "r1"
        assert first.stdout.startswith(f"job {receipt['job_id']} submitted: ")
        listed = http.get("/api/v1/jobs", params={"key": "r1"}).json()["items"]
        assert [(j["id"], j["submitter"], j["key"]) for j in listed] == [
            (receipt["job_id"], "carol", "r1")
        ]
        shown = CliRunner().invoke(main, ["jobs", "--url", "http://lab", "--key", "r1", "--json"])
        assert [j["id"] for j in json.loads(shown.stdout)] == [receipt["job_id"]]
    finally:
        lab.close()
