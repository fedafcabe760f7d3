"""What a dispatcher publishes while a sub-job runs: job log batches and test results.

- ``log-batch`` on the ``lava.logs`` topic exchange, routing key
  ``<job>.<node>``: consecutive records of the sub-job's job log (console
  output is level ``target``). ``seq`` counts batches per sub-job from 0 so
  a reader can drop duplicates and notice gaps; ``final`` marks the last one.
- ``test-result`` on ``lava.results``: one test case (``lava-test-case``, a
  ``parse: pattern`` match, ``lava-sync`` ...) or one test run's own result
  (suite ``lava``). ``id`` is unique per result so consumers are idempotent.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.messages.base import MessageSchema

LOG_LEVELS = ("debug", "info", "warning", "error", "target", "input", "results", "event")
RESULTS = ("pass", "fail", "skip", "unknown")


class LogRecordSchema(Schema):
    time = fields.String(required=True)
    level = fields.String(required=True, validate=validate.OneOf(LOG_LEVELS))
    message = fields.String(required=True)
    action = fields.String(load_default=None, allow_none=True)


class LogBatchSchema(MessageSchema):
    message_type = "log-batch"

    job = fields.String(required=True, validate=validate.Length(min=1))
    subjob = fields.String(required=True, validate=validate.Length(min=1))
    node = fields.String(required=True, validate=validate.Length(min=1))
    seq = fields.Integer(required=True, validate=validate.Range(min=0))
    records = fields.List(fields.Nested(LogRecordSchema), required=True)
    final = fields.Boolean(load_default=False)


class TestResultSchema(MessageSchema):
    message_type = "test-result"

    id = fields.String(required=True, validate=validate.Length(min=1))
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
