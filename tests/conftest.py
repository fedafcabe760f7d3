"""Shared fixtures: real-service vhosts and databases, and store URLs on both back-ends."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import services


@pytest.fixture
def rabbit_vhost() -> Iterator[services.RabbitVhost]:
    """A fresh vhost on the real RabbitMQ, deleted afterwards."""
    if not services.rabbit_available():
        services.missing_service("RabbitMQ (127.0.0.1:5672 with the management plugin)")
    vhost = services.RabbitVhost()
    try:
        yield vhost
    finally:
        vhost.delete()


@pytest.fixture
def rabbit_url(rabbit_vhost: services.RabbitVhost) -> str:
    return rabbit_vhost.url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database URL, dropped afterwards."""
    if not services.pg_available():
        services.missing_service("PostgreSQL (127.0.0.1:5432)")
    url, name = services.new_pg_database()
    try:
        yield url
    finally:
        services.drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lavamq.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lavamq.sqlite'}"
        return
    if not services.pg_available():
        services.missing_service("PostgreSQL (127.0.0.1:5432)")
    url, name = services.new_pg_database()
    try:
        yield url
    finally:
        services.drop_pg_database(name)
