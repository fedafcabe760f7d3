"""``lavamq barrier``: run the MultiNode barrier service."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from coordinator.barrier import READY_LINE, BarrierService
from lavamq.config import load_settings

log = logging.getLogger(__name__)


@click.command("barrier")
@click.option("--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL).")
@click.option("--db", "db_url", help="Store URL (default: $LAVAMQ_DB_URL, SQLite).")
@click.option("--prefetch", default=500, show_default=True, help="Deliveries per transaction.")
def barrier(broker_url: str | None, db_url: str | None, prefetch: int) -> None:
    """Count lava-sync / lava-wait-all acknowledgements and release groups.

    Prints "lavamq barrier ready" once consuming; a second instance is a hot
    standby (the queue has a single active consumer). Stops on SIGTERM.
    """
    settings = load_settings(broker_url, db_url)
    service = BarrierService(settings.broker_url, settings.db_url, prefetch=prefetch)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        service.consumer.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    service.run(on_ready=lambda: click.echo(READY_LINE))
    click.echo("lavamq barrier stopped")


COMMANDS = [barrier]
