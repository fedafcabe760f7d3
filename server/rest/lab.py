"""``/api/v1/devices``, ``/api/v1/workers``, ``/api/v1/me``: the lab's boards and hosts."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from server import lava
from server.rest.common import ERRORS, Caller, LabDep

router = APIRouter(prefix="/api/v1", responses=ERRORS)

Name = Annotated[str, Path(min_length=1, max_length=120)]


class DeviceOut(BaseModel):
    """A device as the REST API shows it, with LAVA's state and health names."""

    name: str
    device_type: str
    host: str | None
    tags: list[str]
    state: str
    health: str
    lava_state: str
    lava_health: str
    current_job: str | None


class WorkerOut(BaseModel):
    """A dispatcher host with its devices and the age of its last heartbeat."""

    name: str
    state: str
    last_heartbeat: float
    heartbeat_age: float
    devices: list[str]


class Me(BaseModel):
    """Who the caller is (``GET /me``): name (None: anonymous) and whether an admin."""

    name: str | None
    is_admin: bool


def device_out(d: dict[str, object]) -> DeviceOut:
    """A device row of the store as the API's DeviceOut."""
    state, health = str(d["state"]), str(d["health"])
    current = d.get("current_job")
    return DeviceOut(
        name=str(d["name"]),
        device_type=str(d["device_type"]),
        host=None if d.get("host") is None else str(d["host"]),
        tags=list(d.get("tags") or []),  # type: ignore[call-overload]
        state=state,
        health=health,
        lava_state=lava.device_state(state),
        lava_health=lava.device_health(state, health),
        current_job=None if current is None else str(current),
    )


def worker_out(h: dict[str, object]) -> WorkerOut:
    """A host row of the store as the API's WorkerOut."""
    beat = float(h["last_heartbeat"])  # type: ignore[arg-type]
    return WorkerOut(
        name=str(h["name"]),
        state=str(h["state"]),
        last_heartbeat=beat,
        heartbeat_age=max(0.0, time.time() - beat),
        devices=list(h["devices"]),  # type: ignore[call-overload]
    )


@router.get("/devices", response_model=list[DeviceOut], tags=["devices"])
def list_devices(lab: LabDep, who: Caller, retired: bool = False) -> list[DeviceOut]:
    """The lab's devices (the retired ones too when asked)."""
    lab.check_read(who)
    return [device_out(d) for d in lab.reader.devices(include_retired=retired)]


@router.get("/devices/{name}", response_model=DeviceOut, tags=["devices"])
def show_device(name: Name, lab: LabDep, who: Caller) -> DeviceOut:
    """One device, NotFound if the lab has none of that name."""
    lab.check_read(who)
    return device_out(lab.device(name))


@router.get("/workers", response_model=list[WorkerOut], tags=["workers"])
def list_workers(lab: LabDep, who: Caller) -> list[WorkerOut]:
    """The dispatcher hosts, with the age of their last heartbeat."""
    lab.check_read(who)
    return [worker_out(h) for h in lab.reader.hosts()]


@router.get("/workers/{name}", response_model=WorkerOut, tags=["workers"])
def show_worker(name: Name, lab: LabDep, who: Caller) -> WorkerOut:
    """One dispatcher host, NotFound if the lab has none of that name."""
    lab.check_read(who)
    return worker_out(lab.host(name))


@router.get("/me", response_model=Me, tags=["auth"])
def me(who: Caller) -> Me:
    """Who the token belongs to (anonymous without one)."""
    return Me(name=who.name, is_admin=who.is_admin)
