"""The REST API and /metrics on a store with jobs in it; fuzzed from its OpenAPI schema."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from coordinator.store import Store
from server.app import create_app
from server.lab import Lab, ServerSettings

T0 = 1_700_000_000.0
PLAN = {
    "job_name": "two nodes",
    "priority": 50,
    "subjobs": [
        {"role": "server", "index": 0, "device_type": "qemu", "tags": []},
        {"role": "client", "index": 0, "device_type": "qemu", "tags": []},
    ],
}
PRIVATE = "job_name: mine\nvisibility: personal\n"


def fill(db_url: str, log_dir: Path) -> None:
    store = Store(db_url)
    store.register_host(
        "lab1",
        [{"name": f"vm{i}", "device_type": "qemu", "tags": []} for i in (1, 2)],
        time.time(),
    )
    store.submit(PLAN, "job_name: two nodes\nvisibility: public\n", "a.yaml", "alice", T0)
    store.submit(PLAN, PRIVATE, "b.yaml", "alice", T0 + 1)
    store.submit(PLAN, "job_name: queued\n", "c.yaml", "bob", T0 + 2)
    started = store.start_groups({1: {1: "vm1", 2: "vm2"}}, T0 + 3, 60)
    assert started
    for sub in (1, 2):
        store.subjob_state(sub, "accepted", T0 + 4)
    store.subjob_state(1, "complete", T0 + 5)
    store.subjob_state(2, "incomplete", T0 + 6, error_type="job", message="boom")
    store.close()
    node = log_dir / "1" / "vm1"
    node.mkdir(parents=True)
    records = [{"time": "2026-12-03T10:00:00+00:00", "level": "target", "message": f"l{i}"}
               for i in range(30)]  # fmt: skip
    (node / "1-00000000.json").write_text(json.dumps({"records": records}))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    db_url = f"sqlite:///{tmp_path / 's.sqlite'}"
    fill(db_url, tmp_path / "logs")
    lab = Lab(ServerSettings("memory://", db_url, str(tmp_path / "logs")))
    yield lab
    lab.close()


@pytest.fixture
def client(lab: Lab) -> TestClient:
    return TestClient(create_app(lab))


def bearer(lab: Lab, name: str, admin: bool = False) -> dict[str, str]:
    lab.users.add_user(name, admin=admin)
    return {"Authorization": f"Bearer {lab.users.create_token(name)}"}


def test_jobs_pages_filters_and_visibility(client: TestClient, lab: Lab) -> None:
    anon = client.get("/api/v1/jobs").json()
    assert [j["id"] for j in anon["items"]] == [3, 1]  # job 2 is personal
    alice = bearer(lab, "alice")
    mine = client.get("/api/v1/jobs", headers=alice).json()
    assert [j["id"] for j in mine["items"]] == [3, 2, 1] and mine["total"] == 3
    page = client.get("/api/v1/jobs?offset=1&limit=1", headers=alice).json()
    assert [j["id"] for j in page["items"]] == [2]
    queued = client.get("/api/v1/jobs?state=queued", headers=alice).json()
    assert [j["id"] for j in queued["items"]] == [3, 2]
    assert client.get("/api/v1/jobs?submitter=bob").json()["items"][0]["id"] == 3
    assert client.get("/api/v1/jobs/2").status_code == 403
    assert client.get("/api/v1/jobs?state=waiting").status_code == 422
    assert client.get("/api/v1/jobs?limit=0").status_code == 422


def test_job_group_nodes_logs(client: TestClient) -> None:
    job = client.get("/api/v1/jobs/1").json()
    assert job["state"] == "incomplete" and job["group"].startswith("1-")
    nodes = {n["id"]: n for n in job["nodes"]}
    assert nodes["1.0"]["lava_health"] == "Complete" and nodes["1.0"]["host"] == "lab1"
    assert nodes["1.1"]["message"] == "boom" and nodes["1.1"]["lava_health"] == "Incomplete"
    assert client.get("/api/v1/groups/1").json()["nodes"] == job["nodes"]
    page = client.get("/api/v1/jobs/1/logs?node=0&offset=10&limit=5").json()
    assert [r["message"] for r in page["records"]] == ["l10", "l11", "l12", "l13", "l14"]
    assert page["next_offset"] == 15 and page["finished"] is True
    assert client.get("/api/v1/jobs/1/logs?node=0&offset=30").json()["records"] == []
    assert client.get("/api/v1/jobs/1/logs?node=5").status_code == 404
    missing = client.get("/api/v1/jobs/99")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not-found"
    assert client.get("/api/v1/jobs/1/definition").text.startswith("job_name: two nodes")


def test_devices_workers_and_tokens(client: TestClient, lab: Lab) -> None:
    devices = client.get("/api/v1/devices").json()
    assert [(d["name"], d["lava_state"], d["host"]) for d in devices] == [
        ("vm1", "Idle", "lab1"),
        ("vm2", "Idle", "lab1"),
    ]
    assert client.get("/api/v1/devices/nope").status_code == 404
    workers = client.get("/api/v1/workers").json()
    assert workers[0]["name"] == "lab1" and workers[0]["heartbeat_age"] >= 0
    assert client.get("/api/v1/me").json() == {"name": None, "is_admin": False}
    admin = bearer(lab, "root", admin=True)
    assert client.get("/api/v1/me", headers=admin).json() == {"name": "root", "is_admin": True}
    bad = client.get("/api/v1/me", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and bad.json()["error_type"] == "login-required"
    # submitting needs a token (before anything reaches the coordinator)
    refused = client.post("/api/v1/jobs", json={"definition": "job_name: x"})
    assert refused.status_code == 401
    assert client.post("/api/v1/jobs/1/cancel").status_code == 401


def test_metrics(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert 'lavamq_jobs{state="queued"} 2.0' in text
    assert 'lavamq_jobs{state="incomplete"} 1.0' in text
    assert 'lavamq_queue_depth{device_type="qemu"} 4.0' in text
    assert 'lavamq_devices{state="idle"} 2.0' in text
    assert 'lavamq_host_heartbeat_age_seconds{host="lab1"}' in text
    assert "lavamq_queue_oldest_seconds" in text
    assert "lavamq_sync_release_seconds_bucket" in text
    assert "lavamq_console_bytes_total" in text and "lavamq_sends_total" in text


def test_metrics_from_the_live_stream(lab: Lab) -> None:
    from server.metrics import Metrics

    metrics = Metrics(lab.reader)

    def batch(node: str, *records: tuple[str, str, str]) -> dict[str, object]:
        return {"job": "7", "node": node, "records": [
            {"time": t, "level": lvl, "message": m} for t, lvl, m in records
        ]}  # fmt: skip

    metrics.on_live("log-batch", batch("a", ("2026-12-03T10:00:00+00:00", "target", "x" * 99)))
    metrics.on_live("log-batch", batch(
        "a",
        ("2026-12-03T10:00:01+00:00", "target", "<LAVA_MULTI_NODE> <LAVA_SEND ready>"),
        ("2026-12-03T10:00:02+00:00", "target", "<LAVA_MULTI_NODE> <LAVA_SYNC done>"),
    ))  # fmt: skip
    metrics.on_live("log-batch", batch(
        "b",
        ("2026-12-03T10:00:04+00:00", "target", "<LAVA_MULTI_NODE> <LAVA_SYNC done>"),
        ("2026-12-03T10:00:04.250000+00:00", "input", "<LAVA_SYNC_COMPLETE>"),
    ))  # fmt: skip
    text = metrics.render().decode()
    assert "lavamq_sends_total 1.0" in text
    assert "lavamq_sync_release_seconds_count 1.0" in text
    assert 'lavamq_sync_release_seconds_bucket{le="0.25"} 1.0' in text
    assert 'lavamq_sync_release_seconds_bucket{le="0.1"} 0.0' in text
    console = next(
        line for line in text.splitlines() if line.startswith("lavamq_console_bytes_total")
    )
    assert float(console.split()[1]) > 99


def _fuzz_app() -> object:
    """The app on a filled store in a temporary directory (made when the module loads:
    schemathesis reads the schema while pytest collects)."""
    tmp = Path(tempfile.mkdtemp(prefix="lavamq-fuzz-"))
    atexit.register(shutil.rmtree, tmp, True)
    db_url = f"sqlite:///{tmp / 's.sqlite'}"
    fill(db_url, tmp / "logs")
    return create_app(Lab(ServerSettings("memory://", db_url, str(tmp / "logs"))))


_config = SchemathesisConfig()
# valid and invalid inputs both: an invalid one must be refused (negative_data_rejection)
_config.projects.default.generation.update(modes=list(GenerationMode))
schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_app(), config=_config)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_rest_api_fuzzed_from_its_schema(case: schemathesis.Case) -> None:
    """No 5xx, every answer as the schema says, and nothing the schema forbids accepted."""
    if case.method == "POST":
        # a submit that passed validation would wait for a coordinator: anonymous
        # ones are refused before that (401), which the fuzzer checks too
        case.headers.clear()
    case.call_and_validate()


def test_a_device_in_maintenance_is_not_scheduled() -> None:
    from coordinator.scheduler import DeviceView

    board = DeviceView(name="vm1", device_type="qemu", tags=frozenset())
    assert board.usable
    assert not DeviceView(
        name="vm1", device_type="qemu", tags=frozenset(), health="maintenance"
    ).usable
