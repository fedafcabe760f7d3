"""``lavamq submit``, ``jobs``, ``job show``, ``cancel``, ``devices``: talk to the coordinator."""

from __future__ import annotations

import datetime
import getpass
import json
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from coordinator.rpc import DEFAULT_TIMEOUT, CoordinatorClient
from lavamq.config import load_settings
from lavamq.exit_codes import exit_code_and_hint
from lavamq.server_client import url_option
from schemas.errors import LavamqError
from schemas.job_parse import read_job_bytes
from schemas.messages.jobs import SUBMIT_KEY_PATTERN

broker_option = click.option(
    "--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
timeout_option = click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the coordinator's answer.",
)


def _call(
    broker_url: str | None,
    timeout: float,
    as_json: bool,
    fun: Callable[[Any], Any],
    url: str | None = None,
) -> Any:
    """``fun(client)`` on the coordinator's RPC, or on the lab server's REST API (``url``)."""
    settings = load_settings(broker_url)
    try:
        if url:
            from lavamq.server_client import ServerClient

            with ServerClient(url, timeout=timeout) as server:
                return fun(server)
        with CoordinatorClient(settings.broker_url, timeout=timeout) as client:
            return fun(client)
    except LavamqError as exc:
        if not as_json:
            raise
        problems = list(getattr(exc, "problems", []) or [])
        error = {"error_type": exc.error_type, "message": exc.message, "problems": problems}
        click.echo(json.dumps({"ok": False, "error": error}, indent=2))
        sys.exit(exit_code_and_hint(exc)[0])


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _check_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(SUBMIT_KEY_PATTERN, value):
        raise click.BadParameter(
            "1-100 of A-Z a-z 0-9 . _ : @ + -, starting with a letter or digit"
        )
    return value


key_option = click.option(
    "--key",
    callback=_check_key,
    help="The submission's idempotency key (default: a new UUID): submitting again with the "
    "same key gives the same job, never a second one; `lavamq jobs --key K` finds it.",
)


@click.command("submit")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@broker_option
@url_option
@timeout_option
@json_option
@key_option
@click.option(
    "--wait",
    "wait_",
    is_flag=True,
    help="Then follow the job to its end like `lavamq wait` (exit 0 iff every test passed).",
)
def submit(
    file: Path,
    broker_url: str | None,
    url: str | None,
    timeout: float,
    as_json: bool,
    key: str | None,
    wait_: bool,
) -> None:
    """Submit a job file (LAVA 2014 JSON or LAVA YAML) to the coordinator.

    Each submit carries an idempotency key (``--key``, else a new UUID): when no
    answer comes in time, the job may exist or not, and the error names the key
    to ask about (``lavamq jobs --key K``) or to submit again with.
    """
    raw = read_job_bytes(str(file))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from None
    key = key or uuid.uuid4().hex
    result = _call(
        broker_url,
        timeout,
        as_json,
        # absolute: relative locations in the job resolve against its directory
        lambda c: c.submit(text, source=str(file.absolute()), submitter=getpass.getuser(), key=key),
        url,
    )
    for warning in result.get("warnings") or ():
        click.echo(f"{file}: warning: {warning}", err=True)
    if as_json and not wait_:
        _print_json(result)
        return
    if not as_json:
        what = "was submitted before with this key" if result.get("again") else "submitted"
        click.echo(
            f"job {result['job_id']} {what}: {result['job_name']} (group {result['group']}, "
            f"key {key})"
        )
        for sub in result["subjobs"]:
            click.echo(f"  sub-job {sub['id']}: {sub['role']} #{sub['index']}")
    if wait_ and url:
        from lavamq.commands.results import wait_through_server

        wait_through_server(url, int(result["job_id"]), as_json=as_json)
    if wait_:
        from lavamq.commands.results import follow_job

        follow_job(
            load_settings(broker_url).broker_url,
            int(result["job_id"]),
            rpc_timeout=timeout,
            wait_timeout=None,
            as_json=as_json,
            junit=None,
            progress=True,
        )


