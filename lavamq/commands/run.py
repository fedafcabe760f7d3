"""``lavamq run JOB``: run a MultiNode job end to end in an embedded lab."""

from __future__ import annotations

import atexit
import gc
import json
import logging
import sys
from pathlib import Path

import click

log = logging.getLogger(__name__)


def skip_the_last_collection() -> None:
    """Have the interpreter's exit skip its last garbage collection (once registered).

    After a run, the heap holds the whole lab (broker, store, dispatcher, job
    logs): the collection Python makes as it exits costs 0.25-0.5 s, to free
    memory the process gives back anyway. ``gc.freeze`` at exit (after every
    other exit handler) leaves those objects out of it.
    """
    global _freeze_registered
    if not _freeze_registered:
        _freeze_registered = True
        atexit.register(gc.freeze)


_freeze_registered = False


def write_exports(bundle: dict[str, object], as_json: bool, junit: Path | None) -> None:
    """``--json`` on stdout, ``--junit FILE``: shared by run, results and wait."""
    from coordinator.results import bundle_junit

    if junit is not None:
        junit.write_bytes(bundle_junit(bundle))
    if as_json:
        click.echo(json.dumps(bundle, indent=2, sort_keys=True))


@click.command("run")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--keep", is_flag=True, help="Keep the workspace (store, job logs, boards).")
@click.option(
    "--device-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A host TOML (device dictionary) to use instead of local boards made for the job.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result bundle as JSON.")
@click.option(
    "--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here."
)
@click.option(
    "--network",
    type=click.Choice(["none", "auto", "netns"]),
    default="none",
    show_default=True,
    help="Local boards' network: the host's (none) or a namespace each (auto/netns, root).",
)
@click.option(
    "--mount-namespace",
    type=click.Choice(["auto", "required", "none"]),
    default="auto",
    show_default=True,
    help="Local boards' own /tmp and /lava-<id> in a private mount namespace: when the "
    "host allows it (auto; root), always (required), or never (none: per-board directories).",
)
@click.option(
    "--boards",
    type=click.Choice(["auto", "local", "qemu"]),
    default="auto",
    show_default=True,
    help="Boards of device_type qemu roles: a QEMU VM when QEMU is installed (auto), "
    "always (qemu), or a local board (local).",
)
@click.option("--timeout", type=float, help="Give up after this many seconds.")
def run(
    job_file: Path,
    keep: bool,
    device_config: Path | None,
    as_json: bool,
    junit: Path | None,
    network: str,
    mount_namespace: str,
    boards: str,
    timeout: float | None,
) -> None:
    """Run JOB_FILE in one process: coordinator, barrier and a dispatcher with a board
    for each node (QEMU VMs for qemu roles, local boards for the others).

    Shows live progress (with --json: on stderr), then the result table, and
    the bundle with --json, also when the run ends before the job (--timeout,
    Ctrl-C: the job is canceled first; the lab failing). The exit code is 0 only
    when every node completed and every test passed (130 after Ctrl-C).
    """
    from coordinator.results import bundle_table
    from lavamq.embedded import run_job
    from lavamq.exit_codes import exit_code_and_hint

    def emit(line: str) -> None:
        click.echo(line, err=as_json)

    skip_the_last_collection()

    outcome = run_job(
        job_file,
        keep=keep,
        device_config=device_config,
        emit=emit,
        network=network,
        mount_namespace=mount_namespace,
        timeout=timeout,
        boards=boards,
    )
    bundle = outcome.bundle
    click.echo("", err=as_json)
    click.echo(bundle_table(bundle), nl=False, err=as_json)
    if keep:
        click.echo(f"workspace kept: {outcome.workspace}", err=as_json)
    # the bundle comes out however the run ended (its --timeout, Ctrl-C, the lab failing)
    write_exports(bundle, as_json, junit)
    if outcome.error is not None:
        code, hint = exit_code_and_hint(outcome.error)
        click.echo(f"error ({outcome.error.error_type}): {outcome.error.message}", err=True)
        if hint and outcome.error.error_type != "canceled":  # this run ended it: no hint
            click.echo(f"hint: {hint}", err=True)
        sys.exit(130 if outcome.interrupted else code)
    sys.exit(0 if bundle["job"]["passed"] else 1)


COMMANDS = [run]
