"""The server's hot reads on the driver's cursor give what SQLAlchemy gives, on both stores."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from coordinator.store import Device, DeviceType, Group, Host, Job, Store, SubJob
from server import lava, node_rows
from server.driver_sql import DriverStatement
from server.queries import LabReader
from server.users import _HOLDER, UserStore, token_digest

pytestmark = pytest.mark.integration


def _fill(db_url: str) -> None:
    """Two jobs: a two-node one on a device of a host (tags, times), a queued single node."""
    store = Store(db_url)
    now = time.time()
    done = {"start_time": now, "end_time": now}
    tables: list[tuple[Any, list[dict[str, Any]]]] = [
        (Host, [{"id": 1, "name": "lab1", "state": "online", "last_heartbeat": now}]),
        (DeviceType, [{"id": 1, "name": "qemu"}]),
        (Device, [{"id": 1, "name": "vm1", "device_type_id": 1, "tags": ["kvm"],
                   "host_id": 1, "state": "idle", "health": "good"}]),
        (Job, [{"id": j, "job_name": f"job {j}", "submitter": "alice", "source": "t.yaml",
                "definition": "job_name: t\nvisibility: personal\n", "plan": {},
                "state": state, "priority": 50, "submit_time": now,
                **(done if state == "complete" else {"start_time": None, "end_time": None})}
               for j, state in ((1, "complete"), (2, "queued"))]),
        (Group, [{"id": j, "job_id": j, "name": f"{j}-t", "state": "ended"} for j in (1, 2)]),
    ]  # fmt: skip
    with store.session() as s:
        for table, rows in tables:
            s.execute(insert(table), rows)
        base = {"role_index": 0, "device_type": "qemu", "is_slave": False, "essential": False,
                "assigned_at": None, "accepted_at": None, "ended_at": None, "error_type": None,
                "message": None, "tags": [], "device": None}  # fmt: skip
        nodes = [
            {"id": 1, "job_id": 1, "role": "server", "tags": ["kvm", "big"], "device": "vm1",
             "state": "complete", "assigned_at": now, "accepted_at": now, "ended_at": now},
            {"id": 2, "job_id": 1, "role": "client", "state": "incomplete",
             "error_type": "job", "message": "it \u00e9chou\u00e9"},
            {"id": 3, "job_id": 2, "role": "node", "state": "queued"},
        ]  # fmt: skip
        s.execute(insert(SubJob), [{**base, "group_id": n["job_id"], **n} for n in nodes])
    store.close()


def test_node_rows_as_sqlalchemy_reads_them(db_url: str) -> None:
    _fill(db_url)
    reader = LabReader(db_url, run_migrations=False, pool_size=2)
    try:
        statement = DriverStatement(reader.engine, node_rows.NODE)
        for job_id, index in ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0)):
            with reader.engine.connect() as conn:
                expected = [tuple(r) for r in conn.execute(node_rows.NODE, {
                    "job_id": job_id, "index": index})]  # fmt: skip
            got = statement.rows(job_id=job_id, index=index)
            assert got == expected, (job_id, index)
            assert [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in expected]
        first = statement.rows(job_id=1, index=0)[0]
        assert first[5] == ["kvm", "big"]  # a JSON column, decoded
        with_definition = DriverStatement(reader.engine, node_rows.NODE_WITH_DEFINITION)
        assert with_definition.rows(job_id=1, index=0)[0] == (
            *first,
            "job_name: t\nvisibility: personal\n",
        )
        # the reader's node is the same either way
        node = reader.node(lava.parse_job_id("1.1"))
        assert (node.role, node.index, node.nodes, node.message) == ("client", 1, 2, "it échoué")
        assert node.visibility == "personal" and node.host is None
        # read with its definition the first time, then with the visibility remembered
        assert reader.visibilities.cached(1) == "personal"
        assert reader.node(lava.parse_job_id("1.1")) == node
    finally:
        reader.close()


def test_token_holder_and_driver_errors(db_url: str) -> None:
    users = UserStore(db_url)
    try:
        users.add_user("alice", admin=True)
        token = users.create_token("alice")
        holder = DriverStatement(users.engine, _HOLDER)
        assert holder.rows(digest=token_digest(token)) == [("alice", True, token_digest(token))]
        assert holder.rows(digest=token_digest("nope")) == []
        # a driver error comes out as SQLAlchemy's, naming the statement
        missing = DriverStatement(users.engine, select(text("x")).select_from(text("no_table")))
        with pytest.raises(DBAPIError, match="no_table"):
            missing.rows()
        assert holder.rows(digest=token_digest(token))  # the pool still serves
    finally:
        users.close()
