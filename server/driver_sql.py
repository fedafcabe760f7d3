"""A hot read run as one DB-API cursor call: SQLAlchemy compiles it once, the driver runs it.

Every lavacli call reads one node (``jobs show``) and, with a token, the
token's holder. For these one-row reads SQLAlchemy Core's execution (an
execution context, a result object, events) costs several times what the
database itself does. A :class:`DriverStatement` is the same SQLAlchemy
statement compiled once for the engine's dialect and run on a cursor of a
connection from the engine's pool, with the column types' own conversions
(a JSON column read from SQLite is decoded, as SQLAlchemy does), and a driver
error raised as SQLAlchemy raises it (a lost connection leaves the pool).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, Select
from sqlalchemy.exc import DBAPIError

Processor = Callable[[Any], Any] | None


class DriverStatement:
    """``statement`` (a SELECT whose bound parameters are named) on ``engine``'s driver."""

    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        self._engine = engine
        dialect = self._dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        if any(b.expanding for b in compiled.binds.values()):
            raise ValueError("a DriverStatement takes no expanding (IN) parameters")
        self.sql = compiled.string
        #: the parameters the statement fixes itself (a LIMIT's 1), with the driver's form
        self._fixed = {n: b.effective_value for n, b in compiled.binds.items() if not b.required}
        self._binds: dict[str, Processor] = {
            n: b.type.dialect_impl(dialect).bind_processor(dialect)
            for n, b in compiled.binds.items()
        }
        self._order = list(compiled.positiontup or ()) if compiled.positional else None
        self._types = [c.type.dialect_impl(dialect) for c in statement.selected_columns]
        self._results: list[Processor] | None = None

    def _params(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        params = {**self._fixed, **values}
        for name, bind in self._binds.items():
            if bind is not None:
                params[name] = bind(params[name])
        if self._order is None:
            return params
        return tuple(params[name] for name in self._order)

    def _processors(self, description: Sequence[Sequence[Any]]) -> list[Processor]:
        # as SQLAlchemy, by the driver's type of each column (the same on every run)
        if self._results is None:
            self._results = [
                t.result_processor(self._dialect, d[1])
                for t, d in zip(self._types, description, strict=True)
            ]
        return self._results

    def rows(self, **values: Any) -> list[tuple[Any, ...]]:
        """The rows for these parameter values, each column converted as SQLAlchemy would."""
        params = self._params(values)
        dbapi_error = self._dialect.loaded_dbapi.Error
        fairy = None
        cursor = None
        try:
            fairy = self._engine.raw_connection()
            cursor = fairy.cursor()
            cursor.execute(self.sql, params)
            raw = cursor.fetchall()
            procs = self._processors(cursor.description)
        except dbapi_error as exc:
            lost = fairy is not None and self._dialect.is_disconnect(
                exc, fairy.dbapi_connection, cursor
            )
            if lost and fairy is not None:
                fairy.invalidate(exc)
            raise DBAPIError.instance(
                self.sql, params, exc, dbapi_error, connection_invalidated=lost,
                dialect=self._dialect,
            ) from exc  # fmt: skip
        finally:
            if cursor is not None:
                with contextlib.suppress(dbapi_error):  # a lost connection: the pool sees it
                    cursor.close()
            if fairy is not None:
                fairy.close()
        if not any(procs):
            return [tuple(r) for r in raw]
        return [tuple(v if p is None else p(v) for p, v in zip(procs, r, strict=True)) for r in raw]
