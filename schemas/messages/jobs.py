"""Messages about jobs, devices and hosts.

Three conversations:

* ``lava.rpc`` (queue ``lava.rpc``): CLI requests to the coordinator. Every
  request body has a ``method``; the reply (to ``reply_to``, same
  ``correlation_id``) is an :class:`RpcReplySchema`.
* ``lava.device`` → ``lava.device.<device>``: one :class:`SubJobAssignmentSchema`
  per sub-job, routed by device name.
* ``lava.control`` (queue ``lava.control``): dispatchers tell the coordinator
  about their hosts and sub-jobs. Every body has a ``kind`` (``host-register``,
  ``host-heartbeat``, ``subjob-state``); :func:`decode_control` picks the schema.

``lava.events`` (topic) carries :class:`EventSchema` bodies for watchers.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from schemas.errors import InvalidMessage
from schemas.messages.base import MessageSchema, decode
from schemas.states import REPORTED_SUBJOB_STATES as REPORTED
from schemas.states import JobState

NAME = validate.Regexp(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", error="must be 1-100 of A-Z a-z 0-9 . _ -"
)

#: a submission's idempotency key (``lavamq submit --key``; a UUID when not given)
SUBMIT_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,99}$"
SUBMIT_KEY = validate.Regexp(SUBMIT_KEY_PATTERN, error="must be 1-100 of A-Z a-z 0-9 . _ : @ + -")

JOB_STATES = tuple(s.value for s in JobState)
#: the states a dispatcher may report for a sub-job
REPORTED_SUBJOB_STATES = tuple(s.value for s in REPORTED)


class _Strict(Schema):
    class Meta:
        unknown = "raise"


# --------------------------------------------------------------------- RPC


class SubmitRequestSchema(MessageSchema):
    """``lavamq submit``: the job file's text and where it came from."""

    message_type = "submit"
    method = fields.String(required=True, validate=validate.Equal("submit"))
    definition = fields.String(required=True, validate=validate.Length(min=1, max=4 * 1024 * 1024))
    source = fields.String(load_default="<submitted>", validate=validate.Length(max=1000))
    submitter = fields.String(load_default="anonymous", validate=validate.Length(max=200))
    #: the idempotency key: a second submit of the submitter's with it is the same job
    key = fields.String(load_default=None, allow_none=True, validate=SUBMIT_KEY)


class JobsRequestSchema(MessageSchema):
    """``lavamq jobs``: the newest jobs, optionally only some states."""

    message_type = "jobs"
    method = fields.String(required=True, validate=validate.Equal("jobs"))
    states = fields.List(fields.String(validate=validate.OneOf(JOB_STATES)), load_default=list)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=10_000))
    #: only the jobs submitted with this key (``lavamq jobs --key``)
    key = fields.String(load_default=None, allow_none=True, validate=SUBMIT_KEY)


class JobShowRequestSchema(MessageSchema):
    """``lavamq job show ID``: one job with its sub-jobs and events."""

    message_type = "job-show"
    method = fields.String(required=True, validate=validate.Equal("job-show"))
    job_id = fields.Integer(required=True, validate=validate.Range(min=1))


class CancelRequestSchema(MessageSchema):
    """``lavamq cancel ID``: cancel a job, with the reason recorded."""

    message_type = "cancel"
    method = fields.String(required=True, validate=validate.Equal("cancel"))
    job_id = fields.Integer(required=True, validate=validate.Range(min=1))
    reason = fields.String(load_default="canceled by user", validate=validate.Length(max=1000))


class DevicesRequestSchema(MessageSchema):
    """``lavamq devices``: every device of the lab."""

    message_type = "devices"
    method = fields.String(required=True, validate=validate.Equal("devices"))


