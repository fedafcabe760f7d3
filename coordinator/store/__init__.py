"""The lab's state: devices, hosts, jobs, groups, sub-jobs, results, events.

:class:`Store` is a small repository whose every method is one transaction.
It is assembled from one part per job:

* ``models`` — the tables; ``views`` — the plain data it hands back;
* ``base`` — sessions and the event journal (``drain_events``);
* ``lab`` — hosts, heartbeats and devices;
* ``intake`` — submission, the scheduler's queue, starting groups;
* ``lifecycle`` — reports, cancels, lost hosts, join deadlines, restart;
* ``queries`` — the read API shared by every reader (docs/architecture.md).
"""

from __future__ import annotations

from coordinator.store.intake import IntakeStore
from coordinator.store.lab import LabStore
from coordinator.store.lifecycle import LifecycleStore
from coordinator.store.models import (
    Device,
    DeviceType,
    Event,
    Group,
    GroupPhase,
    Host,
    Job,
    Result,
    RpcReceipt,
    SubJob,
)
from coordinator.store.queries import QueryStore
from coordinator.store.views import GroupOutcome, StartedGroup, StartedSubJob, SubmitReceipt
from schemas.states import FINAL_JOB_STATES, FINAL_SUBJOB_STATES, SUBJOB_ORDER


class Store(LabStore, IntakeStore, LifecycleStore, QueryStore):
    """The repository: one transaction per method."""


__all__ = [
    "FINAL_JOB_STATES",
    "FINAL_SUBJOB_STATES",
    "SUBJOB_ORDER",
    "Device",
    "DeviceType",
    "Event",
    "Group",
    "GroupOutcome",
    "GroupPhase",
    "Host",
    "Job",
    "Result",
    "RpcReceipt",
    "StartedGroup",
    "StartedSubJob",
    "Store",
    "SubJob",
    "SubmitReceipt",
]
