"""The error taxonomy and the message envelope."""

from __future__ import annotations

import pytest
from marshmallow import fields

from schemas.errors import (
    ConfigurationError,
    GroupFailed,
    InfrastructureError,
    JobError,
    LavamqBug,
    MultinodeTimeout,
    classify,
    error_from_dict,
)
from schemas.messages.base import InvalidMessage, MessageSchema, decode, encode


@pytest.mark.parametrize(
    ("cls", "error_type"),
    [
        (JobError, "job"),
        (InfrastructureError, "infrastructure"),
        (ConfigurationError, "configuration"),
        (MultinodeTimeout, "multinode-timeout"),
        (GroupFailed, "group-failed"),
        (LavamqBug, "bug"),
    ],
)
def test_errors_round_trip_as_data(cls: type, error_type: str) -> None:
    err = cls("device panda-01 did not answer")
    data = err.to_dict()
    assert data == {"error_type": error_type, "message": "device panda-01 did not answer"}
    back = error_from_dict(data)
    assert type(back) is cls
    assert back.message == err.message


def test_unknown_error_type_is_rebuilt_as_bug_not_trusted() -> None:
    back = error_from_dict({"error_type": "os.system", "message": "x"})
    assert isinstance(back, LavamqBug)


def test_classify_keeps_known_kinds_and_wraps_the_rest() -> None:
    job = JobError("bad")
    assert classify(job) is job
    try:
        raise KeyError("boom")
    except KeyError as exc:
        bug = classify(exc)
    assert isinstance(bug, LavamqBug)
    assert "KeyError" in bug.message
    assert "Traceback" in bug.details["traceback"]


class PingSchema(MessageSchema):
    message_type = "ping"
    node = fields.String(required=True)


def test_encode_decode_validates_both_ways() -> None:
    body = encode(PingSchema(), {"node": "panda-01"})
    assert decode(PingSchema(), body) == {"node": "panda-01", "schema_version": 1}
    with pytest.raises(InvalidMessage, match="node"):
        encode(PingSchema(), {})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"node": "a", "extra": 1}', "extra: Unknown field"),
        (b'{"node": "a", "schema_version": 7}', "schema_version"),
    ],
)
def test_decode_names_what_is_wrong(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(PingSchema(), body)
    assert fragment in str(info.value)
    assert str(info.value).startswith("ping:")
