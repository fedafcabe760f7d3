"""The ``lavamq`` command: parse, call the library, map errors to exit codes.

Exit codes: 0 ok, 1 a known error (one line and a hint), 2 usage error or bug.
``lavamq.exit_codes`` maps every error kind the services send (``schemas.errors``)
to its exit code and hint, once. Each sub-command lives in its own module
under ``lavamq/commands``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from lavamq.exit_codes import exit_code_and_hint
from schemas.errors import LavamqBug, classify


class LavamqGroup(click.Group):
    """A click group that turns every exception into one of our exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; an error ends with its kind's exit code and hint."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            err = classify(exc)
            code, hint = exit_code_and_hint(err)
            if isinstance(err, LavamqBug):
                click.echo(f"lavamq bug: {err.message}", err=True)
                click.echo(err.details.get("traceback", ""), err=True)
            else:
                click.echo(f"error ({err.error_type}): {err.message}", err=True)
            if hint:
                click.echo(f"hint: {hint}", err=True)
            sys.exit(code)


@click.group(cls=LavamqGroup)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """lavamq: LAVA MultiNode test jobs over RabbitMQ."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from lavamq.commands import register_all

    register_all(main)


_register()
