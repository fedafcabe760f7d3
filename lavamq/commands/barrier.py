"""``lavamq barrier``: run the MultiNode barrier service."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from coordinator.barrier import READY_LINE, STANDBY_DELAY, BarrierService
from lavamq.config import load_settings

log = logging.getLogger(__name__)


@click.command("barrier")
@click.option("--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL).")
@click.option("--db", "db_url", help="Store URL (default: $LAVAMQ_DB_URL, SQLite).")
@click.option("--prefetch", default=500, show_default=True, help="Deliveries per transaction.")
@click.option(
    "--prefer-shards",
    default="",
    help="Shards (0-based, comma-separated) to take at once; the others after "
    "--standby-delay, standing by (with $LAVAMQ_BARRIER_SHARDS > 1).",
)
@click.option(
    "--standby-delay",
    type=click.FloatRange(min=0),
    default=STANDBY_DELAY,
    show_default=True,
    help="Seconds before standing by for the shards not preferred (longer than the "
    "other barriers take to start, or one takes theirs first).",
)
def barrier(
    broker_url: str | None,
    db_url: str | None,
    prefetch: int,
    prefer_shards: str,
    standby_delay: float,
) -> None:
    """Count lava-sync / lava-wait-all acknowledgements and release groups.

    Prints "lavamq barrier ready" once consuming. Each shard's queue has a
    single active consumer: each group is counted by one barrier at a time,
    and the others stand by for it. Several barriers share the store
    (--db, PostgreSQL). Stops on SIGTERM.
    """
    settings = load_settings(broker_url, db_url)
    try:
        prefer = {int(k) for k in prefer_shards.split(",") if k.strip()} or None
    except ValueError:
        raise click.BadParameter(f"{prefer_shards!r}: shard numbers, e.g. 0,2") from None
    service = BarrierService(
        settings.broker_url,
        settings.db_url,
        prefetch=prefetch,
        prefer=prefer,
        standby_delay=standby_delay,
    )

    def on_term(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        service.consumer.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    service.run(on_ready=lambda: click.echo(READY_LINE))
    click.echo("lavamq barrier stopped")


COMMANDS = [barrier]
