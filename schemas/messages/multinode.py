"""Bodies of the MultiNode conversation: group exchange and ``lava.barrier``.

Who sends what (see docs/multinode.md):

- ``group-open`` (coordinator → barrier): the membership, before any node runs;
- ``multinode-send`` (node → group exchange *and* barrier): ``lava-send`` data;
- ``multinode-sync`` (node → barrier only): one ``lava-sync`` acknowledgement;
- ``multinode-release`` (barrier → group exchange): a barrier is complete;
- ``multinode-timeout`` (node → barrier): a wait passed its deadline;
- ``group-failed`` (anyone → group exchange and barrier): the group is over;
- ``group-close`` (coordinator → barrier): forget the group's counters.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from schemas.errors import JobError
from schemas.messages.base import MessageSchema

#: LAVA rejects MultiNode messages over 0xFFFE characters; lavamq counts
#: UTF-8 bytes of the id plus every ``key=value`` pair and allows the same
MAX_PAYLOAD_BYTES = 0xFFFE

_name = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,120}$"))
_message_id = fields.String(required=True, validate=validate.Length(min=1, max=255))

OPERATIONS = ("lava-wait", "lava-wait-all", "lava-sync")


class StringList(fields.Field[list[str]]):
    """A list of strings, checked in one pass: a release names every node of its
    group, and ``fields.List(fields.String())`` cost more per 64-node release than
    the rest of encoding and decoding it together. Accepts and refuses what that
    field does for JSON input, naming the first item that is not a string."""

    def _validated(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        if set(map(type, value)) <= {str}:
            return list(value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValidationError(f"[{i}]: Not a valid string.")
        return list(value)  # str subclasses

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        return self._validated(value)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> list[str] | None:
        return None if value is None else self._validated(value)


class GroupOpenSchema(MessageSchema):
    """The coordinator opens a group at the barrier: members and their owners."""

    message_type = "group-open"
    group = _name
    members = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    timeout = fields.Float(required=True)
    #: node → broker user of the host that runs it (who may speak for the node)
    owners = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)


class GroupCloseSchema(MessageSchema):
    """The coordinator closes an ended group: the barrier forgets it."""

    message_type = "group-close"
    group = _name


class MultinodeSendSchema(MessageSchema):
    """``lava-send``: a node sends a message (and its data) to its group."""

    message_type = "multinode-send"
    group = _name
    node = _name
    message_id = _message_id
    data = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)


class MultinodeSyncSchema(MessageSchema):
    """``lava-sync``: a node arrives at a named barrier of the whole group."""

    message_type = "multinode-sync"
    group = _name
    node = _name
    message_id = _message_id
    generation = fields.Integer(required=True, validate=validate.Range(min=1))


class MultinodeReleaseSchema(MessageSchema):
    """The barrier releases every waiter of a completed barrier."""

    message_type = "multinode-release"
    group = _name
    kind = fields.String(required=True, validate=validate.OneOf(["sync", "wait-all"]))
    message_id = _message_id
    generation = fields.Integer(load_default=0)
    role = fields.String(load_default="")
    nodes = StringList(load_default=list)


class MultinodeTimeoutSchema(MessageSchema):
    """A node's MultiNode call timed out: the barrier fails the group or resends."""

    message_type = "multinode-timeout"
    group = _name
    node = _name
    operation = fields.String(required=True, validate=validate.OneOf(OPERATIONS))
    message_id = _message_id
    generation = fields.Integer(load_default=0)
    role = fields.String(load_default="")
    timeout = fields.Float(required=True)


class MultinodeQuerySchema(MessageSchema):
    """A node asks the barrier again for a release it may have lost.

    Releases are published transient (see ``coordinator/barrier.py``): a
    broker restart drops those still queued. After its receiver reconnects,
    a node asks for each release it still waits for; the barrier publishes
    the release again if it was decided (same message id) and ignores the
    question otherwise.
    """

    message_type = "multinode-query"
    group = _name
    node = _name
    kind = fields.String(required=True, validate=validate.OneOf(["sync", "wait-all"]))
    message_id = _message_id
    generation = fields.Integer(load_default=0)
    role = fields.String(load_default="")


class GroupFailedSchema(MessageSchema):
    """The group failed: every waiter, now and later, gets this reason."""

    message_type = "group-failed"
    group = _name
    reason = fields.String(required=True)
    node = fields.String(load_default=None, allow_none=True)
    #: "timeout" when a wait timed out (that node raises MultinodeTimeout); "canceled"
    #: when the job was canceled (every running node stops now, not at its next call)
    cause = fields.String(
        load_default="failed", validate=validate.OneOf(["failed", "timeout", "canceled"])
    )


#: what each queue accepts, by AMQP ``type``
GROUP_QUEUE_SCHEMAS: dict[str, MessageSchema] = {
    s.message_type: s
    for s in (MultinodeSendSchema(), MultinodeReleaseSchema(), GroupFailedSchema())
}
BARRIER_SCHEMAS: dict[str, MessageSchema] = {
    s.message_type: s
    for s in (
        GroupOpenSchema(),
        GroupCloseSchema(),
        MultinodeSendSchema(),
        MultinodeSyncSchema(),
        MultinodeTimeoutSchema(),
        MultinodeQuerySchema(),
        GroupFailedSchema(),
    )
}


def check_message_id(operation: str, message_id: Any) -> str:
    """A message id is non-empty text without ``=`` or whitespace (LAVA's rule)."""
    if not isinstance(message_id, str) or not message_id:
        raise JobError(f"{operation}: a message id is required")
    if "=" in message_id or any(c.isspace() for c in message_id):
        raise JobError(f"{operation} {message_id!r}: a message id cannot contain '=' or spaces")
    if len(message_id.encode("utf-8")) > 255:
        raise JobError(f"{operation} {message_id[:40]!r}...: message id longer than 255 bytes")
    return message_id


def payload_size(message_id: str, data: dict[str, str]) -> int:
    """Bytes counted against MAX_PAYLOAD_BYTES: the id and each ``key=value``."""
    size = len(message_id.encode("utf-8"))
    for key, value in data.items():
        size += 2 + len(key.encode("utf-8")) + len(value.encode("utf-8"))
    return size


def check_payload(operation: str, message_id: str, data: dict[str, str] | None) -> dict[str, str]:
    """Validate ``lava-send`` data: text keys without ``=``, text values, size limit."""
    data = dict(data or {})
    for key, value in data.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise JobError(
                f"{operation} '{message_id}': invalid key {key!r} (non-empty, without '=')"
            )
        if not isinstance(value, str):
            raise JobError(f"{operation} '{message_id}': value of {key!r} must be text")
    size = payload_size(message_id, data)
    if size > MAX_PAYLOAD_BYTES:
        raise JobError(
            f"{operation} '{message_id}': payload is {size} bytes, over the limit of "
            f"{MAX_PAYLOAD_BYTES} bytes (id plus every key=value, UTF-8)"
        )
    return data
