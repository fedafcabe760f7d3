"""Shared fixtures: real-service vhosts and databases, store URLs on both back-ends, and a
directory local boards see too."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from barrier_lab import BarrierLab
from boards import shared_with_boards
from lab import MEMORY_AND_RABBIT, broker_url_for

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


@pytest.fixture(params=MEMORY_AND_RABBIT)
def barrier_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BarrierLab]:
    """The barrier harness on memory:// and on the real RabbitMQ, its store a fresh SQLite."""
    lab = BarrierLab(broker_url_for(request), f"sqlite:///{tmp_path / 'barrier.sqlite'}")
    try:
        yield lab
    finally:
        lab.close()


TESTS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every collected test is looked at
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests where they belong: a file in tests/integration has a test on a real
    service (marked ``integration``); a test in tests/unit marked ``integration`` is
    the real-service twin of one that runs on ``memory://`` (``lab.MEMORY_AND_RABBIT``)."""
    real: dict[Path, bool] = {}
    unit_twins: dict[tuple[Path, str], list[bool]] = {}
    for item in items:
        marked = item.get_closest_marker("integration") is not None
        if item.path.parent == TESTS / "integration":
            real[item.path] = real.get(item.path, False) or marked
        elif item.path.parent == TESTS / "unit" and isinstance(item, pytest.Function):
            unit_twins.setdefault((item.path, item.originalname), []).append(marked)
    misplaced = [str(p.relative_to(TESTS)) for p, any_real in real.items() if not any_real]
    misplaced += [
        f"{p.relative_to(TESTS)}::{name}"
        for (p, name), marks in unit_twins.items()
        if all(marks) and marks
    ]
    if misplaced:
        raise pytest.UsageError(
            "tests on memory:// or no service belong in tests/unit, tests needing a real "
            "service only in tests/integration: " + ", ".join(sorted(misplaced))
        )


@pytest.fixture
def board_shared() -> Iterator[Path]:
    """A directory both the test and its local boards see (gates, markers): a board in a
    private root has its own /tmp, so tmp_path is not visible to it."""
    with shared_with_boards() as path:
        yield path
