# What the test suite calls of psycopg2 (creating and dropping test databases).
from collections.abc import Sequence
from types import TracebackType
from typing import Any

class cursor:
    def execute(self, query: str, vars: Sequence[Any] | None = ...) -> None: ...
    def __enter__(self) -> cursor: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class connection:
    autocommit: bool
    def cursor(self) -> cursor: ...
    def close(self) -> None: ...

def connect(dsn: str) -> connection: ...
