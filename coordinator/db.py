"""Database plumbing shared by every table of the store.

One declarative ``Base`` for all models (the scheduler's store and the
barrier's counters), engines for SQLite (default) and PostgreSQL, and the
Alembic migration runner: the schema is only ever created by migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The one declarative base every table of the store and the barrier shares."""

    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout for concurrent services.

    ``pool_size``: connections kept open, for a process with that many threads reading
    at once (beyond the pool, each connection is opened and closed per use).
    """
    pool: dict[str, Any] = {} if pool_size is None else {"pool_size": pool_size}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after their transaction commits."""
    return sessionmaker(engine, expire_on_commit=False)


def open_database(
    url: str, *, run_migrations: bool = True, pool_size: int | None = None
) -> tuple[Engine, sessionmaker[Session]]:
    """The engine and sessions every holder of the store opens it with (migrated first,
    unless the caller knows another service does it)."""
    if run_migrations:
        migrate(url)
    engine = make_engine(url, pool_size=pool_size)
    return engine, session_factory(engine)


def alembic_config(url: str) -> Any:
    """An Alembic configuration for ``url`` pointing at our migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (all migration heads)."""
    from alembic import command

    command.upgrade(alembic_config(url), "heads")


def store_unavailable(exc: BaseException) -> bool:
    """A database error that passes: a lost or refused connection (a server
    restarting or failing over), SQLite busy past its timeout, a full pool."""
    if isinstance(exc, OperationalError | DisconnectionError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def store_error_text(exc: BaseException) -> str:
    """What a store error says (a DBAPIError's own text adds the statement and its values)."""
    return str(getattr(exc, "orig", None) or exc).strip()
