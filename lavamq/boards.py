"""Which board each sub-job of ``lavamq run`` gets, and why.

One board per sub-job, named ``<device type>-NN`` (or the device a 2014
``device_group`` names), with the sub-job's tags:

* a ``qemu`` role gets a real QEMU VM (device type ``qemu``) when the
  ``qemu-system-*`` of its ``context: arch`` is installed (``--boards auto``,
  the default) or always (``--boards qemu``: an error naming the package when
  it is missing). Without QEMU, ``auto`` stops and says which package to
  install; ``--boards local`` runs it on a local board instead.
* every other role gets a ``local`` board; for a device type lavamq does not
  know (``panda``, ``beaglexm`` ...) the board *emulates* that type
  (``settings.emulates``, device_agent/devices/local.py).

The reason travels with each board so that the run's header can say it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.qemu.host import debian_package, qemu_arch
from schemas.errors import InfrastructureError
from schemas.jobmodel import JobPlan, SubJobPlan

#: device types that are real implementations used as they are
NATIVE_TYPES = ("local",)
BOARD_CHOICES = ("auto", "local", "qemu")


@dataclass(frozen=True)
class Board:
    """One board of the embedded lab: its ``[[device]]`` entry and why it is that kind."""

    config: dict[str, Any]
    reason: str

    @property
    def name(self) -> str:
        """The board's (and the node's) name."""
        return str(self.config["name"])

    @property
    def kind(self) -> str:
        """``qemu VM`` or ``local board``."""
        return "qemu VM" if self.config["device_type"] == "qemu" else "local board"


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return cleaned or "board"


def _board_path() -> str:
    """PATH of a local board: the lab's Python first, so definitions may use ``python3``."""
    return os.pathsep.join(
        dict.fromkeys(
            [
                os.path.dirname(sys.executable),
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
        )
    )


def _names(plan: JobPlan) -> list[str]:
    counters: dict[str, int] = {}
    taken: set[str] = set()
    names = []
    for sub in plan.subjobs:
        device_type = sub.device_type or "local"
        if sub.device:
            name = _safe(sub.device)
        else:
            while True:
                counters[device_type] = counters.get(device_type, 0) + 1
                name = f"{_safe(device_type)}-{counters[device_type]:02d}"
                if name not in taken:
                    break
        taken.add(name)
        names.append(name)
    return names


def _qemu_board(
    sub: SubJobPlan, boards: str, runtime: Path | None
) -> tuple[dict[str, Any], str] | None:
    """The qemu settings and the reason for a ``qemu`` sub-job, or None for a local board."""
    if boards == "local":
        return None
    arch = qemu_arch(str(sub.context.get("arch") or "x86_64"))
    binary = f"qemu-system-{arch}"
    if shutil.which(binary) is None:
        package = debian_package(arch)
        raise InfrastructureError(
            f"role {sub.role} has device_type qemu but {binary} is not installed: install the "
            f"Debian package {package} (apt-get install {package}), or run the job on local "
            "boards with --boards local"
        )
    if shutil.which("vde_switch") is None:
        raise InfrastructureError(
            "a group's VMs share a network switch, vde_switch, which is not installed: install "
            "the Debian package vde2 (apt-get install vde2), or run the job on local boards "
            "with --boards local"
        )
    settings: dict[str, Any] = {}
    if runtime is not None:
        # the lab's own workspace: removed with it, nothing shared with other labs
        settings = {"runtime_dir": str(runtime / "qemu"), "vmnet_dir": str(runtime / "vmnet")}
    why = "--boards qemu" if boards == "qemu" else f"{binary} is installed"
    return settings, why


def plan_boards(
    plan: JobPlan,
    *,
    boards: str = "local",
    network: str = "none",
    mount_namespace: str = "auto",
    runtime: Path | None = None,
) -> list[Board]:
    """One board per sub-job of ``plan`` (see the module docstring); a local board's
    ``network`` and ``mount_namespace`` settings are those given."""
    if boards not in BOARD_CHOICES:
        raise ValueError(f"boards must be one of {BOARD_CHOICES} (got {boards!r})")
    out: list[Board] = []
    for sub, name in zip(plan.subjobs, _names(plan), strict=True):
        device_type = sub.device_type or "local"
        qemu = _qemu_board(sub, boards, runtime) if device_type == "qemu" else None
        if qemu is not None:
            settings, why = qemu
            config = {"name": name, "device_type": "qemu", "settings": settings}
            out.append(Board({**config, "tags": sorted(set(sub.tags))}, why))
            continue
        settings = {
            "network": network,
            "mount_namespace": mount_namespace,
            "env": {"PATH": _board_path()},
        }
        if device_type in NATIVE_TYPES:
            why = "device_type local"
        else:
            settings["emulates"] = device_type
            why = f"emulates {device_type}" + (" (--boards local)" if device_type == "qemu" else "")
        out.append(
            Board(
                {
                    "name": name,
                    "device_type": "local",
                    "tags": sorted(set(sub.tags)),
                    "settings": settings,
                },
                why,
            )
        )
    return out


def boards_for_plan(plan: JobPlan, *, network: str = "none") -> list[dict[str, Any]]:
    """Local boards only, one per sub-job (the server's fixed boards use this)."""
    return [b.config for b in plan_boards(plan, boards="local", network=network)]


def describe_boards(boards: list[Board]) -> list[str]:
    """The run header's lines: each board, its kind and why."""
    width = max((len(b.name) for b in boards), default=0)
    return [f"  {b.name:<{width}}  {b.kind}: {b.reason}" for b in boards]
