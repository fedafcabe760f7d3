"""A dispatcher host's configuration: the host and its device dictionary (TOML).

Example::

    [host]
    name = "lab-host-1"
    broker_url = "amqp://lab-host-1:secret@rabbit.example.org:5672/lava"
    workdir = "/var/lib/lavamq"

    [[device]]
    name = "local-01"
    device_type = "local"
    tags = ["shell"]

    [[device]]
    name = "beaglebone-03"
    device_type = "serial"
    console = "socket://ser2net.example.org:7003"
    power_on = "pduclient --port 3 --command on"
    power_off = "pduclient --port 3 --command off"
    reset = "pduclient --port 3 --command reboot"
    prompts = ["root@bbb:~# "]
    login = [{expect = "login:", send = "root"}]
    [device.settings]
    baudrate = 115200

Type-specific settings live in ``[device.settings]``; each device type
checks its own. Unknown keys elsewhere are errors, reported with where they are.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from schemas.errors import ConfigurationError
from schemas.messages.base import flatten_errors

#: names that end up in queue names and routing keys
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
name_validator = validate.Regexp(
    NAME_RE, error="must be letters, digits, '_', '.' or '-' (it names queues and routing keys)"
)


class CommandList(fields.Field[list[str]]):
    """A shell command, or a list of them, loaded as a list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, str):
            return [value] if value.strip() else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValidationError("must be a command (string) or a list of commands")

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class LoginStepSchema(Schema):
    """One step of a board's login: what to wait for and what to type."""

    class Meta:
        unknown = RAISE

    expect = fields.String(required=True, validate=validate.Length(min=1))
    send = fields.String(required=True)


class DeviceSchema(Schema):
    """One ``[[device]]`` of the host's device dictionary."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=name_validator)
    device_type = fields.String(required=True, validate=name_validator)
    tags = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    #: a pyserial URL (``/dev/ttyUSB0``, ``socket://h:p``, ``rfc2217://h:p``) or ``pty``
    console = fields.String(load_default=None, allow_none=True)
    baudrate = fields.Integer(load_default=115200, validate=validate.Range(min=1))
    power_on = CommandList(load_default=list)
    power_off = CommandList(load_default=list)
    reset = CommandList(load_default=list)
    #: regular expressions of the shell prompt(s)
    prompts = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    login = fields.List(fields.Nested(LoginStepSchema), load_default=list)
    boot_timeout = fields.Float(
        load_default=300.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    power_timeout = fields.Float(
        load_default=60.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    settings = fields.Dict(keys=fields.String(), load_default=dict)
    #: the device's own address and MAC for lava-target-ip / lava-target-mac
    #: (LAVA's device dictionary ``parameters: interfaces: target``)
    target_ip = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    target_mac = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(
            r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$", error="not a MAC address"
        ),
    )
    #: what lava-echo-config prints: "key value" lines (LAVA's shared device config)
    shared_config = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[^\s]+$", error="no blanks in a key")),
        values=fields.String(validate=validate.Regexp(r"^[^\n]*$", error="one line")),
        load_default=dict,
    )


class HostSchema(Schema):
    """The ``[host]`` table of a host configuration: its name, broker and workdir."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=name_validator)
    broker_url = fields.String(load_default="amqp://guest:guest@127.0.0.1:5672//")
    workdir = fields.String(load_default="/var/lib/lavamq")
    heartbeat_interval = fields.Float(
        load_default=10.0, validate=validate.Range(min=0, min_inclusive=False)
    )


class HostConfigSchema(Schema):
    """The whole file: ``[host]`` and a list of ``[[device]]``."""

    class Meta:
        unknown = RAISE

    host = fields.Nested(HostSchema, required=True)
    device = fields.List(fields.Nested(DeviceSchema), load_default=list)

    @validates_schema
    def unique_device_names(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Two devices of one host may not share a name (it is the node's name)."""
        seen: set[str] = set()
        for index, device in enumerate(data.get("device", [])):
            name = device.get("name")
            if name in seen:
                raise ValidationError(
                    {"device": {index: {"name": [f"duplicate device name {name!r}"]}}}
                )
            seen.add(name)


def parse_host_config(text: str, source: str = "<host config>") -> dict[str, Any]:
    """Parse and validate a host config; ConfigurationError names every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: not valid TOML: {exc}") from exc
    try:
        result: dict[str, Any] = HostConfigSchema().load(raw)
    except ValidationError as exc:
        problems = flatten_errors(exc.messages)
        raise ConfigurationError(
            f"{source}: " + "; ".join(problems), problems=problems, source=source
        ) from exc
    return result


def load_host_config(path: str | Path) -> dict[str, Any]:
    """Read a host's TOML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read host config {path}: {exc}") from exc
    return parse_host_config(text, str(path))
