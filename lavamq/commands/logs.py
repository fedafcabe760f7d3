"""``lavamq logs JOB [--follow]`` and ``lavamq log-store``.

``lavamq log-store --dir DIR`` keeps every job log batch from ``lava.logs``
(see dispatcher/logstore.py). ``lavamq logs JOB`` prints what the store has;
with ``--follow`` it first binds a temporary queue to ``<job>.#`` on
``lava.logs``, then prints the stored past, then the live batches, dropping
the ones already printed (by node, sub-job and sequence number).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from typing import Any

import click

from lavamq.server_client import url_option

COMMANDS: list[click.Command] = []

DEFAULT_DIR = "lavamq-logs"


def _dir(value: str | None) -> str:
    return value or os.environ.get("LAVAMQ_LOG_DIR") or DEFAULT_DIR


#: one encoder for every record (``json.dumps`` with options builds a new one per call)
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)
#: the key order of every record the job log writes (``log-batch`` without ``action``)
_CONSOLE_KEYS = ("time", "level", "message")
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def json_lines(node: str, records: list[dict[str, Any]]) -> list[str]:
    """``json.dumps({"node": node, **record}, ensure_ascii=False)`` for every record.

    A batch of console output holds thousands of ``{time, level, message}``
    records: those are written with an f-string of their escaped values, the
    same bytes at a fraction of the cost; any other record (``action``, other
    key orders or types, e.g. from a hand-edited store file) goes through the
    encoder.
    """

    def encoded(rec: dict[str, Any]) -> str:
        return _ENCODER.encode({"node": node, **rec})

    head = f'{{"node": {_json_string(node)}, "time": '
    try:
        return [
            f'{head}{_json_string(rec["time"])}, "level": {_json_string(rec["level"])}, '
            f'"message": {_json_string(rec["message"])}}}'
            if tuple(rec) == _CONSOLE_KEYS
            else encoded(rec)
            for rec in records
        ]
    except TypeError:  # a value that is not a string (or a record that is not a dict)
        return [encoded(rec) for rec in records]


def _print(node: str, records: list[dict[str, Any]], as_json: bool) -> None:
    """A batch's records, one line each, in one write (click.echo flushes per call)."""
    from dispatcher.joblog import format_record

    if not records:
        return
    if as_json:
        # straight to the byte stream: click.echo would look for ANSI escapes to
        # strip in every batch when not writing to a terminal, and JSON already
        # escapes them
        sys.stdout.flush()  # nothing written as text may come after these lines
        out = sys.stdout.buffer
        out.write("\n".join([*json_lines(node, records), ""]).encode("utf-8"))
        out.flush()
    else:
        click.echo("\n".join([format_record(rec, node=node) for rec in records]))


@click.command("logs")
@click.argument("job")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records as they arrive.")
@click.option(
    "--until-final",
    is_flag=True,
    help="With --follow: stop once every node that has logged sent its last batch.",
)
@click.option("--dir", "log_dir", default=None, help="Log store directory (env LAVAMQ_LOG_DIR).")
@click.option("--broker", "broker_url", default=None, help="Broker URL (env LAVAMQ_BROKER_URL).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@url_option
def logs_command(
    job: str,
    follow: bool,
    until_final: bool,
    log_dir: str | None,
    broker_url: str | None,
    as_json: bool,
    url: str | None,
) -> None:
    """Print the job log of JOB (every node), optionally following it live."""
    if url:
        from lavamq.server_client import ServerClient

        for node, rec in ServerClient(url).log_records(int(job), follow=follow):
            _print(node, [rec], as_json)
        return
    from broker_config import topology
    from dispatcher.logstore import stored_batches

    topology.check_name("job", job)
    seen: set[tuple[str, str, int]] = set()
    finals: set[str] = set()
    nodes: set[str] = set()

    def show(batch: dict[str, Any]) -> None:
        key = (str(batch["node"]), str(batch["subjob"]), int(batch["seq"]))
        if key in seen:
            return
        seen.add(key)
        nodes.add(key[0])
        if batch.get("final"):
            finals.add(key[0])
        _print(key[0], batch.get("records", []), as_json)

    if not follow:
        for batch in stored_batches(_dir(log_dir), job):
            show(batch)
        return

    from kombu import Queue

    from broker_config.consumer import Delivery, QueueConsumer
    from lavamq.config import load_settings
    from schemas.messages.console import LogBatchSchema

    url = load_settings(broker_url=broker_url).broker_url
    queue = Queue(
        f"{topology.LOGS_EXCHANGE_NAME}.follow.{uuid.uuid4().hex[:12]}",
        exchange=topology.logs_exchange(),
        routing_key=f"{job}.#",
        durable=False,
        exclusive=True,
        auto_delete=True,
    )
    consumer: QueueConsumer

    def on_batch(delivery: Delivery) -> None:
        show(delivery.body)
        if until_final and nodes and finals >= nodes:
            consumer.stop()

    def on_ready() -> None:
        # bound before reading the past: nothing falls between the two
        for batch in stored_batches(_dir(log_dir), job):
            show(batch)
        if until_final and nodes and finals >= nodes:
            consumer.stop()

    consumer = QueueConsumer(
        url, [queue], LogBatchSchema(), handler=on_batch, prefetch=100, poll_interval=0.2
    )
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    try:
        consumer.run(on_ready=on_ready)
    except KeyboardInterrupt:
        consumer.stop()


@click.command("log-store")
@click.option("--dir", "log_dir", default=None, help="Where to keep logs (env LAVAMQ_LOG_DIR).")
@click.option("--broker", "broker_url", default=None, help="Broker URL (env LAVAMQ_BROKER_URL).")
def log_store_command(log_dir: str | None, broker_url: str | None) -> None:
    """Keep every job log batch published on lava.logs under --dir."""
    from dispatcher.logstore import LogStore
    from lavamq.config import load_settings

    store = LogStore(load_settings(broker_url=broker_url).broker_url, _dir(log_dir))
    signal.signal(signal.SIGTERM, lambda *_: store.consumer.stop())
    signal.signal(signal.SIGINT, lambda *_: store.consumer.stop())
    store.run(on_ready=lambda: click.echo("lavamq log-store ready"))
    click.echo("lavamq log-store stopped")


COMMANDS.extend([logs_command, log_store_command])