class DeviceHealthRequestSchema(MessageSchema):
    """An admin puts a device in maintenance (not scheduled) or takes it out (good)."""

    message_type = "device-health"
    method = fields.String(required=True, validate=validate.Equal("device-health"))
    device = fields.String(required=True, validate=validate.Length(min=1, max=100))
    health = fields.String(required=True, validate=validate.OneOf(["good", "maintenance"]))


class ResultsRequestSchema(MessageSchema):
    """``lavamq results`` / ``lavamq wait``: a job's aggregated result bundle."""

    message_type = "results"
    method = fields.String(required=True, validate=validate.Equal("results"))
    job_id = fields.Integer(required=True, validate=validate.Range(min=1))


RPC_REQUESTS: dict[str, type[MessageSchema]] = {
    "submit": SubmitRequestSchema,
    "jobs": JobsRequestSchema,
    "job-show": JobShowRequestSchema,
    "cancel": CancelRequestSchema,
    "devices": DevicesRequestSchema,
    "results": ResultsRequestSchema,
    "device-health": DeviceHealthRequestSchema,
}


class RpcRequestSchema(MessageSchema):
    """What every RPC request has in common: the ``method``; the rest is per method."""

    message_type = "rpc-request"
    method = fields.String(required=True, validate=validate.OneOf(sorted(RPC_REQUESTS)))

    class Meta:
        unknown = "include"


class RpcErrorSchema(_Strict):
    """A failed request's error, as data: its kind, message and every problem."""

    error_type = fields.String(required=True)
    message = fields.String(required=True)
    #: every validation problem (``location: message``) for a rejected job file
    problems = fields.List(fields.String(), load_default=list)


class RpcReplySchema(MessageSchema):
    """The coordinator's answer: ``ok`` with a method-specific ``result``, or an ``error``."""

    message_type = "rpc-reply"
    ok = fields.Boolean(required=True)
    method = fields.String(required=True)
    result = fields.Raw(load_default=None, allow_none=True)
    error = fields.Nested(RpcErrorSchema, load_default=None, allow_none=True)


def decode_rpc_request(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Validate an RPC request against the schema its ``method`` names."""
    head = decode(RpcRequestSchema(), body)
    return decode(RPC_REQUESTS[head["method"]](), body)


# -------------------------------------------------------------- assignment


class TimeoutsSchema(_Strict):
    """Seconds. ``multinode`` bounds each MultiNode call; ``connection`` each console step."""

    job = fields.Float(load_default=None, allow_none=True)
    action = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    multinode = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    connection = fields.Float(load_default=None, allow_none=True)


class SubJobAssignmentSchema(MessageSchema):
    """One sub-job for the dispatcher that owns ``device`` (queue ``lava.device.<device>``).

    ``join_deadline`` (seconds since the epoch): a dispatcher that takes the
    assignment after it drops it and reports ``subjob-state canceled``; the
    coordinator has already cancelled the group by then. ``owners`` (optional):
    node → broker user of its host, handed to the node's ``MultinodeClient``.
    """

    message_type = "subjob-assignment"
    job_id = fields.Integer(required=True)
    subjob_id = fields.Integer(required=True)
    group = fields.String(required=True, validate=NAME)
    job_name = fields.String(load_default="")
    node = fields.String(required=True, validate=NAME)
    role = fields.String(required=True)
    device = fields.String(required=True, validate=NAME)
    device_type = fields.String(required=True)
    members = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    #: node → broker user of the host running it: a node's MultiNode messages are
    #: believed only from that user (broker_config/identity.py); empty: role checks only
    owners = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    plan = fields.Dict(required=True)
    timeouts = fields.Nested(TimeoutsSchema, required=True)
    is_slave = fields.Boolean(load_default=False)
    essential = fields.Boolean(load_default=False)
    join_deadline = fields.Float(required=True)


# ----------------------------------------------------------------- control


class RegisteredDeviceSchema(_Strict):
    """One device a host announces: its name (the node's name), type and tags."""

    name = fields.String(required=True, validate=NAME)
    device_type = fields.String(required=True, validate=NAME)
    tags = fields.List(fields.String(validate=validate.Length(min=1, max=100)), load_default=list)


class HostRegisterSchema(MessageSchema):
    """A dispatcher announces its host and every device it owns (from its device dictionaries).

    The list is complete: devices of this host missing from it go offline.
    """

    message_type = "host-register"
    kind = fields.String(required=True, validate=validate.Equal("host-register"))
    host = fields.String(required=True, validate=NAME)
    devices = fields.List(fields.Nested(RegisteredDeviceSchema), required=True)
    time = fields.Float(required=True)


class HostHeartbeatSchema(MessageSchema):
    """A dispatcher is alive. Sent every few seconds; silence past the deadline → offline."""

    message_type = "host-heartbeat"
    kind = fields.String(required=True, validate=validate.Equal("host-heartbeat"))
    host = fields.String(required=True, validate=NAME)
    time = fields.Float(required=True)


class SubJobStateSchema(MessageSchema):
    """A dispatcher reports what happened to a sub-job it owns.

    ``accepted``: durably taken from the device queue (the join); ``running``;
    then one of ``complete`` / ``incomplete`` / ``canceled``. An ``incomplete``
    carries ``error_type`` (schemas.errors kinds) and ``message``.
    """

    message_type = "subjob-state"
    kind = fields.String(required=True, validate=validate.Equal("subjob-state"))
    subjob_id = fields.Integer(required=True)
    job_id = fields.Integer(load_default=None, allow_none=True)
    host = fields.String(load_default=None, allow_none=True)
    state = fields.String(required=True, validate=validate.OneOf(REPORTED_SUBJOB_STATES))
    error_type = fields.String(load_default=None, allow_none=True)
    message = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=10_000)
    )
    time = fields.Float(required=True)


