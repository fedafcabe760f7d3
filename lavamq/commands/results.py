"""``lavamq results JOB`` and ``lavamq wait JOB``: a group's one aggregated result."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from coordinator.rpc import DEFAULT_TIMEOUT, CoordinatorClient
from lavamq.commands.run import write_exports
from lavamq.config import load_settings
from lavamq.server_client import ServerClient, url_option
from schemas.errors import InfrastructureError, MultinodeTimeout

log = logging.getLogger(__name__)

#: seconds between two questions to the coordinator while waiting
POLL_INTERVAL = 0.5
#: how long a wait rides out a broker, coordinator or lab server that does not answer
#: (a restart, an upgrade) before it gives up
OUTAGE_LIMIT = 600.0


class Outage:
    """A wait's contact with the lab: lost (say so once, keep asking) and found again.

    A broker or coordinator restart ends a connection or leaves a question
    unanswered; asking for a job's results again is always safe, so the wait goes
    on until the lab answers, for at most ``limit`` seconds without an answer.
    """

    def __init__(self, job_id: int, limit: float = OUTAGE_LIMIT) -> None:
        self.job_id = job_id
        self.limit = limit
        self.since: float | None = None
        self.outages = 0

    def lost(self, exc: InfrastructureError) -> float:
        """Note a failed question; the seconds to wait before the next (raises past the limit)."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.outages += 1
            click.echo(
                f"lost contact with the lab ({exc}); still waiting for job {self.job_id}", err=True
            )
        elif now - self.since > self.limit:
            raise InfrastructureError(
                f"no answer about job {self.job_id} for {self.limit:g} s: {exc} "
                f"(the job goes on; `lavamq wait {self.job_id}` follows it again)"
            ) from None
        return min(2.0, 0.2 * float(2 ** min(int(now - self.since), 4)))

    def answered(self) -> None:
        """The coordinator answered again: say so once and reset the outage."""
        if self.since is not None:
            self.since = None
            click.echo(f"reconnected; waiting for job {self.job_id}", err=True)


def wait_for_results(
    client: CoordinatorClient,
    job_id: int,
    *,
    timeout: float | None = None,
    poll: float = POLL_INTERVAL,
) -> dict[str, Any]:
    """Ask the coordinator until the job has ended and its results are all in, through
    broker, coordinator and lab server outages (``Outage``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    outage = Outage(job_id)
    while True:
        try:
            bundle: dict[str, Any] = client.results(job_id)
        except InfrastructureError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(outage.lost(exc))
            continue
        outage.answered()
        if bundle["job"]["results_complete"]:
            return bundle
        if deadline is not None and time.monotonic() >= deadline:
            raise MultinodeTimeout(
                f"job {job_id} is still {bundle['job']['status']} after {timeout:g} s of waiting"
            )
        time.sleep(poll)


def show_bundle(bundle: dict[str, Any], as_json: bool, junit: Path | None) -> None:
    """Print a results bundle as a table or JSON, and write it as JUnit XML when asked."""
    from coordinator.results import bundle_table

    if not as_json:
        click.echo(bundle_table(bundle), nl=False)
    write_exports(bundle, as_json, junit)


def follow_job(
    broker_url: str,
    job_id: int,
    *,
    rpc_timeout: float,
    wait_timeout: float | None,
    as_json: bool,
    junit: Path | None,
    progress: bool,
) -> None:
    """Follow a job to its end (live progress unless ``as_json``), print it, exit 0 iff passed."""
    from lavamq.progress import ProgressWatcher

    watcher = None
    if progress and not as_json:
        watcher = ProgressWatcher(broker_url, job_id, click.echo).start()
    try:
        with CoordinatorClient(broker_url, timeout=rpc_timeout) as client:
            bundle = wait_for_results(client, job_id, timeout=wait_timeout)
    finally:
        if watcher is not None:
            watcher.stop()
    if not as_json:
        click.echo("")
    show_bundle(bundle, as_json, junit)
    sys.exit(0 if bundle["job"]["passed"] else 1)


broker_option = click.option(
    "--broker", "broker_url", help="Broker URL (default: $LAVAMQ_BROKER_URL)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the bundle as JSON.")
junit_option = click.option(
    "--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here."
)
rpc_timeout_option = click.option(
    "--rpc-timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for each answer of the coordinator.",
)


@click.command("results")
@click.argument("job_id", type=int)
@broker_option
@url_option
@json_option
@junit_option
@rpc_timeout_option
def results(
    job_id: int,
    broker_url: str | None,
    url: str | None,
    as_json: bool,
    junit: Path | None,
    rpc_timeout: float,
) -> None:
    """Print a job's aggregated results: per node, test run and test case.

    Works while the job runs too (the bundle then says results_complete: false).
    """
    if url:
        bundle = ServerClient(url, timeout=rpc_timeout).results(job_id)
    else:
        with CoordinatorClient(load_settings(broker_url).broker_url, timeout=rpc_timeout) as c:
            bundle = c.results(job_id)
    show_bundle(bundle, as_json, junit)


def wait_through_server(url: str, job_id: int, *, as_json: bool) -> None:
    """``submit --wait --url``: ask the lab server until the job's results are all in."""
    bundle = wait_for_results(ServerClient(url), job_id)  # type: ignore[arg-type]
    show_bundle(bundle, as_json, None)
    sys.exit(0 if bundle["job"]["passed"] else 1)


@click.command("wait")
@click.argument("job_id", type=int)
@broker_option
@json_option
@junit_option
@rpc_timeout_option
@click.option("--timeout", type=float, help="Give up (exit 1) after this many seconds.")
@click.option("--quiet", is_flag=True, help="No live progress, only the result.")
def wait(
    job_id: int,
    broker_url: str | None,
    as_json: bool,
    junit: Path | None,
    rpc_timeout: float,
    timeout: float | None,
    quiet: bool,
) -> None:
    """Follow a job to its end, then print its results; exit 0 only if every test passed."""
    settings = load_settings(broker_url)
    follow_job(
        settings.broker_url,
        job_id,
        rpc_timeout=rpc_timeout,
        wait_timeout=timeout,
        as_json=as_json,
        junit=junit,
        progress=not quiet,
    )


COMMANDS = [results, wait]
