"""Sub-commands of ``lavamq``; each module exposes click commands."""

from __future__ import annotations

import importlib
import pkgutil

import click


def register_all(group: click.Group) -> None:
    """Add every command (any click.Command named in a module's ``COMMANDS``)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            group.add_command(command)
