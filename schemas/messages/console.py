"""What a dispatcher publishes while a sub-job runs: job log batches and test results.

- ``log-batch`` on the ``lava.logs`` topic exchange, routing key
  ``<job>.<node>``: consecutive records of the sub-job's job log (console
  output is level ``target``). ``seq`` counts batches per sub-job from 0 so
  a reader can drop duplicates and notice gaps; ``final`` marks the last one.
- ``test-result`` on ``lava.results``: one test case (``lava-test-case``, a
  ``parse: pattern`` match, ``lava-sync`` ...) or one test run's own result
  (suite ``lava``). ``id`` is unique per result so consumers are idempotent.
  A test run's own result carries the files attached to it or to its cases
  (``lava-test-run-attach``, ``lava-test-case-attach``), base64, each at most
  :data:`MAX_ATTACHMENT_BYTES`.
"""

from __future__ import annotations

import operator
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from schemas.messages.base import MessageSchema

LOG_LEVELS = ("debug", "info", "warning", "error", "target", "input", "results", "event")
RESULTS = ("pass", "fail", "skip", "unknown")
#: the largest file a test may attach (as LAVA 2014's bundles, base64 in the result)
MAX_ATTACHMENT_BYTES = 1024 * 1024
#: attachments per test run
MAX_ATTACHMENTS = 100


_DICT = frozenset({dict})
_STR = frozenset({str})
_TIME = operator.itemgetter("time")
_LEVEL = operator.itemgetter("level")
_MESSAGE = operator.itemgetter("message")
_ACTION = operator.methodcaller("get", "action", "")


class LogRecords(fields.Field[list[dict[str, Any]]]):
    """A list of ``{time, level, message[, action]}`` records.

    Checked by hand rather than with a nested schema: a batch holds up to
    thousands of console lines and a nested marshmallow schema per record
    would cost more than the rest of the console path together.
    """

    KEYS = frozenset({"time", "level", "message", "action"})
    LEVELS = frozenset(LOG_LEVELS)

    def _validated(self, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise ValidationError("must be a list of records")
        # fast pass (a batch holds thousands of records): whole-list checks
        # that run in C; if any fails (or raises: a missing key, an unhashable
        # level) the records are looked at one by one below for the message
        try:
            if (
                set(map(type, value)) <= _DICT
                and all(map(self.KEYS.issuperset, value))
                and set(map(type, map(_TIME, value))) <= _STR
                and set(map(type, map(_MESSAGE, value))) <= _STR
                and set(map(_LEVEL, value)) <= self.LEVELS
                and set(map(type, map(_ACTION, value))) <= _STR
            ):
                return value
        except (KeyError, TypeError):
            pass
        for i, rec in enumerate(value):
            if not isinstance(rec, dict):
                raise ValidationError(f"[{i}]: must be an object")
            unknown = rec.keys() - self.KEYS
            if unknown:
                raise ValidationError(f"[{i}]: unknown keys {sorted(unknown)}")
            for key in ("time", "level", "message"):
                if not isinstance(rec.get(key), str):
                    raise ValidationError(f"[{i}].{key}: must be a string")
            if rec["level"] not in LOG_LEVELS:
                raise ValidationError(f"[{i}].level: must be one of {', '.join(LOG_LEVELS)}")
            action = rec.get("action")
            if action is not None and not isinstance(action, str):
                raise ValidationError(f"[{i}].action: must be a string")
        return value

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return self._validated(value)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class LogBatchSchema(MessageSchema):
    """A batch of one node's job log records, in order (``seq``), on ``lava.logs``."""

    message_type = "log-batch"

    job = fields.String(required=True, validate=validate.Length(min=1))
    subjob = fields.String(required=True, validate=validate.Length(min=1))
    node = fields.String(required=True, validate=validate.Length(min=1))
    seq = fields.Integer(required=True, validate=validate.Range(min=0))
    records = LogRecords(required=True)
    final = fields.Boolean(load_default=False)


class AttachmentSchema(Schema):
    """One attached file, as LAVA 2014's bundles held it (``pathname``, ``mime_type``,
    ``content`` in base64), with the test case it belongs to, if any."""

    pathname = fields.String(required=True, validate=validate.Length(min=1, max=1000))
    mime_type = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    case = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    #: base64 of at most MAX_ATTACHMENT_BYTES bytes
    content = fields.String(
        required=True, validate=validate.Length(max=(MAX_ATTACHMENT_BYTES + 2) // 3 * 4)
    )


class TestResultSchema(MessageSchema):
    """One test case's result from one node, on ``lava.results``."""

    message_type = "test-result"

    #: unique per sender and sub-job (the coordinator keeps one receipt per id)
    id = fields.String(required=True, validate=validate.Length(min=1, max=100))
    job = fields.String(required=True, validate=validate.Length(min=1))
    subjob = fields.String(required=True, validate=validate.Length(min=1))
    node = fields.String(required=True, validate=validate.Length(min=1))
    role = fields.String(load_default=None, allow_none=True)
    suite = fields.String(required=True, validate=validate.Length(min=1, max=200))
    case = fields.String(required=True, validate=validate.Length(min=1, max=200))
    result = fields.String(required=True, validate=validate.OneOf(RESULTS))
    measurement = fields.Float(load_default=None, allow_none=True)
    units = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=100))
    time = fields.String(required=True)
    extra = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    attachments = fields.List(
        fields.Nested(AttachmentSchema),
        load_default=list,
        validate=validate.Length(max=MAX_ATTACHMENTS),
    )
