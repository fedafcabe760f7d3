"""The host config / device dictionary schema and the device-type registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.devices import create_device, device_types, get_device_class
from device_agent.devices.base import Device
from device_agent.devices.local import LocalDevice
from device_agent.devices.serial import SerialDevice
from schemas.device import load_host_config, parse_host_config
from schemas.errors import ConfigurationError

GOOD = """
[host]
name = "lab-host-1"
broker_url = "amqp://u:p@127.0.0.1:5672/lava"
workdir = "/srv/lavamq"

[[device]]
name = "local-01"
device_type = "local"
tags = ["shell", "fast"]

[[device]]
name = "bbb-03"
device_type = "serial"
console = "socket://127.0.0.1:7003"
power_on = "pdu on 3"
power_off = ["pdu off 3", "sleep 1"]
prompts = ["root@bbb:~# "]
login = [{expect = "login:", send = "root"}]
[device.settings]
answer_cursor_query = true
"""


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "host.toml"
    path.write_text(GOOD)
    config = load_host_config(path)
    assert config["host"]["name"] == "lab-host-1"
    assert config["host"]["heartbeat_interval"] == 10.0
    local, bbb = config["device"]
    assert local["tags"] == ["shell", "fast"]
    assert local["console"] is None and local["power_on"] == [] and local["settings"] == {}
    assert bbb["power_on"] == ["pdu on 3"]
    assert bbb["power_off"] == ["pdu off 3", "sleep 1"]
    assert bbb["login"] == [{"expect": "login:", "send": "root"}]
    assert bbb["settings"] == {"answer_cursor_query": True}
    assert bbb["boot_timeout"] == 300.0


def test_every_problem_is_named_with_its_place() -> None:
    text = """
[host]
name = "bad host"
colour = "blue"

[[device]]
name = "a"
device_type = "local"
power_on = 3

[[device]]
name = "a"
device_type = "local"
"""
    with pytest.raises(ConfigurationError) as info:
        parse_host_config(text, "hosts/h1.toml")
    message = str(info.value)
    assert message.startswith("hosts/h1.toml: ")
    assert "host.name: must be letters" in message
    assert "host.colour: Unknown field" in message
    assert "device[0].power_on: must be a command" in message


def test_duplicate_device_names_are_rejected() -> None:
    text = '[host]\nname = "h"\n[[device]]\nname = "a"\ndevice_type = "local"\n' * 1
    text += '[[device]]\nname = "a"\ndevice_type = "local"\n'
    with pytest.raises(ConfigurationError, match=r"device\[1\].name: duplicate device name 'a'"):
        parse_host_config(text)


def test_bad_toml_and_missing_file() -> None:
    with pytest.raises(ConfigurationError, match=r"x\.toml: not valid TOML"):
        parse_host_config("[host\n", "x.toml")
    with pytest.raises(ConfigurationError, match="cannot read host config"):
        load_host_config("/nonexistent/host.toml")


def test_registry_finds_each_module_type() -> None:
    types = device_types()
    assert types["local"] is LocalDevice
    assert types["serial"] is SerialDevice
    assert all(issubclass(cls, Device) for cls in types.values())
    with pytest.raises(ConfigurationError, match=r"unknown device type 'nope' \(known: .*local"):
        get_device_class("nope")


def test_device_type_checks_its_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"device x: settings.colour: unknown setting"):
        create_device({"name": "x", "device_type": "local", "settings": {"colour": 1}}, tmp_path)
    with pytest.raises(ConfigurationError) as info:
        create_device({"name": "s", "device_type": "serial"}, tmp_path)
    assert "console: a serial board needs a console URL" in str(info.value)
    assert "prompts: a serial board needs at least one prompt" in str(info.value)


def test_config_from_schema_builds_devices(tmp_path: Path) -> None:
    config = parse_host_config(GOOD)
    devices = [create_device(dev, tmp_path / dev["name"]) for dev in config["device"]]
    assert [d.describe() for d in devices] == [
        {"name": "local-01", "device_type": "local", "tags": ["shell", "fast"]},
        {"name": "bbb-03", "device_type": "serial", "tags": []},
    ]
