"""Where lavamq finds its broker and its store.

Order of precedence (first wins): command-line option, environment variable,
default. Defaults suit a single machine: RabbitMQ on localhost and an SQLite
file in the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_DB_URL = "sqlite:///lavamq.sqlite"


@dataclass(frozen=True)
class Settings:
    """Where the lab's broker and store are: what every lavamq command connects to."""

    broker_url: str
    db_url: str


def load_settings(broker_url: str | None = None, db_url: str | None = None) -> Settings:
    """The settings from the options given, else the environment, else the defaults."""
    return Settings(
        broker_url=broker_url or os.environ.get("LAVAMQ_BROKER_URL") or DEFAULT_BROKER_URL,
        db_url=db_url or os.environ.get("LAVAMQ_DB_URL") or DEFAULT_DB_URL,
    )
