"""LAVA's QEMU job shape: ``image_arg:`` placeholders, ``context:`` and ``auto_login:``.

A LAVA qemu job builds its command line from the deploy action's images,
each with an ``image_arg`` such as ``-drive format=raw,file={rootfs}`` or
``-kernel {kernel} -append "console=ttyS0,115200"``, where ``{label}`` is
the local file of the image of that label; and from the role's ``context:``
(LAVA's device-template variables: ``arch``, ``memory``, ``extra_options``
...). This module reads those pieces; the device type
(device_agent/devices/qemu.py) puts them around its own console, QMP and
network arguments.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import JobError

#: context keys lavamq honours (see :func:`context_options`)
USED_CONTEXT = frozenset(
    {"arch", "memory", "cpu", "machine", "no_kvm", "no_network", "extra_options", "cpus"}
)
#: context keys of LAVA's qemu device template that have no effect here, and why
IGNORED_CONTEXT = {
    "netdevice": "the group's VMs share their own switch",
    "model": "the group network's NIC is virtio-net",
    "mac_addr": "each node's MAC is derived from its group and name",
    "monitor": "lavamq drives QEMU over QMP",
    "vga": "VMs run without a display",
    "serial": "the console is lavamq's serial port",
    "guestfs_size": "the overlay travels in the initramfs or over the console",
    "guestfs_interface": "the overlay travels in the initramfs or over the console",
    "guestfs_driveid": "the overlay travels in the initramfs or over the console",
    "boot_root": "used by LAVA's installer boots only",
    "boot_console": "used by LAVA's installer boots only",
    "lava_test_results_dir": "the overlay is at /lava-overlay or typed to /tmp",
    "lava_test_sh_cmd": "the test shell is the image's /bin/sh",
    "lava_test_shell_file": "the test shell is set up by lavamq",
    "boot_character_delay": "lavamq types without delays",
    "test_character_delay": "lavamq types without delays",
    "deploy_character_delay": "lavamq types without delays",
}

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


@dataclass(frozen=True)
class ContextOptions:
    """What a role's ``context:`` asks of its VM (None: the device's own setting)."""

    arch: str | None = None
    memory: int | None = None
    cpus: int | None = None
    cpu: str | None = None
    machine: str | None = None
    no_kvm: bool = False
    no_network: bool = False
    extra_options: tuple[str, ...] = ()

    def qemu_args(self) -> list[str]:
        """``-cpu``, ``-machine`` and the split ``extra_options``."""
        args: list[str] = []
        if self.cpu:
            args += ["-cpu", self.cpu]
        if self.machine:
            args += ["-machine", self.machine]
        for option in self.extra_options:
            args += shlex.split(option)
        return args


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "yes", "1")


def context_options(context: Mapping[str, Any]) -> tuple[ContextOptions, list[str]]:
    """The options of a role's ``context:`` and warnings for what is not used.

    A key this device does not know is a warning, never an error: LAVA passes
    every context key to its device template, which ignores those it does
    not use.
    """
    warnings: list[str] = []
    for key in sorted(set(context) - USED_CONTEXT):
        why = IGNORED_CONTEXT.get(key)
        if why is None:
            warnings.append(f"context {key!r} is not a qemu setting lavamq knows: ignored")
        else:
            warnings.append(f"context {key!r} has no effect here ({why})")
    extra = context.get("extra_options") or []
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, list) or not all(isinstance(e, (str, int, float)) for e in extra):
        raise JobError("context extra_options: must be a list of QEMU options (strings)")
    try:
        for option in extra:
            shlex.split(str(option))
    except ValueError as exc:
        raise JobError(f"context extra_options: {exc} in {option!r}") from None

    def whole(key: str) -> int | None:
        value = context.get(key)
        if value is None:
            return None
        text = str(value).upper().removesuffix("M")
        if not text.isdigit() or int(text) < 1:
            raise JobError(f"context {key}: must be a whole number (got {value!r})")
        return int(text)

    arch = context.get("arch")
    options = ContextOptions(
        arch=str(arch) if arch is not None else None,
        memory=whole("memory"),
        cpus=whole("cpus"),
        cpu=str(context["cpu"]) if context.get("cpu") else None,
        machine=str(context["machine"]) if context.get("machine") else None,
        no_kvm=_flag(context.get("no_kvm", False)),
        no_network=_flag(context.get("no_network", False)),
        extra_options=tuple(str(e) for e in extra),
    )
    return options, warnings


def substitute(template: str, files: Mapping[str, Path | str]) -> str:
    """``{label}`` → that image's local file, as LAVA fills ``image_arg``.

    A placeholder naming no deployed image is left as written (LAVA does the
    same); :func:`image_arguments` reports it.
    """
    return _PLACEHOLDER.sub(
        lambda m: str(files[m.group(1)]) if m.group(1) in files else m.group(0), template
    )


@dataclass
class ImageArguments:
    """The QEMU arguments of the job's images, in deploy order, and what was left out."""

    args: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def image_arguments(
    image_args: Mapping[str, str], images: Mapping[str, Path | str]
) -> ImageArguments:
    """Every ``image_arg`` with its placeholders filled in, split as a shell would.

    An image without ``image_arg`` is left off the command line, as LAVA
    leaves it (with a warning).
    """
    out = ImageArguments()
    for label in images:
        if label not in image_args:
            out.warnings.append(f"image {label!r} has no image_arg: not on the QEMU command line")
            continue
        filled = substitute(image_args[label], images)
        for name in _PLACEHOLDER.findall(filled):
            out.warnings.append(
                f"image {label!r}: image_arg names {{{name}}}, which is no deployed image"
            )
        try:
            out.args += shlex.split(filled)
        except ValueError as exc:
            raise JobError(f"image {label!r}: image_arg {image_args[label]!r}: {exc}") from None
    return out


