"""``lavamq server``, ``lavamq user add``, ``lavamq token create``: the lab's HTTP face.

``lavamq server`` serves LAVA's XML-RPC (``/RPC2``, for lavacli), the REST
API, ``/metrics`` and the web view on one uvicorn. It joins a lab on
RabbitMQ (``--broker``, ``--db``, ``--log-dir`` as the other services), or
with ``--embedded`` runs a whole lab in its own process on ``memory://``.
Users and tokens live in the store (``--db``): make them before or while the
server runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from lavamq.config import load_settings
from schemas.errors import ConfigurationError

log = logging.getLogger(__name__)

db_option = click.option("--db", "db_url", help="Store URL (default: $LAVAMQ_DB_URL, SQLite).")


def parse_listen(listen: str) -> tuple[str, int]:
    """``--listen HOST:PORT`` as (host, port), refusing anything else with an example."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigurationError(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:8000")
    return host.strip("[]"), int(port)


def log_dir_of(value: str | None) -> str:
    """The job log directory the server reads: the option, ``LAVAMQ_LOG_DIR``, or the default."""
    from lavamq.commands.logs import DEFAULT_DIR

    return value or os.environ.get("LAVAMQ_LOG_DIR") or DEFAULT_DIR


@click.command("server")
@click.option("--listen", default="127.0.0.1:8000", show_default=True, help="HOST:PORT.")
@click.option("--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL).")
@db_option
@click.option("--log-dir", help="The job log store's directory (env LAVAMQ_LOG_DIR).")
@click.option("--embedded", is_flag=True, help="Run a whole lab in this process (memory://).")
@click.option(
    "--board",
    "boards",
    multiple=True,
    help="With --embedded: local boards TYPE[:COUNT[:TAG,TAG]] (repeatable).",
)
@click.option(
    "--device-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --embedded: a host TOML (device dictionary) instead of local boards.",
)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes.")
@click.option(
    "--private/--public-read",
    "private",
    default=False,
    help="Anonymous callers may not read anything (default: they read public jobs).",
)
@click.option("--no-access-log", is_flag=True, help="Do not log each request.")
def server(
    listen: str,
    broker_url: str | None,
    db_url: str | None,
    log_dir: str | None,
    embedded: bool,
    boards: tuple[str, ...],
    device_config: Path | None,
    workers: int,
    private: bool,
    no_access_log: bool,
) -> None:
    """Serve lavacli (XML-RPC at /RPC2), the REST API (/api/v1), /metrics and the web view.

    Prints "lavamq server ready on http://HOST:PORT" once it listens; stops
    gracefully on SIGTERM or Ctrl-C (requests in flight are finished).
    """
    from server.app import create_app
    from server.lab import Lab, ServerSettings
    from server.serve import serve, serve_workers

    host, port = parse_listen(listen)
    settings = load_settings(broker_url, db_url)
    logs = log_dir_of(log_dir)
    if workers < 1:
        raise ConfigurationError("--workers must be at least 1")
    if embedded and workers > 1:
        raise ConfigurationError(
            "--embedded runs the lab on memory:// inside one process: it cannot use --workers"
        )
    if (boards or device_config) and not embedded:
        raise ConfigurationError("--board and --device-config need --embedded")
    lab_process = None
    broker = settings.broker_url
    if embedded:
        from lavamq.serverlab import DEFAULT_BOARDS, ServerLab
        from schemas.device import load_host_config

        config = load_host_config(device_config) if device_config else None
        lab_process = ServerLab(
            settings.db_url, logs, boards=boards or DEFAULT_BOARDS, host_config=config
        ).start()
        broker = lab_process.broker_url
        click.echo("embedded lab: boards " + ", ".join(lab_process.boards()))
    server_settings = ServerSettings(
        broker_url=broker, db_url=settings.db_url, log_dir=logs, anonymous_read=not private
    )
    try:
        if workers == 1:
            lab = Lab(server_settings)
            try:
                serve(create_app(lab, live=True), host, port, access_log=not no_access_log)
            finally:
                lab.close()
        else:
            Lab(server_settings).close()  # the store's migrations, once, before the workers
            serve_workers(server_settings, host, port, workers, access_log=not no_access_log)
    finally:
        if lab_process is not None:
            lab_process.stop()


@click.group("user")
def user() -> None:
    """Users of the lab server (lavacli, REST, web)."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May cancel any job and manage devices.")
@db_option
def user_add(name: str, admin: bool, db_url: str | None) -> None:
    """Add a user; then give it a token with `lavamq token create NAME`."""
    from server.users import UserStore

    store = UserStore(load_settings(db_url=db_url).db_url)
    try:
        store.add_user(name, admin=admin)
    finally:
        store.close()
    click.echo(f"user {name} added" + (" (admin)" if admin else ""))


@user.command("list")
@db_option
def user_list(db_url: str | None) -> None:
    """List users."""
    from server.users import UserStore

    store = UserStore(load_settings(db_url=db_url).db_url)
    try:
        for who in store.users():
            click.echo(f"{who.name}{' (admin)' if who.is_admin else ''}")
    finally:
        store.close()


@click.group("token")
def token() -> None:
    """API tokens of the lab server's users."""


@token.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the token is for.")
@db_option
def token_create(name: str, description: str, db_url: str | None) -> None:
    """Create a token for user NAME and print it once, as the last line (only its hash is kept)."""
    from server.users import UserStore

    store = UserStore(load_settings(db_url=db_url).db_url)
    try:
        secret = store.create_token(name, description)
    finally:
        store.close()
    click.echo(f"token for {name} (shown only now; use it with lavacli --token):")
    click.echo(secret)


COMMANDS = [server, user, token]
