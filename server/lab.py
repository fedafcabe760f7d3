"""The server's one library: every XML-RPC method, REST handler and page calls this.

:class:`Lab` holds the store reader, the users, the log index and a small
pool of coordinator RPC clients (a :class:`CoordinatorClient` holds one broker
connection and is not shared between threads). Writes go through the
coordinator's RPC, like ``lavamq submit``; reads come from the store.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from broker_config.broker import connection_for
from coordinator.aggregate import ResultsAggregator
from coordinator.rpc import CoordinatorClient
from coordinator.store import Store
from schemas.errors import InfrastructureError
from server import lava
from server.errors import LoginRequired, NotFound, PermissionDenied
from server.logs import LogIndex
from server.node_rows import NodeRow
from server.queries import LabReader
from server.users import ANONYMOUS, Identity, UserStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: threads for the XML-RPC calls' blocking work (store reads, coordinator RPC): the
#: store's connection pool keeps as many connections open, so no call sets one up
#: (anyio's default of 40 threads outgrew the pool: a connection opened per call)
CALL_THREADS = 16


#: the LAVA version lavacli is told (it picks call forms by it; see docs/server.md)
LAVA_VERSION = "2026.07"


@dataclass(frozen=True)
class ServerSettings:
    """How the web server reaches the lab: broker, store, log directory and who may read."""

    broker_url: str
    db_url: str
    log_dir: str
    #: anonymous callers may read public jobs (LAVA's default); False: log in to read
    anonymous_read: bool = True
    rpc_timeout: float = 30.0


class Lab:
    """The lab as the server sees it; thread-safe (handlers run in a thread pool)."""

    def __init__(self, settings: ServerSettings, *, run_migrations: bool = True) -> None:
        self.settings = settings
        self.reader = LabReader(
            settings.db_url, run_migrations=run_migrations, pool_size=CALL_THREADS
        )
        self.users = UserStore(settings.db_url, run_migrations=False, pool_size=CALL_THREADS)
        self.logs = LogIndex(settings.log_dir)
        # the coordinator's own bundle builder, reading the same store (it writes nothing)
        self._store = Store(settings.db_url, run_migrations=False)
        self.aggregator = ResultsAggregator(self._store)
        self._clients: queue.LifoQueue[CoordinatorClient] = queue.LifoQueue()
        self._threads = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="lavamq-call")

    async def in_thread(self, fun: Callable[..., T], *args: Any) -> T:
        """``fun(*args)`` in one of the lab's :data:`CALL_THREADS` threads.

        A plain executor rather than anyio's ``to_thread``: its capacity limiter and
        cancel scope cost about a tenth of a ``jobs show``'s CPU. As with anyio's, a
        call whose request is abandoned runs to its end in its thread.
        """
        return await asyncio.get_running_loop().run_in_executor(self._threads, fun, *args)

    def close(self) -> None:
        """Close the coordinator clients and the store connections."""
        self._threads.shutdown(wait=True)
        while not self._clients.empty():
            self._clients.get_nowait().close()
        self.reader.close()
        self.users.close()
        self._store.close()

    # --- the coordinator --------------------------------------------------

    @contextmanager
    def _client(self) -> Iterator[CoordinatorClient]:
        try:
            client = self._clients.get_nowait()
        except queue.Empty:
            client = CoordinatorClient(self.settings.broker_url, timeout=self.settings.rpc_timeout)
        try:
            yield client
        except InfrastructureError:
            client.close()  # its connection may be broken: do not hand it on
            raise
        self._clients.put(client)

    def rpc(self, call: Callable[[CoordinatorClient], T]) -> T:
        """Run ``call`` with a pooled coordinator client (writes go through the coordinator)."""
        with self._client() as client:
            return call(client)

    def health(self) -> dict[str, str]:
        """``{"broker": "ok"|error, "store": "ok"|error}``."""
        out = {}
        try:
            conn = connection_for(self.settings.broker_url, connect_timeout=3.0)
            try:
                conn.ensure_connection(max_retries=1)
            finally:
                conn.release()
            out["broker"] = "ok"
        except Exception as exc:
            out["broker"] = f"unreachable: {exc}"
        try:
            self.reader.ping()
            out["store"] = "ok"
        except Exception as exc:
            out["store"] = f"unreachable: {exc}"
        return out

    # --- who may do what --------------------------------------------------

    def identify(self, token: str, name: str | None = None) -> Identity | None:
        """The user a token belongs to (and ``name``, when given, must match), or None."""
        return self.users.authenticate(token, name)

    def check_read(self, who: Identity) -> None:
        """Refuse an anonymous reader when the lab asks readers to log in."""
        if who.anonymous and not self.settings.anonymous_read:
            raise LoginRequired("Authentication with user and token required for this API.")

    def visible_node(self, who: Identity, job: lava.LavaJobId) -> NodeRow:
        """The node ``job`` names, if ``who`` may see it (else PermissionDenied)."""
        self.check_read(who)
        row = self.reader.node(job)
        if not self.reader.can_view(row, who, self.settings.anonymous_read):
            raise PermissionDenied(f"Job '{_shown(job)}' not available to user '{_user(who)}'.")
        return row

    def visible_nodes(self, who: Identity, job_id: int) -> list[NodeRow]:
        """Every node of a job ``who`` may see."""
        self.visible_node(who, lava.LavaJobId(job_id))
        return self.reader.job_nodes(job_id)

    # --- jobs -------------------------------------------------------------

    def submit(
        self, who: Identity, definition: str, source: str = "server", key: str | None = None
    ) -> dict[str, Any]:
        """Submit as ``who`` (a login is needed); the coordinator's receipt. ``key``: the
        submission's idempotency key (``CoordinatorClient.submit``), scoped to ``who``."""
        if who.anonymous:
            raise LoginRequired("Authentication with user and token required for this API.")
        assert who.name is not None
        name = who.name
        return self.rpc(lambda c: c.submit(definition, source=source, submitter=name, key=key))

    def cancel(self, who: Identity, job: lava.LavaJobId, reason: str | None = None) -> None:
        """Cancel the whole group: the submitter cancels their own jobs, an admin any."""
        if who.anonymous:
            raise LoginRequired("Authentication with user and token required for this API.")
        row = self.visible_node(who, job)
        if not who.is_admin and row.submitter != who.name:
            raise PermissionDenied("Permission denied.")
        why = reason or f"canceled by {who.name}"
        self.rpc(lambda c: c.cancel(job.job_id, why))

    def results_bundle(self, who: Identity, job_id: int) -> dict[str, Any]:
        """The group's result bundle (coordinator/aggregate.py), read from the store."""
        self.visible_node(who, lava.LavaJobId(job_id))
        return self.aggregator.bundle(job_id)

    # --- devices ----------------------------------------------------------

    def device(self, name: str) -> dict[str, Any]:
        """One device by name (NotFound)."""
        return self.reader.device(name)

    def host(self, name: str) -> dict[str, Any]:
        """One dispatcher host by name (NotFound)."""
        return self.reader.host(name)


def _shown(job: lava.LavaJobId) -> str:
    return str(job.job_id) if job.node is None else f"{job.job_id}.{job.node}"


def _user(who: Identity) -> str:
    return who.name or "AnonymousUser"


__all__ = ["ANONYMOUS", "LAVA_VERSION", "Lab", "NotFound", "ServerSettings"]