def add_kernel_args(args: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``args`` with ``extra`` appended to its ``-append`` value (or a new ``-append``
    when ``-kernel`` is there without one); unchanged without ``-kernel``."""
    out = list(args)
    if not extra or "-kernel" not in out:
        return out
    if "-append" in out:
        at = len(out) - 1 - out[::-1].index("-append")  # QEMU takes the last one
        if at + 1 < len(out):
            out[at + 1] = " ".join([out[at + 1], *extra])
            return out
        out.pop(at)
    return [*out, "-append", " ".join(extra)]


def arg_label(image_args: Mapping[str, str], option: str) -> str | None:
    """The image whose ``image_arg`` is ``<option> {label}`` (``-kernel``, ``-initrd``)."""
    for label, template in image_args.items():
        try:
            words = shlex.split(template)
        except ValueError:
            continue
        for i, word in enumerate(words[:-1]):
            if word == option and words[i + 1] == "{" + label + "}":
                return label
    return None


@dataclass(frozen=True)
class AutoLogin:
    """LAVA's ``auto_login:``: the login prompt, user, password prompt and password."""

    login_prompt: str
    username: str
    password_prompt: str | None = None
    password: str | None = None
    login_commands: tuple[str, ...] = ()

    def steps(self) -> list[dict[str, str]]:
        """As ``expect``/``send`` steps (the device's ``login`` shape)."""
        steps = [{"expect": self.login_prompt, "send": self.username}]
        if self.password_prompt is not None:
            steps.append({"expect": self.password_prompt, "send": self.password or ""})
        return steps


def auto_login(value: Mapping[str, Any]) -> AutoLogin | None:
    """The boot action's ``auto_login:``; JobError naming what is missing."""
    if not value:
        return None
    required = ("login_prompt", "username")
    problems = [f"auto_login.{key}: is required" for key in required if not value.get(key)]
    if value.get("password_prompt") and value.get("password") is None:
        problems.append("auto_login.password: is required with password_prompt")
    commands = value.get("login_commands") or []
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        problems.append("auto_login.login_commands: must be a list of commands")
    if problems:
        raise JobError("; ".join(problems))
    return AutoLogin(
        login_prompt=str(value["login_prompt"]),
        username=str(value["username"]),
        password_prompt=str(value["password_prompt"]) if value.get("password_prompt") else None,
        password=str(value["password"]) if value.get("password") is not None else None,
        login_commands=tuple(commands),
    )
