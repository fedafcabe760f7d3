"""Device types: name → class, found by scanning this package.

Adding a device type is one module here that defines a subclass of
:class:`device_agent.devices.base.Device` with a unique ``device_type``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from device_agent.devices.base import Device
from schemas.errors import ConfigurationError

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registry: dict[str, type[Device]] | None = None
_import_errors: dict[str, str] = {}

__all__ = ["Device", "create_device", "device_types", "get_device_class"]


def _scan() -> dict[str, type[Device]]:
    found: dict[str, type[Device]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:
            _import_errors[info.name] = f"{type(exc).__name__}: {exc}"
            log.warning("device type module %s cannot be imported: %s", info.name, exc)
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Device)
                and value.__module__ == module.__name__
                and value.device_type
            ):
                other = found.get(value.device_type)
                if other is not None and other is not value:
                    raise ConfigurationError(
                        f"device type {value.device_type!r} is defined twice: "
                        f"{other.__module__}.{other.__name__} and "
                        f"{module.__name__}.{value.__name__}"
                    )
                found[value.device_type] = value
    return found


def device_types() -> dict[str, type[Device]]:
    """Every known device type (imported once)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = _scan()
        return dict(_registry)


def get_device_class(device_type: str) -> type[Device]:
    """The class of ``device_type``; ConfigurationError listing the known types."""
    types = device_types()
    try:
        return types[device_type]
    except KeyError:
        hint = f"; modules that failed to import: {_import_errors}" if _import_errors else ""
        raise ConfigurationError(
            f"unknown device type {device_type!r} (known: {', '.join(sorted(types))}){hint}"
        ) from None


def create_device(config: Mapping[str, Any], workdir: str | Path) -> Device:
    """Build the device described by one ``[[device]]`` entry (see schemas/device.py)."""
    return get_device_class(str(config["device_type"]))(config, workdir)
