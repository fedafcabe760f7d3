"""The XML-RPC edge: LAVA's auth answers, faults for bad calls (never an HTTP 5xx), ids, logs."""

from __future__ import annotations

import base64
import json
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError

from server import lava
from server.app import create_app
from server.errors import BadRequest
from server.lab import Lab, ServerSettings
from server.logs import LogIndex, lava_line
from server.users import Token, UserStore


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    settings = ServerSettings(
        broker_url="memory://", db_url=f"sqlite:///{tmp_path / 's.sqlite'}", log_dir=str(tmp_path)
    )
    lab = Lab(settings)
    yield lab
    lab.close()


@pytest.fixture
def client(lab: Lab) -> TestClient:
    return TestClient(create_app(lab))


def call(client: TestClient, body: bytes | str, auth: str | None = None) -> object:
    headers = {"Content-Type": "text/xml"}
    if auth is not None:
        headers["Authorization"] = auth
    resp = client.post("/RPC2", content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/xml; charset=utf-8"
    try:
        return xmlrpc.client.loads(resp.content)[0][0]
    except xmlrpc.client.Fault as fault:
        return fault


def request(method: str, *params: Any) -> str:
    return xmlrpc.client.dumps(params, method, allow_none=True)


def basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def test_version_whoami_and_tokens(client: TestClient, lab: Lab) -> None:
    assert call(client, request("system.version")) == "2026.07"
    assert call(client, request("system.whoami")) is None
    lab.users.add_user("alice")
    token = lab.users.create_token("alice")
    assert call(client, request("system.whoami"), basic("alice", token)) == "alice"
    # only a hash is stored
    with lab.users.sessions.begin() as s:
        digests = list(s.scalars(select(Token.digest)))
    assert digests and token not in digests[0] and len(digests[0]) == 64
    version = request("system.version")
    # a wrong token or user: HTTP 401 with WWW-Authenticate, as LAVA
    for auth in (basic("alice", "wrong"), basic("bob", token)):
        resp = client.post("/RPC2", content=version, headers={"Authorization": auth})
        assert resp.status_code == 401 and "Basic" in resp.headers["www-authenticate"]
    # another scheme or garbage: HTTP 400
    for auth in ("Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "x"):
        resp = client.post("/RPC2", content=version, headers={"Authorization": auth})
        assert resp.status_code == 400, auth


def test_a_removed_token_stops_working_at_once(client: TestClient, lab: Lab) -> None:
    lab.users.add_user("alice")
    token = lab.users.create_token("alice")
    whoami = request("system.whoami")
    assert call(client, whoami, basic("alice", token)) == "alice"
    with lab.users.sessions.begin() as s:
        s.execute(delete(Token))
    # nothing remembers a token: the next call is refused, as LAVA refuses it
    resp = client.post("/RPC2", content=whoami, headers={"Authorization": basic("alice", token)})
    assert resp.status_code == 401 and "Basic" in resp.headers["www-authenticate"]


def test_a_store_error_while_authenticating_is_a_fault(
    client: TestClient, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(token: str, name: str | None = None) -> None:
        raise OperationalError("SELECT", {}, Exception("the store is gone"))

    monkeypatch.setattr(lab, "identify", unreachable)
    fault = call(client, request("system.whoami"), basic("alice", "x" * 64))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == -32603
    assert "the store is gone" in fault.faultString and "x" * 64 not in fault.faultString


def test_rpc2_answered_ahead_of_the_routes(client: TestClient) -> None:
    # POST at /RPC2 and /RPC2/ is answered by RPC2Endpoint; GET shows the methods; a
    # method neither takes is a 405 naming POST, as the route gives it
    for path in ("/RPC2", "/RPC2/"):
        resp = client.post(path, content=request("system.version"))
        assert xmlrpc.client.loads(resp.content)[0][0] == "2026.07", path
        assert client.get(path).text.startswith("LAVA XML-RPC API")
    resp = client.put("/RPC2", content=request("system.version"))
    assert resp.status_code == 405 and "POST" in resp.headers["allow"]


@pytest.mark.parametrize(
    "body, code",
    [
        (b"<methodCall><methodName>system.version", -32700),
        (b"not xml at all", -32700),
        (b"<?xml version='1.0'?><methodCall><params/></methodCall>", -32600),
        (b"<methodCall><methodName>x</methodName><params><param><value><int>nan</int>"
         b"</value></param></params></methodCall>", -32600),
        (b"", -32600),
    ],
)  # fmt: skip
def test_bad_xml_is_a_fault(client: TestClient, body: bytes, code: int) -> None:
    fault = call(client, body)
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == code, fault


def test_unknown_method_wrong_arguments_and_types(client: TestClient) -> None:
    fault = call(client, request("scheduler.devices.set_dictionary", "x", ""))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == -32601
    fault = call(client, request("system.version", 1, 2))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == -32602
    for params in [({"a": 1},), ([1, 2],), (1.5,), (True,), ("x.y",), (None,)]:
        fault = call(client, request("scheduler.jobs.show", *params))
        assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 400, params
    fault = call(client, request("scheduler.jobs.show", "12"))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 404
    fault = call(client, request("scheduler.jobs.list", "WAITING"))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 400
    fault = call(client, request("scheduler.jobs.list", None, None, "zero"))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 400
    fault = call(client, request("scheduler.jobs.submit", "job: 1"))
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 401
    assert call(client, request("scheduler.jobs.list")) == []
    assert call(client, request("scheduler.devices.list", False)) == []


def test_huge_body_is_a_fault(client: TestClient) -> None:
    from server.xmlrpc import MAX_BODY

    body = request("scheduler.jobs.validate", "x" * (MAX_BODY + 10))
    fault = call(client, body)
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == -32600
    assert "over" in fault.faultString


def test_job_ids() -> None:
    assert lava.parse_job_id("12") == lava.LavaJobId(12)
    assert lava.parse_job_id("12.3") == lava.LavaJobId(12, 3)
    assert lava.parse_job_id(7).index == 0
    for bad in ("", "12.", "a", "-1", "1.2.3", True, None, 1.5):
        with pytest.raises(BadRequest):
            lava.parse_job_id(bad)
    assert lava.display_id(12, 0, 1) == 12
    assert lava.display_id(12, 1, 3) == "12.1"
    assert lava.node_state("queued", "queued") == ("Submitted", "Unknown")
    assert lava.node_state("running", "canceled") == ("Canceling", "Unknown")
    assert lava.node_state("complete", "canceled") == ("Finished", "Canceled")
    assert lava.node_state("complete", "canceled", ended_after_cancel=False) == (
        "Finished",
        "Complete",
    )
    assert lava.node_state("incomplete", "incomplete") == ("Finished", "Incomplete")


def test_log_lines_are_yaml_lavacli_reads(tmp_path: Path) -> None:
    nasty = 'a "quote" \\ back \x7f del \x85 nel \u2028 ls \x1b[31m <script>x</script> \U0001f600'
    line = lava_line(
        {"time": "2026-12-03T10:00:00.000001+00:00", "level": "target", "message": nasty}
    )
    assert yaml.safe_load(line) == [
        {"dt": "2026-12-03T10:00:00.000001+00:00", "lvl": "target", "msg": nasty}
    ]
    result = yaml.safe_load(
        lava_line({"time": "t", "level": "results", "message": "0_x/pwd: pass"})
    )
    assert result[0]["msg"] == {"definition": "0_x", "case": "pwd", "result": "pass"}
    assert (
        yaml.safe_load(lava_line({"time": "t", "level": "event", "message": "m"}))[0]["lvl"]
        == "info"
    )


def test_log_pages_by_line(tmp_path: Path) -> None:
    node = tmp_path / "5" / "board-01"
    node.mkdir(parents=True)
    n = 0
    for seq in range(4):
        records = [
            {"time": "t", "level": "target", "message": f"line {n + i}"} for i in range(seq + 3)
        ]
        n += len(records)
        (node / f"9-{seq:08d}.json").write_text(json.dumps({"records": records}))
    index = LogIndex(tmp_path)
    assert index.total(5, "board-01") == n == 18
    got = [r["message"] for r in index.records(5, "board-01", 4, 11)]
    assert got == [f"line {i}" for i in range(4, 11)]
    assert list(index.records(5, "board-01", 18)) == []
    text = b"".join(index.lava_chunks(5, "board-01", 16)).decode()
    assert [r["msg"] for r in yaml.safe_load(text)] == ["line 16", "line 17"]


def test_streamed_log_answer_is_what_dumps_gives() -> None:
    from server.lava_api import StreamedLog
    from server.xmlrpc import streamed

    data = bytes(range(256)) * 50
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    text = b"".join(streamed(StreamedLog(True, iter(chunks))))
    finished, binary = cast(tuple[bool, xmlrpc.client.Binary], xmlrpc.client.loads(text)[0][0])
    assert finished is True and binary.data == data


def test_user_store_names(tmp_path: Path) -> None:
    from schemas.errors import ConfigurationError

    users = UserStore(f"sqlite:///{tmp_path / 'u.sqlite'}")
    users.add_user("ci-bot", admin=True)
    with pytest.raises(ConfigurationError):
        users.add_user("ci-bot")
    with pytest.raises(ConfigurationError):
        users.add_user("bad name")
    with pytest.raises(ConfigurationError):
        users.create_token("nobody")
    token = users.create_token("ci-bot")
    who = users.authenticate(token)
    assert who is not None and who.name == "ci-bot" and who.is_admin
    assert users.authenticate(token + "x") is None
    # the models and revision 0006_users agree
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator.db import Base

    with users.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if "'users'" in repr(d) or "'tokens'" in repr(d)] == []
    users.close()


def test_health_names_what_is_unreachable(tmp_path: Path) -> None:
    settings = ServerSettings(
        broker_url="amqp://guest:guest@127.0.0.1:1//",  # nothing listens on port 1
        db_url=f"sqlite:///{tmp_path / 's.sqlite'}",
        log_dir=str(tmp_path),
    )
    lab = Lab(settings)
    try:
        resp = TestClient(create_app(lab)).get("/health")
        assert resp.status_code == 503
        body = resp.json()
        assert body["ok"] is False and body["store"] == "ok"
        assert body["broker"].startswith("unreachable")
    finally:
        lab.close()


def test_private_server_needs_a_login_to_read(tmp_path: Path) -> None:
    settings = ServerSettings(
        broker_url="memory://",
        db_url=f"sqlite:///{tmp_path / 's.sqlite'}",
        log_dir=str(tmp_path),
        anonymous_read=False,
    )
    lab = Lab(settings)
    try:
        client = TestClient(create_app(lab))
        for method in ("scheduler.jobs.list", "scheduler.devices.list", "scheduler.workers.list"):
            fault = call(client, request(method))
            assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 401, method
        assert client.get("/api/v1/jobs").status_code == 401
        lab.users.add_user("carol")
        token = lab.users.create_token("carol")
        assert call(client, request("scheduler.jobs.list"), basic("carol", token)) == []
        assert (
            client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).json()["items"]
            == []
        )
    finally:
        lab.close()