CONTROL_MESSAGES: dict[str, type[MessageSchema]] = {
    "host-register": HostRegisterSchema,
    "host-heartbeat": HostHeartbeatSchema,
    "subjob-state": SubJobStateSchema,
}


class ControlMessageSchema(MessageSchema):
    """What every ``lava.control`` body has in common: its ``kind``."""

    message_type = "control"
    kind = fields.String(required=True, validate=validate.OneOf(sorted(CONTROL_MESSAGES)))

    class Meta:
        unknown = "include"


def decode_control(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Validate a ``lava.control`` body against the schema its ``kind`` names."""
    head = decode(ControlMessageSchema(), body)
    return decode(CONTROL_MESSAGES[head["kind"]](), body)


# ------------------------------------------------------------------ events


class EventSchema(MessageSchema):
    """A state change on ``lava.events``; routing key ``<kind>.<id>.<state>``
    (e.g. ``job.41.running``, ``device.panda01.offline``, ``host.lab1.offline``)."""

    message_type = "event"
    kind = fields.String(
        required=True, validate=validate.OneOf(["job", "subjob", "device", "host"])
    )
    time = fields.Float(required=True)
    state = fields.String(required=True)
    job_id = fields.Integer(load_default=None, allow_none=True)
    subjob_id = fields.Integer(load_default=None, allow_none=True)
    device = fields.String(load_default=None, allow_none=True)
    host = fields.String(load_default=None, allow_none=True)
    text = fields.String(load_default="")


__all__ = [
    "CONTROL_MESSAGES",
    "RPC_REQUESTS",
    "CancelRequestSchema",
    "ControlMessageSchema",
    "DevicesRequestSchema",
    "EventSchema",
    "HostHeartbeatSchema",
    "HostRegisterSchema",
    "InvalidMessage",
    "JobShowRequestSchema",
    "JobsRequestSchema",
    "ResultsRequestSchema",
    "RpcReplySchema",
    "RpcRequestSchema",
    "SubJobAssignmentSchema",
    "SubJobStateSchema",
    "SubmitRequestSchema",
    "decode_control",
    "decode_rpc_request",
]
