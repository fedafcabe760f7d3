"""When the coordinator may judge host heartbeats and join deadlines.

A deadline judged on what the coordinator could not read is a healthy host
taken offline. So deadlines are held whenever the coordinator's own link to
the broker broke: its consumer reconnecting (no tick runs then), or a publish
of its own that had to reconnect (a handler stuck in it for the whole
outage, after which a tick would judge at once). After every such break, and
at start, they wait until the ``lava.control`` backlog left meanwhile has
been read. After a break the broker may have been away for the hosts too (a
broker restart): they could not heartbeat either, so every host then also
gets one full heartbeat period from the moment the backlog was read. At the
first start the backlog holds what hosts sent while the coordinator was
down, and is enough.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class DeadlineHold:
    """Whether deadlines are held now; told of each (re)start of consuming."""

    def __init__(self, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.consumes = 0
        self.caught_up = False
        self.grace_until = 0.0
        self._needs_grace = False
        self._link: Hashable | None = None

    def consuming(self) -> None:
        """Consuming (re)started: hold until the backlog is read."""
        self.consumes += 1
        if self.consumes > 1:
            self._broken("consuming again after a lost broker connection")
        else:
            self.caught_up = False

    def held(
        self,
        now: float,
        backlog: Callable[[], int | None],
        link: Callable[[], Hashable] = lambda: None,
    ) -> bool:
        """True while deadlines may not be judged.

        ``backlog()``: messages waiting in ``lava.control``, None when it cannot
        tell; ``link()``: what identifies the coordinator's publishing
        connection (a new one means the old one broke).
        """
        current = link()
        if self._link is not None and current != self._link:
            self._broken("its broker connection for publishing had to be opened again")
        self._link = current
        if not self.caught_up:
            if backlog() != 0:
                return True
            self.caught_up = True
            if self._needs_grace:
                self._needs_grace = False
                self.grace_until = now + self.heartbeat_timeout
                log.warning(
                    "coordinator: lava.control backlog read; host and join deadlines "
                    "resume in %g s",
                    self.heartbeat_timeout,
                )
        return now < self.grace_until

    def _broken(self, what: str) -> None:
        if self.caught_up or not self._needs_grace:
            log.warning(
                "coordinator: %s; host and join deadlines wait until the lava.control "
                "backlog is read",
                what,
            )
        self.caught_up = False
        self._needs_grace = True
