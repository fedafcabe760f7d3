"""What every device type offers: power, a console, booting to a shell, an overlay.

A device type is one module in this package defining a subclass of
:class:`Device` with a unique ``device_type``. The registry in
``device_agent.devices`` finds it; nothing else needs to change.

Protocols (labgrid's words): power (``power_on``/``power_off``/``power_reset``),
console (``connect()`` → :class:`~device_agent.console.ConsoleBase`), and
``boot()``, which brings the device to a shell prompt ready for a test.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import subprocess
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from device_agent.console import ConsoleBase
from schemas.errors import ConfigurationError, InfrastructureError

log = logging.getLogger(__name__)


def remaining(deadline: float, what: str) -> float:
    """Seconds left before ``deadline``; an InfrastructureError naming ``what`` if none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise InfrastructureError(f"{what}: no time left before the deadline")
    return left


@dataclass(frozen=True)
class Capabilities:
    """What a device type can do for a test shell, declared by the type (never probed)."""

    #: ``install: deps`` and ``lava-install-packages`` may run the board OS's package
    #: manager: the device runs the job's own OS (a board that is the dispatcher host
    #: does not, unless its host config allows it)
    installs_packages: bool = True
    #: the board has its own ``/tmp`` (not shared with the dispatcher host or other boards)
    private_tmp: bool = True
    #: the board has a network interface of its own for ``lava-network``
    network: bool = False


@dataclass(frozen=True)
class BootRequest:
    """What a job's deploy and boot actions ask of the next boot, in LAVA's terms."""

    #: deployed image name → local file
    images: Mapping[str, Path] = field(default_factory=dict)
    #: image name → its ``image_arg:`` (``-kernel {kernel}``), for those that have one
    image_args: Mapping[str, str] = field(default_factory=dict)
    #: the boot action's ``prompts:`` (regular expressions), empty: the device's own
    prompts: tuple[str, ...] = ()
    #: the boot action's ``auto_login:`` (login_prompt, username, password_prompt ...)
    auto_login: Mapping[str, Any] = field(default_factory=dict)
    #: the role's ``context:`` (arch, extra_options ...)
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetInterface:
    """The device's own address for ``lava-target-ip``/``lava-target-mac`` ("" unknown),
    and why there is none when one is missing."""

    ip: str = ""
    mac: str = ""
    why: str = "the device dictionary gives no target_ip/target_mac"


