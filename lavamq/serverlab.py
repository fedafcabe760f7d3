"""The embedded lab behind ``lavamq server --embedded``: boards made up front, logs kept.

``lavamq run`` makes boards for the one job it runs; a server does not know
its jobs in advance, so it starts with a fixed set of ``local`` boards (each
``--board TYPE[:COUNT[:TAG,TAG]]``, emulating TYPE as ``lavamq run`` does),
or a real host configuration. The job log store runs beside them, so
``lavacli jobs logs`` and the web view read the logs as they arrive.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dispatcher.logstore import LogStore
from lavamq.embedded import MEMORY_URL, EmbeddedLab, boards_for_plan
from schemas.errors import ConfigurationError
from schemas.jobmodel import JobPlan, SubJobPlan, Timeouts

log = logging.getLogger(__name__)

#: enough for the README's example (2 panda boards [usb-flash], 1 beaglexm [audio-loopback])
#: and the other examples made of local boards
DEFAULT_BOARDS = ("local:4", "panda:2:usb-flash", "beaglexm:2:audio-loopback")


def parse_board(spec: str) -> tuple[str, int, tuple[str, ...]]:
    """``TYPE[:COUNT[:TAG,TAG]]`` → (type, count, tags)."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigurationError(f"--board {spec!r}: use TYPE[:COUNT[:TAG,TAG]]")
    try:
        count = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    except ValueError:
        raise ConfigurationError(f"--board {spec!r}: COUNT must be a number") from None
    if not 1 <= count <= 256:
        raise ConfigurationError(f"--board {spec!r}: COUNT must be 1 to 256")
    tags = tuple(t for t in (parts[2].split(",") if len(parts) > 2 else ()) if t)
    return parts[0], count, tags


def boards_for_specs(specs: Sequence[str]) -> list[dict[str, Any]]:
    """Local boards for ``--board`` specs, named like ``lavamq run``'s (``panda-01`` ...)."""
    subjobs = []
    for spec in specs:
        device_type, count, tags = parse_board(spec)
        subjobs += [
            SubJobPlan("board", i, device_type, None, tags, False, False, ()) for i in range(count)
        ]
    plan = JobPlan("boards", "yaml", 50, Timeouts(None, 60.0, 60.0, None), (), tuple(subjobs), ())
    return boards_for_plan(plan)


class ServerLab:
    """An :class:`EmbeddedLab` with its job log store, for the server's process."""

    def __init__(
        self,
        db_url: str,
        log_dir: str | Path,
        *,
        boards: Sequence[str] = DEFAULT_BOARDS,
        host_config: dict[str, Any] | None = None,
        workspace: str | Path | None = None,
    ) -> None:
        self.workspace = Path(workspace or tempfile.mkdtemp(prefix="lavamq-server-"))
        config = host_config or {
            "host": {"name": "embedded", "heartbeat_interval": 5.0},
            "device": boards_for_specs(boards),
        }
        config["host"]["workdir"] = str(self.workspace / "dispatcher")
        self.lab = EmbeddedLab(self.workspace, config, db_url=db_url)
        self.log_dir = Path(log_dir)
        self.log_store: LogStore | None = None

    @property
    def broker_url(self) -> str:
        """The embedded lab's broker (in memory)."""
        return MEMORY_URL

    def start(self, timeout: float = 60.0) -> ServerLab:
        """Start the lab and its log store."""
        self.lab.start(timeout)
        self.log_store = LogStore(MEMORY_URL, self.log_dir)
        self.log_store.start()
        return self

    def stop(self) -> None:
        """Stop the log store and the lab."""
        if self.log_store is not None:
            self.log_store.stop()
        self.lab.stop()

    def boards(self) -> list[str]:
        """The lab's boards and what each emulates, for the start-up message."""
        return [
            f"{d['name']} ({d.get('settings', {}).get('emulates') or d['device_type']})"
            for d in self.lab.host_config.get("device", [])
        ]
