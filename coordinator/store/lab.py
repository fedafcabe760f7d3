"""The lab's side of the store: hosts, their heartbeats, and their devices."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.scheduler import DeviceView
from coordinator.store.base import StoreBase
from coordinator.store.models import Device, DeviceType, Host, SubJob
from schemas.errors import JobError, Unauthorized
from schemas.states import DeviceHealth, DeviceState, HostState

log = logging.getLogger(__name__)


class LabStore(StoreBase):
    """Hosts announce and heartbeat; devices come, go offline and retire."""

    def register_host(self, host: str, devices: Sequence[Mapping[str, Any]], now: float) -> None:
        """A host announces its complete device list; its other devices go offline."""
        with self.session() as s:
            row = s.scalar(select(Host).where(Host.name == host))
            if row is None:
                row = Host(name=host, last_heartbeat=now, state=HostState.ONLINE)
                s.add(row)
                s.flush()
                self._event(s, now, "host", HostState.ONLINE, f"host {host} registered", host=host)
            else:
                if row.state != HostState.ONLINE:
                    self._event(s, now, "host", HostState.ONLINE, f"host {host} is back", host=host)
                row.last_heartbeat = now
                row.state = HostState.ONLINE
            seen: set[str] = set()
            for d in devices:
                name = str(d["name"])
                seen.add(name)
                dtype = self._device_type(s, str(d["device_type"]))
                tags = sorted(set(d.get("tags") or ()))
                dev = self._device(s, name)
                if dev is None:
                    dev = Device(
                        name=name,
                        device_type_id=dtype.id,
                        tags=tags,
                        host_id=row.id,
                        state=DeviceState.IDLE,
                        health=DeviceHealth.GOOD,
                    )
                    s.add(dev)
                    self._event(
                        s, now, "device", DeviceState.IDLE, f"device {name} added by host {host}",
                        device=name, host=host,
                    )  # fmt: skip
                    continue
                if dev.host_id not in (None, row.id):
                    owner = s.get(Host, dev.host_id)
                    if owner is not None and owner.state == HostState.ONLINE:
                        # a live host's device is not taken by announcing it: that
                        # host would then report for (and be sent) another's jobs
                        log.warning(
                            "host %s announces device %s of online host %s: ignored",
                            host, name, owner.name,
                        )  # fmt: skip
                        continue
                    log.warning("device %s moves to host %s", name, host)
                dev.device_type_id = dtype.id
                dev.tags = tags
                dev.host_id = row.id
                if dev.state == DeviceState.OFFLINE:
                    self._back_online(s, dev, now, f"device {name} is back on host {host}", host)
            for dev in s.scalars(select(Device).where(Device.host_id == row.id)):
                if dev.name not in seen and dev.state not in (
                    DeviceState.OFFLINE,
                    DeviceState.RETIRED,
                ):
                    self._event(
                        s, now, "device", DeviceState.OFFLINE,
                        f"device {dev.name} is no longer announced by host {host}",
                        device=dev.name, host=host,
                    )  # fmt: skip
                    dev.state = DeviceState.OFFLINE
                if dev.name not in seen:
                    # no host serves it now: a heartbeat after a host outage must
                    # not bring it back (only announcing it again does)
                    dev.host_id = None

    def _back_online(self, s: Session, dev: Device, now: float, text: str, host: str) -> None:
        """An offline device of a live host is idle again, with no job."""
        dev.state = DeviceState.IDLE
        dev.current_job_id = dev.current_subjob_id = None
        self._event(s, now, "device", DeviceState.IDLE, text, device=dev.name, host=host)

    def heartbeat(self, host: str, now: float) -> bool:
        """Record a heartbeat; False for a host that never registered."""
        with self.session() as s:
            row = s.scalar(select(Host).where(Host.name == host))
            if row is None:
                return False
            row.last_heartbeat = max(row.last_heartbeat, now)
            if row.state != HostState.ONLINE:
                row.state = HostState.ONLINE
                self._event(
                    s, now, "host", HostState.ONLINE, f"host {host} heartbeats again", host=host
                )
                for dev in s.scalars(select(Device).where(Device.host_id == row.id)):
                    if dev.state == DeviceState.OFFLINE:
                        self._back_online(s, dev, now, f"device {dev.name} is back", host)
            return True

    def silent_hosts(self, now: float, deadline: float) -> list[str]:
        """Online hosts whose last heartbeat is older than ``deadline`` seconds."""
        with self.session() as s:
            rows = s.scalars(
                select(Host.name).where(
                    Host.state == HostState.ONLINE, Host.last_heartbeat < now - deadline
                )
            )
            return sorted(rows)

    def retire_device(self, name: str, now: float) -> None:
        """Take a device out of the lab for good (it is never scheduled again)."""
        with self.session() as s:
            dev = self._device(s, name)
            if dev is None:
                raise JobError(f"no device named {name}")
            dev.state = DeviceState.RETIRED
            self._event(
                s, now, "device", DeviceState.RETIRED, f"device {name} retired", device=name
            )

    def set_health(self, name: str, health: str, now: float) -> None:
        """Mark a device's health (only ``good`` devices are scheduled)."""
        with self.session() as s:
            dev = self._device(s, name)
            if dev is None:
                raise JobError(f"no device named {name}")
            dev.health = health
            self._event(s, now, "device", dev.state, f"device {name} health {health}", device=name)

    def lab_devices(self) -> list[DeviceView]:
        """Every non-retired device, as the scheduler sees it."""
        with self.session() as s:
            rows = s.execute(
                select(Device, DeviceType.name)
                .join(DeviceType, Device.device_type_id == DeviceType.id)
                .where(Device.state != DeviceState.RETIRED)
            ).all()
            return [
                DeviceView(
                    name=d.name,
                    device_type=t,
                    tags=frozenset(d.tags or ()),
                    state=d.state,
                    health=d.health,
                    job_id=d.current_job_id,
                )
                for d, t in rows
            ]

    def devices(self) -> list[dict[str, Any]]:
        """Every device with type, tags, host, state, health and current job (for the CLI)."""
        with self.session() as s:
            rows = s.execute(
                select(Device, DeviceType.name, Host.name)
                .join(DeviceType, Device.device_type_id == DeviceType.id)
                .outerjoin(Host, Device.host_id == Host.id)
                .order_by(Device.name)
            ).all()
            return [
                {
                    "name": d.name,
                    "device_type": t,
                    "tags": list(d.tags or ()),
                    "host": h,
                    "state": d.state,
                    "health": d.health,
                    "current_job": d.current_job_id,
                    "current_subjob": d.current_subjob_id,
                }
                for d, t, h in rows
            ]

    def check_subjob_owner(
        self, subjob_id: int, host: str, what: str, sender: str | None = None
    ) -> None:
        """Raise ``Unauthorized`` unless sub-job ``subjob_id`` runs on a device of ``host``."""
        with self.session() as s:
            sub = s.get(SubJob, subjob_id)
            if sub is None:
                raise Unauthorized(
                    f"{what} for sub-job {subjob_id} sent by broker user {sender!r}: "
                    "no such sub-job"
                )
            check_subjob_host(s, sub, host, what, sender)


def check_subjob_host(
    session: Session, sub: SubJob, host: str, what: str, sender: str | None = None
) -> None:
    """Raise ``Unauthorized`` unless ``sub`` runs on a device that ``host`` owns now."""
    owner = None
    if sub.device is not None:
        owner = session.scalar(
            select(Host.name)
            .join(Device, Device.host_id == Host.id)
            .where(Device.name == sub.device)
        )
    if owner != host:
        where = f"device {sub.device} of host {owner!r}" if sub.device else "no device yet"
        raise Unauthorized(
            f"{what} for sub-job {sub.id} sent by broker user {sender!r} (host {host!r}): "
            f"that sub-job runs on {where}"
        )