class Device(ABC):
    """One device of a dispatcher host, built from its ``[[device]]`` entry."""

    #: the name used in device dictionaries and job files
    device_type: ClassVar[str] = ""
    #: what the type offers a test shell (a subclass declares its own)
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: settings this type understands in ``[device.settings]`` (others are errors)
    known_settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Mapping[str, Any], workdir: str | Path) -> None:
        self.config = dict(config)
        self.name: str = self.config["name"]
        self.tags: list[str] = list(self.config.get("tags", []))
        self.settings: dict[str, Any] = dict(self.config.get("settings", {}))
        self.workdir = Path(workdir)
        self.prompts: list[str] = list(self.config.get("prompts") or self.default_prompts())
        self.console: ConsoleBase | None = None
        problems = self.validate_config(self.config)
        if problems:
            raise ConfigurationError(f"device {self.name}: " + "; ".join(problems))

    # --- configuration --------------------------------------------------------
    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """Every problem with this type's settings (empty list: fine)."""
        unknown = sorted(set(config.get("settings", {})) - cls.known_settings)
        return [
            f"settings.{key}: unknown setting for device type {cls.device_type}" for key in unknown
        ]

    def default_prompts(self) -> list[str]:
        """The prompts of this device type when its config names none."""
        return []

    def prepare_boot(self, request: BootRequest) -> list[str]:
        """Take what the job asks of the next boot; returns warnings for the job log
        (what the device cannot honour). The default boots the device's own way."""
        return []

    def describe(self) -> dict[str, Any]:
        """The device as the dispatcher registers it."""
        return {"name": self.name, "device_type": self.device_type, "tags": self.tags}

    def cache_dir(self) -> str:
        """Where the test shell finds LAVA's MultiNode cache files, as the board sees it."""
        return "/tmp"

    def target_interface(self) -> TargetInterface:
        """The device's address and MAC: the device dictionary's ``target_ip``/``target_mac``
        (LAVA's ``parameters: interfaces: target``); a type that knows them says so."""
        return TargetInterface(
            str(self.config.get("target_ip") or ""), str(self.config.get("target_mac") or "")
        )

    def packages_refused(self) -> str:
        """Why ``lava-install-packages`` may not run on this device ("" when it may)."""
        if self.capabilities.installs_packages:
            return ""
        return f"device type {self.device_type} does not install the OS's packages"

    def test_shell_environment(self) -> dict[str, str]:
        """What the device tells the test shell: LAVA's ``TARGET_DEVICE_IP``/``_MAC``,
        ``LAVA_SHARED_CONFIG`` ("key value" lines of the device dictionary's
        ``shared_config``) and, where packages may not be installed, why."""
        target = self.target_interface()
        env = {"TARGET_DEVICE_IP": target.ip, "TARGET_DEVICE_MAC": target.mac}
        if not (target.ip and target.mac):
            env["TARGET_DEVICE_WHY"] = target.why
        refused = self.packages_refused()
        if refused:
            env["LAVA_PACKAGES_REFUSED"] = refused
        shared = self.config.get("shared_config") or {}
        if shared:
            env["LAVA_SHARED_CONFIG"] = "\n".join(f"{k} {v}" for k, v in shared.items())
        return env

    # --- power ----------------------------------------------------------------
    @abstractmethod
    def power_on(self) -> None:
        """Switch the device on (its console may not answer yet)."""

    @abstractmethod
    def power_off(self) -> None:
        """Must leave nothing running; safe to call when already off."""

    def power_reset(self) -> None:
        """The config's reset commands, else power off then on."""
        commands = self.config.get("reset") or []
        if commands:
            self.run_commands(commands, "reset")
            return
        self.power_off()
        self.power_on()

    def run_commands(self, commands: Sequence[str], what: str) -> None:
        """Run the configured host commands (power on/off/reset) in order."""
        timeout = float(self.config.get("power_timeout", 60.0))
        for command in commands:
            log.info("device %s: %s: %s", self.name, what, command)
            try:
                proc = subprocess.run(
                    command,
                    shell=True,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise InfrastructureError(
                    f"device {self.name}: {what} command {command!r} "
                    f"did not finish in {timeout:g} s"
                ) from exc
            if proc.returncode != 0:
                raise InfrastructureError(
                    f"device {self.name}: {what} command {command!r} exited with "
                    f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
                )

    # --- console --------------------------------------------------------------
    @abstractmethod
    def _open_console(self) -> ConsoleBase: ...

    def connect(self) -> ConsoleBase:
        """The device's console, opened if needed."""
        if self.console is None or self.console.closed:
            self.console = self._open_console()
        return self.console

    def close(self) -> None:
        """Close the console (the device's power is left as it is)."""
        if self.console is not None:
            self.console.close()
            self.console = None

    def shutdown(self) -> None:
        """Power off and close the console; used by finalize, never raises."""
        try:
            self.power_off()
        except Exception:
            log.exception("device %s: power off failed", self.name)
        try:
            self.close()
        except Exception:
            log.exception("device %s: closing the console failed", self.name)

    # --- boot -----------------------------------------------------------------
    def boot(self, timeout: float, setup: Sequence[str] = ()) -> ConsoleBase:
        """Power cycle, log in if configured, wait for the prompt, type ``setup``.

        The console is opened before power is applied so that no boot output
        is lost. Returns the console, sitting at a prompt.
        """
        deadline = time.monotonic() + timeout
        console = self.connect()
        self.power_reset()
        self.login(console, deadline)
        self.wait_for_prompt(console, deadline)
        self.run_setup(console, setup, deadline)
        return console

    def login(self, console: ConsoleBase, deadline: float) -> None:
        """Type the config's login steps, each after what it expects."""
        for step in self.config.get("login") or []:
            console.expect(step["expect"], remaining(deadline, f"device {self.name}: login"))
            console.sendline(step["send"])

    def wait_for_prompt(self, console: ConsoleBase, deadline: float) -> None:
        """Wait for one of the device's shell prompts, by the boot's deadline."""
        if not self.prompts:
            raise ConfigurationError(f"device {self.name}: no prompts configured")
        console.read_until_prompt(remaining(deadline, f"device {self.name}: boot"), self.prompts)

    def run_setup(self, console: ConsoleBase, setup: Sequence[str], deadline: float) -> None:
        """Run each setup command at the prompt (the overlay's environment)."""
        for command in setup:
            console.sendline(command)
            console.read_until_prompt(
                remaining(deadline, f"device {self.name}: setup"), self.prompts
            )

    # --- overlay --------------------------------------------------------------
    def install_overlay(
        self, overlay_dir: Path, timeout: float, target: str = "", *, job_id: str = ""
    ) -> str:
        """Put ``overlay_dir`` on the device; return where it is as the device sees it.

        ``job_id`` names LAVA's ``/lava-<job id>`` for a type that puts it there
        (a ``local`` board in its private root); this default does not.

        The default types it through the console as a base64 tar (needs
        ``base64`` and ``tar`` on the device: busybox has both), waiting for
        the echo of each batch of lines so that a slow UART does not overrun.
        """
        target = target or f"/tmp/lavamq-overlay-{overlay_dir.name}"
        deadline = time.monotonic() + timeout
        console = self.connect()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(overlay_dir, arcname=".")
        lines = base64.encodebytes(buf.getvalue()).decode("ascii").splitlines()
        archive = f"{target}.tgz.b64"
        console.sendline(f"cat > {archive} <<'LAVAMQ_OVERLAY_EOF'")
        for start in range(0, len(lines), 8):
            batch = lines[start : start + 8]
            console.send("".join(line + "\n" for line in batch))
            console.expect(
                re.escape(batch[-1]), remaining(deadline, f"device {self.name}: overlay")
            )
        console.sendline("LAVAMQ_OVERLAY_EOF")
        console.read_until_prompt(remaining(deadline, f"device {self.name}: overlay"), self.prompts)
        output, rc = console.run(
            f"mkdir -p {target} && base64 -d {archive} | tar -xzf - -C {target} && rm -f {archive}",
            remaining(deadline, f"device {self.name}: overlay"),
            self.prompts,
        )
        if rc != 0:
            raise InfrastructureError(
                f"device {self.name}: unpacking the overlay into {target} failed ({rc}): {output}"
            )
        return target
