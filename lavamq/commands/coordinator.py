"""``lavamq coordinator``: the lab's coordinator service (submit RPC, scheduler, registration)."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from coordinator.scheduler import DEFAULT_STARVATION_SECONDS
from coordinator.service import READY_LINE, CoordinatorService, CoordinatorSettings
from lavamq.config import load_settings

log = logging.getLogger(__name__)


@click.command("coordinator")
@click.option("--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL).")
@click.option("--db", "db_url", help="Store URL (default: $LAVAMQ_DB_URL, SQLite).")
@click.option(
    "--join-timeout",
    type=float,
    default=90.0,
    show_default=True,
    help="Seconds for every node of a started group to be taken by its dispatcher.",
)
@click.option(
    "--heartbeat-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds without a heartbeat before a host's devices go offline.",
)
@click.option(
    "--schedule-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between scheduling passes when nothing happens.",
)
@click.option(
    "--starvation-after",
    type=float,
    default=DEFAULT_STARVATION_SECONDS,
    show_default=True,
    help="Seconds a waiting group waits before later groups may not take its devices.",
)
def coordinator(
    broker_url: str | None,
    db_url: str | None,
    join_timeout: float,
    heartbeat_timeout: float,
    schedule_interval: float,
    starvation_after: float,
) -> None:
    """Accept jobs, schedule groups on devices, track hosts and sub-jobs.

    Runs the store's migrations, declares the broker topology, prints
    "lavamq coordinator ready" once consuming, and stops on SIGTERM.
    """
    settings = load_settings(broker_url, db_url)
    service = CoordinatorService(
        CoordinatorSettings(
            broker_url=settings.broker_url,
            db_url=settings.db_url,
            join_timeout=join_timeout,
            heartbeat_timeout=heartbeat_timeout,
            schedule_interval=schedule_interval,
            starvation_seconds=starvation_after,
        )
    )

    def on_term(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        service.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    service.run(on_ready=lambda: click.echo(READY_LINE))
    click.echo("lavamq coordinator stopped")


COMMANDS = [coordinator]
