"""``lavamq dispatcher --config HOST.toml``: the per-host daemon."""

from __future__ import annotations

import signal
from typing import Any

import click

COMMANDS: list[click.Command] = []


@click.command("dispatcher")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The host's TOML config: [host] and its [[device]] dictionary.",
)
@click.option("--broker", "broker_url", default=None, help="Broker URL (overrides the config).")
@click.option("--workdir", default=None, help="Work directory (overrides the config).")
def dispatcher_command(config_path: str, broker_url: str | None, workdir: str | None) -> None:
    """Run this host's dispatcher: register its devices and run their sub-jobs."""
    from dispatcher.daemon import Dispatcher
    from schemas.device import load_host_config

    config = load_host_config(config_path)
    daemon = Dispatcher(config, broker_url=broker_url, workdir=workdir)

    def on_signal(_signum: int, _frame: Any) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ready() -> None:
        click.echo(f"lavamq dispatcher {daemon.host} ready", err=False)

    daemon.run(on_ready=ready)
    click.echo(f"lavamq dispatcher {daemon.host} stopped")


COMMANDS.append(dispatcher_command)
