"""One MultiNode group's live state in this process, shared by its local nodes.

What the group's stream has said — every ``lava-send`` (message id → sender
→ data, accumulated as in LAVA), every release the barrier published, the
group's failure — is kept once per process and group, under one condition
variable, by the :class:`GroupState` that the process's ``GroupReceiver``
owns. Every local node of the group reads the same object: a node that
starts late sees what the group already has, with nothing copied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from broker_config.consumer import Delivery

#: ``hook(delivery)``: told of each new message of the group once the state has it
DeliveryHook = Callable[[Delivery], None]


class ReleaseKey(NamedTuple):
    """What a ``multinode-release`` releases: a sync generation or a wait-all (of a role)."""

    kind: str  # "sync" | "wait-all"
    message_id: str
    generation: int = 0
    role: str = ""


class GroupState:
    """Sends, releases and failure of one group, as this process has received them."""

    def __init__(self, group: str, owners: dict[str, str] | None = None) -> None:
        self.group = group
        #: node → broker user of its host (a send is believed only from that user)
        self.owners = dict(owners) if owners else None
        self.cond = threading.Condition()
        self.messages: dict[str, dict[str, dict[str, str]]] = {}
        self.releases: set[ReleaseKey] = set()
        self.failure: dict[str, Any] | None = None
        #: the group's job was canceled (a ``group-failed`` of cause "canceled"), even
        #: when another failure came first: its nodes stop whatever they run
        self.canceled: dict[str, Any] | None = None
        #: broker message ids applied: a redelivery (or a queue read again) counts once
        self.applied: set[str] = set()
        self.duplicates = 0
        #: release → the local node that waits for it (asked for again after a reconnect)
        self.waiting: dict[ReleaseKey, str] = {}
        self._hooks: list[DeliveryHook] = []

    # --- the receiver's thread ---

    def deliver(self, delivery: Delivery) -> None:
        """A delivery of this group, authorized and valid: applied once."""
        message_id = delivery.properties.get("message_id")
        if message_id:
            if message_id in self.applied:
                self.duplicates += 1
                return
            self.applied.add(message_id)
        body = delivery.body
        with self.cond:
            if delivery.message_type == "multinode-send":
                self.record_send(body["node"], body["message_id"], body["data"])
            elif delivery.message_type == "multinode-release":
                self.releases.add(
                    ReleaseKey(body["kind"], body["message_id"], body["generation"], body["role"])
                )
            elif delivery.message_type == "group-failed":
                self.failure = self.failure or body
                if body.get("cause") == "canceled":
                    self.canceled = self.canceled or body
            self.cond.notify_all()
        for hook in list(self._hooks):
            hook(delivery)

    def add_hook(self, hook: DeliveryHook) -> None:
        """Call ``hook`` for each new message (a node's observers, in tests and benches)."""
        self._hooks.append(hook)

    def remove_hook(self, hook: DeliveryHook) -> None:
        """Stop calling a delivery hook (its node left)."""
        self._hooks = [h for h in self._hooks if h != hook]

    # --- any thread, holding ``cond`` ---

    def record_send(self, sender: str, message_id: str, data: dict[str, str]) -> None:
        """Accumulate ``sender``'s data for ``message_id`` (re-sending adds, as in LAVA)."""
        self.messages.setdefault(message_id, {}).setdefault(sender, {}).update(data)

    def data_from(self, message_id: str, keep: Callable[[str], bool]) -> dict[str, dict[str, str]]:
        """sender → data for ``message_id``, of the senders ``keep`` accepts, sorted."""
        senders = self.messages.get(message_id, {})
        return {n: dict(d) for n, d in sorted(senders.items()) if keep(n)}
