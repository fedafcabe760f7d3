"""``lavamq broker ...``: prepare a RabbitMQ broker for lavamq."""

from __future__ import annotations

import click

from broker_config import topology
from broker_config.broker import Broker, is_amqp_url
from broker_config.declare import (
    ManagementAPI,
    apply_policies,
    declare_topology,
    sweep_stale_group_exchanges,
)
from lavamq.config import load_settings


@click.group("broker")
def broker() -> None:
    """Prepare and inspect the RabbitMQ broker."""


@broker.command("setup")
@click.option("--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL).")
@click.option(
    "--management-url",
    help="Management API base URL (default: http://<broker host>:15672, broker credentials).",
)
@click.option(
    "--group-expiry",
    default=topology.DEFAULT_GROUP_EXPIRY_MS // 1000,
    show_default=True,
    help="Seconds after which an unused lava.group.* queue is deleted.",
)
@click.option("--no-policies", is_flag=True, help="Only declare exchanges and queues.")
def setup(
    broker_url: str | None, management_url: str | None, group_expiry: int, no_policies: bool
) -> None:
    """Declare lavamq's exchanges, queues and policies (idempotent)."""
    settings = load_settings(broker_url=broker_url)
    with Broker(settings.broker_url) as conn:
        declare_topology(conn)
    click.echo(
        f"declared {len(topology.static_exchanges())} exchanges and "
        f"{len(topology.static_queues())} queues"
    )
    if no_policies or not is_amqp_url(settings.broker_url):
        return
    api = ManagementAPI.from_broker_url(settings.broker_url, management_url)
    names = apply_policies(api, group_expiry * 1000)
    click.echo(f"applied policies: {', '.join(names)}")
    stale = sweep_stale_group_exchanges(api)
    if stale:
        click.echo(f"deleted {len(stale)} stale group exchanges: {', '.join(stale)}")


COMMANDS = [broker]
