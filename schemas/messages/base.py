"""Common shape of every AMQP message body.

Every body is a JSON object with a ``schema_version``; one encoder and one
decoder turn bodies into validated dicts so that consumers validate at the
edge and reject (to ``lava.dead``) what does not fit.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from schemas.errors import InvalidMessage as InvalidMessage  # raised by decode(), re-exported

SCHEMA_VERSION = 1


class MessageSchema(Schema):
    """Base for all message bodies. Unknown keys are errors."""

    #: the value of the AMQP ``type`` property for this message
    message_type: ClassVar[str] = ""

    schema_version = fields.Integer(
        load_default=SCHEMA_VERSION, validate=validate.Equal(SCHEMA_VERSION)
    )

    class Meta:
        unknown = RAISE


def flatten_errors(messages: Any, prefix: str = "") -> list[str]:
    """Turn marshmallow's nested error dict into ``a.b[2].c: message`` lines."""
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == "_schema":
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(flatten_errors(value, path))
    elif isinstance(messages, list):
        for item in messages:
            if isinstance(item, (dict, list)):
                out.extend(flatten_errors(item, prefix))
            else:
                out.append(f"{prefix}: {item}" if prefix else str(item))
    else:
        out.append(f"{prefix}: {messages}" if prefix else str(messages))
    return out


def encode(schema: MessageSchema, data: dict[str, Any]) -> bytes:
    """Validate ``data`` against ``schema`` and serialise it to JSON bytes."""
    body = dict(data)
    body.setdefault("schema_version", SCHEMA_VERSION)
    # one load validates (a separate validate() would check everything twice)
    try:
        loaded = schema.load(body)
    except ValidationError as exc:
        raise InvalidMessage(
            f"cannot send {schema.message_type or type(schema).__name__}: "
            + "; ".join(flatten_errors(exc.messages))
        ) from None
    return json.dumps(schema.dump(loaded), ensure_ascii=False).encode("utf-8")


def decode(schema: MessageSchema, body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Parse and validate a body; raise InvalidMessage naming every problem."""
    name = schema.message_type or type(schema).__name__
    if isinstance(body, dict):
        raw: Any = body
    else:
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            raw = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidMessage(f"{name}: body is not UTF-8 JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InvalidMessage(f"{name}: body must be a JSON object, got {type(raw).__name__}")
    try:
        result: dict[str, Any] = schema.load(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"{name}: " + "; ".join(flatten_errors(exc.messages))) from None
    return result