@click.command("jobs")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option(
    "--key",
    callback=_check_key,
    help="Only the job submitted with this idempotency key (`lavamq submit --key`).",
)
@broker_option
@url_option
@timeout_option
@json_option
def jobs(
    states: tuple[str, ...],
    limit: int,
    key: str | None,
    broker_url: str | None,
    url: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """List the newest jobs (``--key K``: whether a submit with key K made a job)."""
    result = _call(broker_url, timeout, as_json, lambda c: c.jobs(list(states), limit, key), url)
    if as_json:
        _print_json(result)
        return
    if key and not result:
        click.echo(
            f"no job has key {key}: a submit with it was not handled (or is still being "
            "handled); submitting again with the same key is safe"
        )
        return
    click.echo(f"{'ID':>6}  {'STATE':<11} {'PRIO':>4}  {'SUBMITTED':<19}  NAME / WHY")
    for j in result:
        why = j.get("waiting_reason") or j.get("failure_cause") or ""
        line = f"{j['id']:>6}  {j['state']:<11} {j['priority']:>4}  {_when(j['submit_time'])}"
        click.echo(f"{line}  {j['name']}" + (f"  ({why})" if why else ""))


@click.group("job")
def job() -> None:
    """Look at one job."""


@job.command("show")
@click.argument("job_id", type=int)
@broker_option
@timeout_option
@json_option
def job_show(job_id: int, broker_url: str | None, timeout: float, as_json: bool) -> None:
    """Show a job: state, why it waits or failed, its sub-jobs and devices, its events."""
    j = _call(broker_url, timeout, as_json, lambda c: c.job(job_id))
    if as_json:
        _print_json(j)
        return
    click.echo(f"job {j['id']}: {j['name']}")
    click.echo(f"  state:     {j['state']}  (group {j['group']}: {j['group_state']})")
    click.echo(f"  priority:  {j['priority']}")
    click.echo(f"  submitted: {_when(j['submit_time'])} by {j['submitter']} from {j['source']}")
    if j.get("waiting_reason"):
        click.echo(f"  {j['waiting_reason']}")
    if j.get("failure_cause"):
        click.echo(f"  cause:     ({j.get('failure_type')}) {j['failure_cause']}")
    click.echo("  sub-jobs:")
    for s in j["subjobs"]:
        wants = s["device_type"] or "-"
        if s["tags"]:
            wants += f" [{', '.join(s['tags'])}]"
        line = f"    {s['id']:>6} {s['role']} #{s['index']}  {wants}  on {s['device'] or '-'}"
        line += f"  {s['state']}"
        if s.get("message"):
            line += f": {s['message']}"
        click.echo(line)
    if j.get("events"):
        click.echo("  events:")
        for e in j["events"]:
            click.echo(f"    {_when(e['time'])}  {e['text']}")


@click.command("cancel")
@click.argument("job_id", type=int)
@click.option("--reason", default="canceled by user", show_default=True)
@broker_option
@timeout_option
@json_option
def cancel(job_id: int, reason: str, broker_url: str | None, timeout: float, as_json: bool) -> None:
    """Cancel a job (queued, scheduled or running)."""
    j = _call(broker_url, timeout, as_json, lambda c: c.cancel(job_id, reason))
    if as_json:
        _print_json(j)
        return
    click.echo(
        f"job {j['id']}: {j['state']}"
        + (f" ({j['failure_cause']})" if j.get("failure_cause") else "")
    )


@click.command("devices")
@broker_option
@timeout_option
@json_option
def devices(broker_url: str | None, timeout: float, as_json: bool) -> None:
    """List devices with type, tags, host, state, health and current job."""
    result = _call(broker_url, timeout, as_json, lambda c: c.devices())
    if as_json:
        _print_json(result)
        return
    click.echo(f"{'NAME':<20} {'TYPE':<14} {'STATE':<9} {'HEALTH':<7} {'JOB':>6}  HOST  TAGS")
    for d in result:
        job_id = d["current_job"] if d["current_job"] is not None else "-"
        click.echo(
            f"{d['name']:<20} {d['device_type']:<14} {d['state']:<9} {d['health']:<7} "
            f"{job_id:>6}  {d['host'] or '-'}  {', '.join(d['tags'])}"
        )


COMMANDS = [submit, jobs, job, cancel, devices]
