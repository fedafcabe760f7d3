"""``lavamq broker add-host / add-service / remove-host``: one confined broker user each.

Registered on the ``broker`` group of ``lavamq/commands/broker.py``.
"""

from __future__ import annotations

import click

from broker_config import identity, permissions, topology
from broker_config.broker import Broker
from broker_config.declare import ManagementAPI
from lavamq.commands.broker import broker
from lavamq.config import load_settings

_broker_option = click.option(
    "--broker", "broker_url", help="Admin broker URL (default: $LAVAMQ_BROKER_URL)."
)
_mgmt_option = click.option(
    "--management-url", help="Management API base URL (default: http://<broker host>:15672)."
)
_password_option = click.option(
    "--password",
    envvar="LAVAMQ_NEW_USER_PASSWORD",
    help="Password of the new user ($LAVAMQ_NEW_USER_PASSWORD); generated and shown if not given.",
)


def _api(broker_url: str | None, management_url: str | None) -> tuple[str, ManagementAPI]:
    settings = load_settings(broker_url=broker_url)
    return settings.broker_url, ManagementAPI.from_broker_url(settings.broker_url, management_url)


def _show(perms: permissions.UserPermissions, password: str, generated: bool) -> None:
    click.echo(f"user {perms.user}")
    click.echo(f"  configure {perms.configure}")
    click.echo(f"  write     {perms.write}")
    click.echo(f"  read      {perms.read}")
    for topic in perms.topics:
        click.echo(f"  topic {topic.exchange}: write {topic.write}")
    if generated:
        click.echo(f"password {password}  (shown once: put it in the host's broker URL)")


@broker.command("add-host")
@click.argument("name")
@click.option("--device", "devices", multiple=True, help="A device this host owns (repeat).")
@_password_option
@_broker_option
@_mgmt_option
def add_host(
    name: str,
    devices: tuple[str, ...],
    password: str | None,
    broker_url: str | None,
    management_url: str | None,
) -> None:
    """Create (or update) the broker user of dispatcher host NAME.

    Its permissions reach only its own devices' queues and the exchanges a
    dispatcher publishes to. The device queues are declared here, with the
    admin's rights, so the host itself needs no configure permission. Run it
    again with the full device list when the host's devices change.
    """
    url, api = _api(broker_url, management_url)
    perms = permissions.host_permissions(name, devices)
    with Broker(url) as admin:
        admin.declare(topology.device_exchange(), topology.dead_exchange(), topology.dead_queue())
        for device in devices:
            admin.declare(topology.device_queue(device))
    generated = not password
    password = password or permissions.generate_password()
    permissions.apply_user(api, perms, password)
    _show(perms, password, generated)
    click.echo(f"declared {len(devices)} device queues for host {name}")


@broker.command("add-service")
@click.argument("service", type=click.Choice(["coordinator", "barrier"]))
@click.option("--user", help="User name (default: lavamq-coordinator / lavamq-barrier).")
@_password_option
@_broker_option
@_mgmt_option
def add_service(
    service: str,
    user: str | None,
    password: str | None,
    broker_url: str | None,
    management_url: str | None,
) -> None:
    """Create (or update) the broker user of the coordinator or the barrier service."""
    _, api = _api(broker_url, management_url)
    if service == "coordinator":
        perms = permissions.coordinator_permissions(user or identity.COORDINATOR_USER)
    else:
        perms = permissions.barrier_permissions(user or identity.BARRIER_USER)
    if identity.sender_of(perms.user).role != service:
        raise click.BadParameter(
            f"a {service} user's name must start with lavamq-{service}", param_hint="--user"
        )
    generated = not password
    password = password or permissions.generate_password()
    permissions.apply_user(api, perms, password)
    _show(perms, password, generated)


@broker.command("remove-host")
@click.argument("name")
@_broker_option
@_mgmt_option
def remove_host(name: str, broker_url: str | None, management_url: str | None) -> None:
    """Delete dispatcher host NAME's broker user (its device queues stay)."""
    _, api = _api(broker_url, management_url)
    user = identity.host_user(topology.check_name("host", name))
    if permissions.remove_user(api, user):
        click.echo(f"deleted broker user {user}")
    else:
        click.echo(f"no broker user {user}")


#: the commands above are registered on the ``broker`` group when this module is imported
COMMANDS: list[click.Command] = []
