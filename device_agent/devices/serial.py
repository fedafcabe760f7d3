"""Device type ``serial``: a real board with power commands and a serial console.

``power_on``/``power_off``/``reset`` are host commands from the device
dictionary (a PDU client, a relay script, ``usbrelay``...); the console is
any pyserial URL (``/dev/ttyUSB0``, ``socket://ser2net:7001``,
``rfc2217://...``). Boot = open the console, power cycle (``reset`` if
configured, else off then on), the optional login steps, then a prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from device_agent.console import Console, ConsoleBase
from device_agent.devices.base import Device

log = logging.getLogger(__name__)


class SerialDevice(Device):
    """A real board on a serial line, powered by the host commands of its device dictionary."""

    device_type = "serial"
    known_settings: ClassVar[frozenset[str]] = frozenset({"answer_cursor_query", "encoding"})

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """What is wrong with a ``serial`` device's config (a console URL, power commands)."""
        problems = super().validate_config(config)
        console = config.get("console")
        if not console or console == "pty":
            problems.append(
                "console: a serial board needs a console URL "
                "(/dev/ttyUSB0, socket://host:port, rfc2217://host:port)"
            )
        if not config.get("prompts"):
            problems.append("prompts: a serial board needs at least one prompt (regex)")
        if not config.get("power_on") and not config.get("reset"):
            problems.append("power_on: no power_on or reset command: the board cannot be booted")
        return problems

    def power_on(self) -> None:
        """Run the config's power-on commands."""
        self.run_commands(self.config.get("power_on") or [], "power on")

    def power_off(self) -> None:
        """Run the config's power-off commands."""
        self.run_commands(self.config.get("power_off") or [], "power off")

    def _open_console(self) -> ConsoleBase:
        return Console(
            str(self.config["console"]),
            name=self.name,
            baudrate=int(self.config.get("baudrate", 115200)),
            prompts=self.prompts,
            encoding=str(self.settings.get("encoding", "utf-8")),
            answer_cursor_query=bool(self.settings.get("answer_cursor_query", False)),
        )
