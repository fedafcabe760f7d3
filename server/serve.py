"""Running the app on uvicorn: one process, or ``--workers N`` sharing one socket.

Both print ``lavamq server ready on http://HOST:PORT`` with the port really
bound (``--listen 127.0.0.1:0`` picks a free one), after which requests are
answered. uvicorn handles SIGTERM and SIGINT: it stops accepting, finishes
the requests in flight, then returns.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from server.lab import ServerSettings

READY_LINE = "lavamq server ready on"


def announce(sockets: Iterable[socket.socket], say: Callable[[str], None] = print) -> None:
    """Print each listening socket's URL: a caller that asked for port 0 learns the port."""
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        say(f"{READY_LINE} http://{host}:{port}")
    sys.stdout.flush()


class ReadyServer(uvicorn.Server):
    """A uvicorn server that prints the ready line once it listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then print the ready line with each address."""
        await super().startup(sockets)
        announce(s for srv in self.servers for s in (srv.sockets or ()))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop as uvicorn does, without raising the handled signal again."""
        super().handle_exit(sig, frame)
        # uvicorn raises a caught SIGTERM again once it has stopped, which would kill
        # the process before ``lavamq server`` stops its embedded lab (boards powered
        # off): the signal was handled, the command returns and exits 0
        self._captured_signals.clear()


def serve(app: FastAPI, host: str, port: int, *, access_log: bool = True) -> None:
    """Run the application with uvicorn until stopped, announcing where it listens."""
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level="info")
    ReadyServer(config).run()


def serve_workers(
    settings: ServerSettings, host: str, port: int, workers: int, *, access_log: bool = True
) -> None:
    """N worker processes, each building its app from the environment (server.app)."""
    os.environ.update(
        {
            "LAVAMQ_BROKER_URL": settings.broker_url,
            "LAVAMQ_DB_URL": settings.db_url,
            "LAVAMQ_LOG_DIR": settings.log_dir,
            "LAVAMQ_ANONYMOUS_READ": "1" if settings.anonymous_read else "0",
        }
    )
    config = uvicorn.Config(
        "server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
    )
    sock = config.bind_socket()
    announce([sock])
    Multiprocess(config, sockets=[sock]).run()
