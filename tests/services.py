"""Real services for integration tests: RabbitMQ vhosts and PostgreSQL databases.

Each test gets its own vhost / database, created and removed here. On a
laptop without the service a test skips; under CI (``CI=true``) a missing
service is a failure, never a skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

RABBIT_HOST = os.environ.get("LAVAMQ_TEST_RABBIT_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("LAVAMQ_TEST_RABBIT_PORT", "5672"))
RABBIT_MGMT = os.environ.get("LAVAMQ_TEST_RABBIT_MGMT", f"http://{RABBIT_HOST}:15672")
RABBIT_USER = os.environ.get("LAVAMQ_TEST_RABBIT_USER", "guest")
RABBIT_PASSWORD = os.environ.get("LAVAMQ_TEST_RABBIT_PASSWORD", "guest")
PG_DSN = os.environ.get("LAVAMQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_service(what: str) -> None:
    """Skip on a laptop, fail under CI."""
    if in_ci():
        pytest.fail(f"{what} is required under CI but is not available")
    pytest.skip(f"{what} not available")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def mgmt(method: str, path: str, body: Any = None, *, base: str = RABBIT_MGMT) -> Any:
    """Call the RabbitMQ management HTTP API; returns decoded JSON or None."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + "/api" + path, data=data, method=method)
    token = base64.b64encode(f"{RABBIT_USER}:{RABBIT_PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class RabbitVhost:
    """A throw-away vhost on the real broker."""

    def __init__(self) -> None:
        self.name = f"lavamq-test-{uuid.uuid4().hex[:10]}"
        mgmt("PUT", f"/vhosts/{quote(self.name)}", {})
        mgmt(
            "PUT",
            f"/permissions/{quote(self.name)}/{quote(RABBIT_USER)}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def url(self, user: str = RABBIT_USER, password: str = RABBIT_PASSWORD) -> str:
        return (
            f"amqp://{quote(user)}:{quote(password)}@{RABBIT_HOST}:{RABBIT_PORT}/{quote(self.name)}"
        )

    def queue(self, name: str) -> dict[str, Any]:
        return mgmt("GET", f"/queues/{quote(self.name)}/{quote(name)}")

    def delete(self) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            mgmt("DELETE", f"/vhosts/{quote(self.name)}")


def rabbit_available() -> bool:
    if not port_open(RABBIT_HOST, RABBIT_PORT):
        return False
    try:
        mgmt("GET", "/overview")
    except (OSError, urllib.error.URLError):
        return False
    return True


def new_pg_database() -> tuple[str, str]:
    """Create an empty database; returns (url, name)."""
    import psycopg2

    name = f"lavamq_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
    return f"{base}/{name}", name


def drop_pg_database(name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def pg_available() -> bool:
    if not port_open("127.0.0.1", 5432):
        return False
    try:
        import psycopg2

        psycopg2.connect(PG_DSN).close()
    except Exception:
        return False
    return True
