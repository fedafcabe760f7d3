"""The ``lavamq`` command: parse, call the library, map errors to exit codes.

Exit codes: 0 ok, 1 a known error (one line and a hint), 2 usage error or bug,
141 when the reader of our output went away (``lavamq jobs | head -3``: no
traceback, as a process ended by SIGPIPE).
``lavamq.exit_codes`` maps every error kind the services send (``schemas.errors``)
to its exit code and hint, once. Each sub-command lives in its own module
under ``lavamq/commands``.
"""

from __future__ import annotations

import logging
import os
import select
import sys
from typing import Any, NoReturn

import click

from lavamq.exit_codes import exit_code_and_hint
from schemas.errors import LavamqBug, classify

#: the exit code when whoever reads our output stopped reading (``lavamq jobs | head``):
#: what a shell shows for a process ended by SIGPIPE (128 + 13)
STDOUT_CLOSED = 141


def stdout_closed() -> bool:
    """True when whoever reads our stdout is gone (a pipe with no reader: POLLERR);
    stdout is then pointed at /dev/null, so the interpreter's last flush at exit
    does not fail too.

    Python ignores SIGPIPE (so a broken broker socket is an error, not our death);
    the reader of our output leaving is then a ``BrokenPipeError`` like a socket's,
    told apart here by asking about stdout itself.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a real file (a test's capture)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


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
        except BrokenPipeError as exc:
            if stdout_closed():
                sys.exit(STDOUT_CLOSED)
            fail(exc)  # a socket's broken pipe
        except Exception as exc:
            fail(exc)


def fail(exc: Exception) -> NoReturn:
    """Print the error's one line (a bug: its traceback) and hint; exit with its code."""
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
